"""Operational reporting for supervisors: what the lanes scanned, what the machine and the officers made of it.

For a period ``[start, end)`` and one grouping (by day, shift, lane or
scanner) :func:`build_report` gives, per group and in total:

* **scans** received, how many the machine **analysed** (it gave ALARM or
  CLEAR; queued and failed scans have no verdict), its **alarms** and the
  **alarm rate** (alarms / analysed);
* **officers' decisions**: the standing decision of each scan (a
  supervisor's reversal replaces the decision it reverses) by outcome
  (threat, search, clear, or none yet), and how many scans had a decision
  reversed;
* the **confusion table** machine ALARM/CLEAR x officer threat/search/
  clear/none, and the **agreement rate**: of the analysed scans an officer
  decided, the share where the officer agreed with the machine, that is an
  ALARM the officer searched or confirmed as a threat, or a CLEAR the
  officer cleared;
* **time to decision**: seconds from the service receiving a scan to the
  first officer decision on it (median and 90th percentile, linear
  interpolation between order statistics as ``numpy.percentile`` does);
* **seizures by category**: cases marked seized, by the threat category of
  what was found.

Which period and group a scan belongs to is decided by when the service
received it (``received_at``); a case belongs to the period and to a day or
shift by when it was opened (``opened_at``), and to a lane or scanner by its
first scan (the earliest received). Days and shifts are wall-clock times in
the site's time zone; shift boundaries and the zone come from the
``[reporting]`` section of the service config (:func:`reporting_config`).

The figures are computed in Python over rows streamed from portable
SQLAlchemy Core queries, so they are the same on SQLite and PostgreSQL.
:func:`report_table` and :func:`report_csv` turn a report into the tables
the viewer shows and exports; :func:`report_text` is the command line's
human form. :func:`live_counts` gives the running totals ``/metrics``
exports.

Examples
--------
>>> config = reporting_config({"timezone": "UTC", "shifts": ["06:00", "18:00"]})
>>> [shift.label for shift in config.shift_list()]
['06:00-18:00', '18:00-06:00']
>>> period = parse_period("2026-03-01", "2026-03-08", timezone="UTC")
>>> period.days()[0].isoformat(), len(period.days())
('2026-03-01', 7)
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import functools
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from nii.serve.decisions import THREAT_CATEGORIES
from nii.serve.store import case_scans, cases, decisions, scans

__all__ = ["MACHINE_VERDICTS", "MAX_DAYS", "OFFICER_OUTCOMES", "TABLES", "GroupFigures", "Grouping", "LiveCounts",
           "Period", "Report", "ReportingConfig", "Shift", "build_report", "live_counts", "parse_period",
           "report_csv", "report_table", "report_text", "reporting_config"]

#: The machine's verdicts, as the rows of the confusion table.
MACHINE_VERDICTS = ("ALARM", "CLEAR")
#: Officers' standing decisions, as its columns; ``none``: not decided yet.
OFFICER_OUTCOMES = ("threat", "search", "clear", "none")
#: The tables of a report, in the order the viewer and ``nii report`` show them.
TABLES = ("scans", "decisions", "confusion", "decision_time", "seizures")
#: A report by day has one group per day; longer periods are refused.
MAX_DAYS = 1000
#: The group of a scan without a lane or scanner id, or of a case without scans.
UNKNOWN = "(unknown)"
#: The seizure category of a seized case whose category was never filled in.
UNCATEGORISED = "UNCATEGORISED"
#: The label of the totals row in tables.
TOTAL = "total"

_STORE_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # how the store writes times (store.utc_now), so strings compare as times


class Grouping(str, Enum):
    """What a report's groups are."""

    DAY = "day"
    SHIFT = "shift"
    LANE = "lane"
    SCANNER = "scanner"


# -- configuration -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shift:
    """One shift: it starts at ``start`` (local wall-clock time) and runs to the next shift's start."""

    label: str
    start: time
    end: time


@dataclasses.dataclass(frozen=True)
class ReportingConfig:
    """The ``[reporting]`` settings: the site's time zone and its shift boundaries.

    Parameters
    ----------
    timezone : str
        An IANA zone name ("Europe/Amsterdam"); days and shifts are its
        wall-clock times.
    shifts : tuple of str
        Start times "HH:MM" of the shifts, ascending; the last shift runs
        past midnight to the first one's start.
    shift_names : tuple of str
        Names of the shifts ("early", "late", "night"), one per start time;
        empty for labels like "06:00-14:00".
    """

    timezone: str = "UTC"
    shifts: tuple[str, ...] = ("06:00", "14:00", "22:00")
    shift_names: tuple[str, ...] = ()

    @property
    def zone(self) -> tzinfo:
        return _zone(self.timezone)

    def shift_list(self) -> list[Shift]:
        """The shifts in the order of their start times."""
        starts = [_clock(text, "shifts") for text in self.shifts]
        ends = starts[1:] + starts[:1]
        labels = self.shift_names or tuple(f"{a:%H:%M}-{b:%H:%M}" for a, b in zip(starts, ends))
        return [Shift(label, a, b) for label, a, b in zip(labels, starts, ends)]

    def shift_of(self, local: datetime) -> str:
        """The label of the shift that local wall-clock time ``local`` falls in."""
        labels, starts = self._starts
        # Before the first start of the day is still the last shift of the evening before.
        return labels[bisect.bisect_right(starts, local.time()) - 1]

    @functools.cached_property
    def _starts(self) -> tuple[list[str], list[time]]:
        shifts = self.shift_list()
        return [s.label for s in shifts], [s.start for s in shifts]


def reporting_config(section: Mapping[str, Any] | None = None) -> ReportingConfig:
    """The reporting settings from the ``[reporting]`` table of a service config.

    Parameters
    ----------
    section : mapping, optional
        The table as TOML gives it: ``timezone`` (str), ``shifts`` (list of
        "HH:MM", ascending), ``shift_names`` (list of str, optional). Missing
        keys take :class:`ReportingConfig`'s defaults.

    Raises
    ------
    ValueError
        One line naming the bad setting: an unknown key or time zone, a time
        that is not "HH:MM", start times out of order, names that do not
        match the shifts one to one.
    """
    section = dict(section or {})
    unknown = sorted(set(section) - {"timezone", "shifts", "shift_names"})
    if unknown:
        raise ValueError(f"[reporting]: unknown settings {', '.join(unknown)}; expected timezone, shifts, shift_names")
    defaults = ReportingConfig()
    timezone = section.get("timezone", defaults.timezone)
    if not isinstance(timezone, str):
        raise ValueError(f"[reporting] timezone must be a zone name such as \"Europe/Amsterdam\", got {timezone!r}")
    _zone(timezone)
    shifts = section.get("shifts", defaults.shifts)
    if isinstance(shifts, str) or not isinstance(shifts, Sequence) or not shifts:
        raise ValueError("[reporting] shifts must be a list of start times like [\"06:00\", \"14:00\"], "
                         f"got {shifts!r}")
    starts = [_clock(text, "shifts") for text in shifts]
    if any(a >= b for a, b in zip(starts, starts[1:])):
        raise ValueError("[reporting] shifts must be start times in ascending order within one day, "
                         f"got {list(shifts)}")
    names = section.get("shift_names", defaults.shift_names)
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"[reporting] shift_names must be a list of names, got {names!r}")
    if names and (len(names) != len(shifts) or len(set(names)) != len(names)):
        raise ValueError(f"[reporting] shift_names must name each of the {len(shifts)} shifts once, got {list(names)}")
    return ReportingConfig(timezone, tuple(str(s) for s in shifts), tuple(names))


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name such as \"Europe/Amsterdam\" "
                         "or \"UTC\"") from None


def _clock(text: Any, what: str) -> time:
    try:
        hours, minutes = str(text).split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"[reporting] {what}: expected a time \"HH:MM\" (00:00 to 23:59), got {text!r}") from None


# -- the period ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Period:
    """A reporting period ``[start, end)``, with the zone its days and shifts are counted in."""

    start: datetime
    end: datetime
    zone: tzinfo

    def bounds(self) -> tuple[str, str]:
        """``start`` and ``end`` as the store writes times, so that a string comparison selects the period."""
        return self.start.astimezone(UTC).strftime(_STORE_TIME), self.end.astimezone(UTC).strftime(_STORE_TIME)

    def days(self) -> list[date]:
        """Every local calendar day the period touches, in order."""
        first = self.start.astimezone(self.zone).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.zone).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def parse_period(start: str | date | datetime, end: str | date | datetime, *, timezone: str = "UTC") -> Period:
    """The period from ``start`` up to (not including) ``end``.

    Parameters
    ----------
    start, end : str, date or datetime
        A date ("2026-03-01": local midnight in ``timezone``) or a time
        ("2026-03-01T06:00", local unless it carries an offset or ``Z``).
    timezone : str
        The site's zone (IANA name).

    Raises
    ------
    ValueError
        A bound is not an ISO date or time, or ``end`` is not after ``start``.

    Examples
    --------
    >>> p = parse_period("2026-03-01", "2026-03-02", timezone="Asia/Kolkata")
    >>> p.bounds()
    ('2026-02-28T18:30:00.000000Z', '2026-03-01T18:30:00.000000Z')
    """
    zone = _zone(timezone)
    lo, hi = _instant(start, zone, "from"), _instant(end, zone, "to")
    if hi <= lo:
        raise ValueError(f"the period must end after it starts: from {lo.isoformat()} to {hi.isoformat()}")
    return Period(lo, hi, zone)


def _instant(value: str | date | datetime, zone: tzinfo, which: str) -> datetime:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{which}: expected a date YYYY-MM-DD or a time YYYY-MM-DDTHH:MM, got {value[:40]!r}") \
                from None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time(0))
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


def _stored_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


# -- the figures ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GroupFigures:
    """The figures of one group (a day, a shift, a lane, a scanner) or of the whole period.

    Counts are of scans, except ``seizures`` (of cases). Rates are fractions
    (0 to 1) and None where there is nothing to divide by; times are seconds.
    """

    group: str
    scans: int = 0
    analysed: int = 0
    alarms: int = 0
    #: Standing officer decision -> scans; ``none``: no decision yet.
    outcomes: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(OFFICER_OUTCOMES, 0))
    #: Scans whose first decision a supervisor reversed.
    reversals: int = 0
    #: Machine verdict -> standing officer decision -> scans (analysed scans only).
    confusion: dict[str, dict[str, int]] = dataclasses.field(
        default_factory=lambda: {v: dict.fromkeys(OFFICER_OUTCOMES, 0) for v in MACHINE_VERDICTS})
    #: Threat category -> seized cases.
    seizures: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(THREAT_CATEGORIES, 0))
    #: Seconds from receipt to the first decision, one per decided scan.
    decision_seconds: list[float] = dataclasses.field(default_factory=list, repr=False)

    @property
    def alarm_rate(self) -> float | None:
        return self.alarms / self.analysed if self.analysed else None

    @property
    def decided(self) -> int:
        return self.scans - self.outcomes["none"]

    @property
    def compared(self) -> int:
        """Analysed scans an officer decided: those the agreement rate is over."""
        return sum(row[o] for row in self.confusion.values() for o in OFFICER_OUTCOMES if o != "none")

    @property
    def agreed(self) -> int:
        return self.confusion["ALARM"]["threat"] + self.confusion["ALARM"]["search"] + self.confusion["CLEAR"]["clear"]

    @property
    def agreement_rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def decision_time_median_s(self) -> float | None:
        return _percentile(sorted(self.decision_seconds), 0.5)

    @property
    def decision_time_p90_s(self) -> float | None:
        return _percentile(sorted(self.decision_seconds), 0.9)

    @property
    def seized(self) -> int:
        return sum(self.seizures.values())

    def add_scan(self, verdict: str | None, outcome: str | None, decisions_made: int,
                 decision_seconds: float | None) -> None:
        self.scans += 1
        outcome = outcome or "none"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.reversals += decisions_made > 1
        if verdict in MACHINE_VERDICTS:
            self.analysed += 1
            self.alarms += verdict == "ALARM"
            row = self.confusion[verdict]
            row[outcome] = row.get(outcome, 0) + 1
        if decision_seconds is not None:
            self.decision_seconds.append(decision_seconds)

    def add_seizure(self, category: str | None) -> None:
        category = category or UNCATEGORISED
        self.seizures[category] = self.seizures.get(category, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (without the per-scan times)."""
        return {
            "group": self.group, "scans": self.scans, "analysed": self.analysed, "alarms": self.alarms,
            "alarm_rate": self.alarm_rate, "decided": self.decided, "outcomes": dict(self.outcomes),
            "reversals": self.reversals, "confusion": {v: dict(row) for v, row in self.confusion.items()},
            "compared": self.compared, "agreed": self.agreed, "agreement_rate": self.agreement_rate,
            "decision_time": {"decided": len(self.decision_seconds), "median_s": self.decision_time_median_s,
                              "p90_s": self.decision_time_p90_s},
            "seizures": dict(self.seizures), "seized": self.seized,
        }


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of ascending ``ordered`` by linear interpolation (numpy's default); None if empty."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    # To the microsecond, the store's resolution: 192.0 rather than 192.00000000000006 in a CSV.
    return round(ordered[below] + (ordered[above] - ordered[below]) * (position - below), 6)


@dataclasses.dataclass
class Report:
    """The figures of one period, per group and in total."""

    start: datetime
    end: datetime
    timezone: str
    by: Grouping
    groups: list[GroupFigures]
    total: GroupFigures

    @property
    def categories(self) -> list[str]:
        """Seizure categories: the DICOS ones, then any others found (uncategorised last)."""
        seen = {c for figures in (*self.groups, self.total) for c in figures.seizures}
        extra = sorted(seen - set(THREAT_CATEGORIES) - {UNCATEGORISED})
        return [*THREAT_CATEGORIES, *extra, *([UNCATEGORISED] if UNCATEGORISED in seen else [])]

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "timezone": self.timezone,
                "by": self.by.value, "categories": self.categories,
                "groups": [g.to_dict() for g in self.groups], "total": self.total.to_dict()}


def build_report(conn: Connection, period: Period, *, by: str | Grouping = Grouping.DAY,
                 config: ReportingConfig = ReportingConfig()) -> Report:
    """The operational figures of ``period``, grouped ``by`` day, shift, lane or scanner.

    Parameters
    ----------
    conn : Connection
        A connection to the store (a read-only transaction is enough).
    period : Period
        From :func:`parse_period`; its zone decides days and shifts.
    by : {"day", "shift", "lane", "scanner"}
    config : ReportingConfig
        The shift boundaries.

    Returns
    -------
    Report
        Every day of the period (by day) or every shift (by shift) has a
        group, with zeros where nothing happened; by lane or scanner, the
        lanes or scanners seen, sorted, with ``"(unknown)"`` last.

    Raises
    ------
    ValueError
        An unknown grouping, or a report by day over more than
        :data:`MAX_DAYS` days.
    """
    try:
        by = Grouping(by)
    except ValueError:
        raise ValueError(f"by must be one of {', '.join(g.value for g in Grouping)}; got {by!r}") from None
    if by is Grouping.DAY and len(period.days()) > MAX_DAYS:
        raise ValueError(f"a report by day covers at most {MAX_DAYS} days; this period has {len(period.days())}")
    lo, hi = period.bounds()
    groups: dict[str, GroupFigures] = {}
    if by is Grouping.DAY:
        groups = {day.isoformat(): GroupFigures(day.isoformat()) for day in period.days()}
    elif by is Grouping.SHIFT:
        groups = {shift.label: GroupFigures(shift.label) for shift in config.shift_list()}
    total = GroupFigures(TOTAL)

    def group_of(when: datetime, lane: str | None, scanner: str | None) -> GroupFigures:
        if by is Grouping.DAY:
            key = when.astimezone(period.zone).date().isoformat()
        elif by is Grouping.SHIFT:
            key = config.shift_of(when.astimezone(period.zone))
        else:
            key = (lane if by is Grouping.LANE else scanner) or UNKNOWN
        if key not in groups:
            groups[key] = GroupFigures(key)
        return groups[key]

    for row in conn.execute(_scans_with_decisions(lo, hi).execution_options(yield_per=2000)):  # streamed
        received = _stored_time(row.received_at)
        waited = ((_stored_time(row.first_decided_at) - received).total_seconds()
                  if row.first_decided_at is not None else None)
        for figures in (group_of(received, row.lane, row.scanner_id), total):
            figures.add_scan(row.decision, row.outcome, row.decisions_made or 0, waited)

    for case in _seized_cases(conn, lo, hi, first_scan=by in (Grouping.LANE, Grouping.SCANNER)):
        for figures in (group_of(_stored_time(case["opened_at"]), case["lane"], case["scanner_id"]), total):
            figures.add_seizure(case["category"])

    ordered = list(groups.values())
    if by in (Grouping.LANE, Grouping.SCANNER):
        ordered.sort(key=lambda g: (g.group == UNKNOWN, g.group))
    return Report(period.start, period.end, getattr(period.zone, "key", str(period.zone)), by, ordered, total)


def _scans_with_decisions(lo: str, hi: str) -> sa.Select:
    """One row per scan received in ``[lo, hi)``: its place, the machine's verdict, the first and standing decision."""
    in_period = sa.and_(scans.c.received_at >= lo, scans.c.received_at < hi)
    # Decision ids grow with time: the lowest is the first decision, the highest the standing one.
    per_scan = (sa.select(decisions.c.scan_id, sa.func.min(decisions.c.id).label("first_id"),
                          sa.func.max(decisions.c.id).label("last_id"), sa.func.count().label("made"))
                .join(scans, scans.c.scan_id == decisions.c.scan_id).where(in_period)
                .group_by(decisions.c.scan_id).subquery("per_scan"))
    first, standing = decisions.alias("first_decision"), decisions.alias("standing_decision")
    return (sa.select(scans.c.received_at, scans.c.lane, scans.c.scanner_id, scans.c.decision,
                      first.c.decided_at.label("first_decided_at"), standing.c.outcome,
                      per_scan.c.made.label("decisions_made"))
            .select_from(scans.outerjoin(per_scan, per_scan.c.scan_id == scans.c.scan_id)
                         .outerjoin(first, first.c.id == per_scan.c.first_id)
                         .outerjoin(standing, standing.c.id == per_scan.c.last_id))
            .where(in_period))


def _seized_cases(conn: Connection, lo: str, hi: str, *, first_scan: bool) -> list[dict[str, Any]]:
    """Seized cases opened in ``[lo, hi)``; with ``first_scan``, the lane and scanner of each one's first scan."""
    chosen = sa.and_(cases.c.seized == sa.true(), cases.c.opened_at >= lo, cases.c.opened_at < hi)
    found = {row.case_id: {"opened_at": row.opened_at, "category": row.category, "lane": None, "scanner_id": None}
             for row in conn.execute(sa.select(cases.c.case_id, cases.c.opened_at, cases.c.category).where(chosen))}
    if first_scan and found:
        linked = (sa.select(case_scans.c.case_id, scans.c.lane, scans.c.scanner_id)
                  .join(scans, scans.c.scan_id == case_scans.c.scan_id)
                  .join(cases, cases.c.case_id == case_scans.c.case_id).where(chosen)
                  .order_by(case_scans.c.case_id, scans.c.received_at.desc(), scans.c.scan_id.desc()))
        for row in conn.execute(linked):  # the earliest scan of each case comes last, so it stays
            found[row.case_id].update(lane=row.lane, scanner_id=row.scanner_id)
    return list(found.values())


# -- tables --------------------------------------------------------------------------------------------------------


def report_table(report: Report, table: str) -> tuple[list[str], list[list[Any]]]:
    """One table of ``report``: its header and rows, one row per group then a ``total`` row.

    Tables (:data:`TABLES`):

    ``scans``
        scans, analysed, alarms, alarm_rate
    ``decisions``
        decided, threat, search, clear, undecided, reversals, compared,
        agreed, agreement_rate
    ``confusion``
        two rows per group (machine ALARM, CLEAR) and the officers' threat,
        search, clear, none
    ``decision_time``
        decided, median_s, p90_s
    ``seizures``
        one column per category, then total

    The first column is named after the grouping (``day``, ``shift``...).
    Rates are fractions; None where undefined.

    Raises
    ------
    ValueError
        ``table`` is not one of :data:`TABLES`.
    """
    rows_of = {"scans": _scans_rows, "decisions": _decisions_rows, "confusion": _confusion_rows,
               "decision_time": _decision_time_rows, "seizures": _seizures_rows}
    if table not in rows_of:
        raise ValueError(f"table must be one of {', '.join(TABLES)}; got {table!r}")
    header, rows = rows_of[table](report, [*report.groups, report.total])
    return [report.by.value, *header], rows


_Rows = tuple[list[str], list[list[Any]]]


def _scans_rows(report: Report, groups: Iterable[GroupFigures]) -> _Rows:
    return ["scans", "analysed", "alarms", "alarm_rate"], [
        [g.group, g.scans, g.analysed, g.alarms, g.alarm_rate] for g in groups]


def _decisions_rows(report: Report, groups: Iterable[GroupFigures]) -> _Rows:
    return ["decided", "threat", "search", "clear", "undecided", "reversals", "compared", "agreed",
            "agreement_rate"], [
        [g.group, g.decided, g.outcomes["threat"], g.outcomes["search"], g.outcomes["clear"], g.outcomes["none"],
         g.reversals, g.compared, g.agreed, g.agreement_rate] for g in groups]


def _confusion_rows(report: Report, groups: Iterable[GroupFigures]) -> _Rows:
    return ["machine", *OFFICER_OUTCOMES], [
        [g.group, verdict, *(g.confusion[verdict][o] for o in OFFICER_OUTCOMES)]
        for g in groups for verdict in MACHINE_VERDICTS]


def _decision_time_rows(report: Report, groups: Iterable[GroupFigures]) -> _Rows:
    return ["decided", "median_s", "p90_s"], [
        [g.group, len(g.decision_seconds), g.decision_time_median_s, g.decision_time_p90_s] for g in groups]


def _seizures_rows(report: Report, groups: Iterable[GroupFigures]) -> _Rows:
    categories = report.categories
    return [*categories, "total"], [[g.group, *(g.seizures.get(c, 0) for c in categories), g.seized] for g in groups]


def report_csv(report: Report, table: str) -> str:
    """One table of ``report`` as CSV text (header first; empty cells where a rate is undefined).

    Floats are written in full (Python's shortest round-trip form), so
    reading the CSV back gives the report's numbers exactly.
    """
    header, rows = report_table(report, table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([[_csv_cell(v) for v in row] for row in rows])
    return out.getvalue()


def _csv_cell(value: Any) -> Any:
    """A cell as a spreadsheet will take it: text that would start a formula
    (a lane named ``=HYPERLINK(...)`` by a scanner) is quoted with ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def report_text(report: Report, tables: Sequence[str] = TABLES) -> str:
    """``report`` as aligned plain-text tables for a terminal: rates as percentages, times in seconds."""
    lines = [f"Report from {report.start.isoformat()} to {report.end.isoformat()} ({report.timezone}), "
             f"by {report.by.value}"]
    titles = {"scans": "Scans and machine alarms", "decisions": "Officers' decisions (standing) and agreement",
              "confusion": "Machine verdict x officer decision", "decision_time": "Time from scan to decision",
              "seizures": "Seizures by category"}
    for table in tables:
        header, rows = report_table(report, table)
        cells = [header] + [[_cell(name, value) for name, value in zip(header, row)] for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        words = {0, *(i for i, name in enumerate(header) if name == "machine")}  # the rest are numbers
        lines += ["", titles[table]]
        for n, row in enumerate(cells):
            lines.append("  ".join(c.ljust(w) if i in words else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(row, widths))).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_rate"):
        return f"{100 * value:.1f} %"
    if name.endswith("_s"):
        return f"{value:.1f}"
    return str(value)


# -- live counters -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiveCounts:
    """Running totals from the store, for ``/metrics``.

    ``officer_decisions`` counts every decision recorded (reversals too) by
    outcome, and ``reversals`` the reversals: both only grow, as decisions
    are never deleted. ``machine_verdicts`` counts analysed scans by verdict.
    The rest are current levels: ``alarms_awaiting_officer`` (analysed
    ALARM scans no officer has decided yet), cases by status and seized
    cases by category.
    """

    officer_decisions: dict[str, int]
    reversals: int
    machine_verdicts: dict[str, int]
    alarms_awaiting_officer: int
    cases: dict[str, int]
    seizures: dict[str, int]


def live_counts(conn: Connection) -> LiveCounts:
    """Count decisions, verdicts, waiting alarms, cases and seizures in the store now."""
    def counted(column: sa.ColumnElement, *where: sa.ColumnElement) -> dict[str, int]:
        query = sa.select(column, sa.func.count()).where(*where).group_by(column)
        return {str(key): int(n) for key, n in conn.execute(query)}

    decided = sa.select(decisions.c.scan_id).where(decisions.c.scan_id == scans.c.scan_id).exists()
    waiting = conn.execute(sa.select(sa.func.count()).select_from(scans).where(
        scans.c.decision == "ALARM", ~decided)).scalar()
    seized = conn.execute(sa.select(cases.c.category, sa.func.count()).where(cases.c.seized == sa.true())
                          .group_by(cases.c.category)).all()
    return LiveCounts(
        officer_decisions={**dict.fromkeys(OFFICER_OUTCOMES[:3], 0), **counted(decisions.c.outcome)},
        reversals=int(conn.execute(sa.select(sa.func.count()).select_from(decisions)
                                   .where(decisions.c.supersedes.is_not(None))).scalar()),
        machine_verdicts={**dict.fromkeys(MACHINE_VERDICTS, 0),
                          **counted(scans.c.decision, scans.c.decision.is_not(None))},
        alarms_awaiting_officer=int(waiting),
        cases=counted(cases.c.status),
        seizures={str(category or UNCATEGORISED): int(n) for category, n in seized},
    )
