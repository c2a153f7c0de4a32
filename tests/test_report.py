"""Operational reports checked against histories whose true figures are known.

Two histories are written straight into the store's tables:

* a small one, hand-made so that every figure below was worked out on paper:
  scans on both sides of the period's ends and of shift boundaries, a scan
  after local midnight that is still the day before in UTC, a reversed
  decision, scans without a lane, a scanner or a machine verdict, cases seized
  and not, inside the period and out, with no scan, and with two scans
  (whose first scan decides its lane);
* a random one, whose generator keeps the truth as it goes (local wall-clock
  times chosen directly, delays, outcomes, seizures), for every grouping.

The figures are checked on SQLite and PostgreSQL, through the CSV tables,
``nii report``, the API with its permissions, ``/metrics``, and the report
page in a real browser.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import sqlalchemy as sa

from nii.cli import main
from nii.serve.report import (TABLES, ReportingConfig, build_report, live_counts, parse_period, report_csv,
                              report_table, report_text, reporting_config)
from nii.serve.store import Store, case_scans, cases, decisions, scans
from tests.serve_support import BACKENDS, PASSWORDS, add_users, open_store, serving

ZONE_NAME = "Europe/Amsterdam"  # UTC+1 in January: local midnight is 23:00 UTC the day before
ZONE = ZoneInfo(ZONE_NAME)
CONFIG = ReportingConfig(ZONE_NAME, ("06:00", "14:00", "22:00"), ("early", "late", "night"))
CATEGORIES = ("EXPLOSIVE", "PROHIBITED_ITEM", "CONTRABAND", "ANOMALY", "OTHER")
OUTCOMES = ("threat", "search", "clear", "none")


# -- writing a history -----------------------------------------------------------------------------------------


@dataclass
class ScanSpec:
    scan_id: str
    local: datetime  # wall-clock time in ZONE when the service received it
    lane: str | None
    scanner: str | None
    verdict: str | None  # the machine's ALARM / CLEAR; None: not analysed
    # (seconds after receipt, outcome, category), in the order officers made them
    decisions: list[tuple[int, str, str | None]] = field(default_factory=list)


@dataclass
class CaseSpec:
    case_id: int
    local: datetime  # when it was opened, wall clock in ZONE
    seized: bool
    category: str | None
    scan_ids: list[str]
    status: str = "open"


def stored(local: datetime) -> str:
    """A local wall-clock time as the store writes times (UTC, microseconds, Z)."""
    return local.replace(tzinfo=ZONE).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_history(store: Store, scan_specs: list[ScanSpec], case_specs: list[CaseSpec]) -> None:
    scan_rows, decision_rows = [], []
    for n, spec in enumerate(scan_specs):
        scan_rows.append({
            "scan_id": spec.scan_id, "received_at": stored(spec.local), "source": "http", "kind": "dual_energy",
            "scanner_id": spec.scanner, "lane": spec.lane, "status": "done" if spec.verdict else "failed",
            "decision": spec.verdict, "alert_count": 0, "alarm_count": int(spec.verdict == "ALARM"),
            "finished_at": stored(spec.local + timedelta(seconds=3)) if spec.verdict else None, "revision": n + 1})
        for delay, outcome, category in spec.decisions:
            decision_rows.append({"scan_id": spec.scan_id, "decided_at": stored(spec.local + timedelta(seconds=delay)),
                                  "username": "op", "outcome": outcome, "category": category})
    # Decision ids grow with time, as when officers record them.
    decision_rows.sort(key=lambda d: d["decided_at"])
    with store.transaction() as conn:
        conn.execute(scans.insert(), scan_rows)
        last: dict[str, int] = {}
        for row in decision_rows:
            inserted = conn.execute(decisions.insert().values(**row, supersedes=last.get(row["scan_id"])))
            last[row["scan_id"]] = inserted.inserted_primary_key[0]
        for spec in case_specs:
            conn.execute(cases.insert().values(
                case_id=spec.case_id, opened_at=stored(spec.local), opened_by="op", status=spec.status,
                updated_at=stored(spec.local), category=spec.category, seized=spec.seized))
            # Linked in the order given: the report must find the earliest scan, not the first link.
            for scan_id in spec.scan_ids:
                conn.execute(case_scans.insert().values(case_id=spec.case_id, scan_id=scan_id))


# -- the hand-made history -------------------------------------------------------------------------------------


def jan(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute)


HAND_SCANS = [
    ScanSpec("s01", jan(4, 23, 30), "L1", "A", "ALARM", [(10, "threat", "EXPLOSIVE")]),  # before the period
    ScanSpec("s02", jan(5, 0, 30), "L1", "A", "ALARM", [(60, "search", None)]),  # 23:30 UTC on the 4th
    ScanSpec("s03", jan(5, 6, 0), "L1", "A", "CLEAR", [(30, "clear", None)]),  # first second of the early shift
    ScanSpec("s04", jan(5, 13, 59), "L2", "B", "ALARM", [(120, "clear", None), (600, "threat", "EXPLOSIVE")]),
    ScanSpec("s05", jan(5, 14, 0), "L2", "B", "CLEAR"),
    ScanSpec("s06", jan(5, 21, 0), None, "B", None, [(45, "clear", None)]),  # failed analysis, decided anyway
    ScanSpec("s07", jan(5, 22, 0), "L1", "A", "ALARM", [(300, "threat", "CONTRABAND")]),
    ScanSpec("s08", jan(6, 3, 0), "L1", None, "CLEAR", [(90, "search", None)]),
    ScanSpec("s09", jan(6, 10, 0), "L2", "B", "ALARM"),
    ScanSpec("s10", jan(6, 15, 0), "L1", "A", "CLEAR", [(15, "clear", None)]),
    ScanSpec("s11", jan(6, 23, 59), "L2", "B", None),
    ScanSpec("s12", jan(7, 0, 0), "L1", "A", "ALARM"),  # the period's end: not included
]
HAND_CASES = [
    CaseSpec(1, jan(5, 22, 20), True, "CONTRABAND", ["s07"], "closed"),
    CaseSpec(2, jan(5, 14, 30), True, "EXPLOSIVE", ["s04"], "referred"),  # scanned in the early shift, opened late
    CaseSpec(3, jan(6, 12, 0), False, "OTHER", ["s09"]),  # not seized
    CaseSpec(4, jan(6, 16, 0), True, None, []),  # no category, no scan
    CaseSpec(5, jan(7, 1, 0), True, "EXPLOSIVE", ["s12"]),  # after the period
    CaseSpec(6, jan(6, 8, 0), True, "PROHIBITED_ITEM", ["s08", "s05"], "closed"),  # first scan: s05 (L2, B)
]
HAND_FROM, HAND_TO = "2026-01-05", "2026-01-07"


@dataclass(frozen=True)
class Expected:
    """One group's figures as worked out by hand."""

    scans: int
    analysed: int
    alarms: int
    outcomes: tuple[int, int, int, int]  # threat, search, clear, none
    reversals: int
    alarm_row: tuple[int, int, int, int]  # machine ALARM x officer threat, search, clear, none
    clear_row: tuple[int, int, int, int]  # machine CLEAR x ...
    median_s: float | None
    p90_s: float | None
    seizures: dict[str, int]

    def check(self, figures: dict) -> None:
        assert (figures["scans"], figures["analysed"], figures["alarms"]) == (self.scans, self.analysed, self.alarms)
        assert figures["alarm_rate"] == pytest.approx(self.alarms / self.analysed if self.analysed else None)
        assert tuple(figures["outcomes"][o] for o in OUTCOMES) == self.outcomes
        assert figures["decided"] == self.scans - self.outcomes[3]
        assert figures["reversals"] == self.reversals
        assert tuple(figures["confusion"]["ALARM"][o] for o in OUTCOMES) == self.alarm_row
        assert tuple(figures["confusion"]["CLEAR"][o] for o in OUTCOMES) == self.clear_row
        compared = sum(self.alarm_row[:3]) + sum(self.clear_row[:3])
        agreed = self.alarm_row[0] + self.alarm_row[1] + self.clear_row[2]
        assert (figures["compared"], figures["agreed"]) == (compared, agreed)
        assert figures["agreement_rate"] == pytest.approx(agreed / compared if compared else None)
        assert figures["decision_time"] == {"decided": self.scans - self.outcomes[3],
                                            "median_s": pytest.approx(self.median_s),
                                            "p90_s": pytest.approx(self.p90_s)}
        assert {c: n for c, n in figures["seizures"].items() if n} == self.seizures
        assert figures["seized"] == sum(self.seizures.values())


HAND_TOTAL = Expected(10, 8, 4, (2, 2, 3, 3), 1, (2, 1, 0, 1), (0, 1, 2, 1), 60, 192,
                      {"CONTRABAND": 1, "EXPLOSIVE": 1, "UNCATEGORISED": 1, "PROHIBITED_ITEM": 1})
HAND_GROUPS = {
    "day": {
        "2026-01-05": Expected(6, 5, 3, (2, 1, 2, 1), 1, (2, 1, 0, 0), (0, 0, 1, 1), 60, 228,
                               {"CONTRABAND": 1, "EXPLOSIVE": 1}),
        "2026-01-06": Expected(4, 3, 1, (0, 1, 1, 2), 0, (0, 0, 0, 1), (0, 1, 1, 0), 52.5, 82.5,
                               {"UNCATEGORISED": 1, "PROHIBITED_ITEM": 1}),
    },
    "shift": {
        "early": Expected(3, 3, 2, (1, 0, 1, 1), 1, (1, 0, 0, 1), (0, 0, 1, 0), 75, 111, {"PROHIBITED_ITEM": 1}),
        "late": Expected(3, 2, 0, (0, 0, 2, 1), 0, (0, 0, 0, 0), (0, 0, 1, 1), 30, 42,
                         {"EXPLOSIVE": 1, "UNCATEGORISED": 1}),
        "night": Expected(4, 3, 2, (1, 2, 0, 1), 0, (1, 1, 0, 0), (0, 1, 0, 0), 90, 258, {"CONTRABAND": 1}),
    },
    "lane": {
        "L1": Expected(5, 5, 2, (1, 2, 2, 0), 0, (1, 1, 0, 0), (0, 1, 2, 0), 60, 216, {"CONTRABAND": 1}),
        "L2": Expected(4, 3, 2, (1, 0, 0, 3), 1, (1, 0, 0, 1), (0, 0, 0, 1), 120, 120,
                       {"EXPLOSIVE": 1, "PROHIBITED_ITEM": 1}),
        "(unknown)": Expected(1, 0, 0, (0, 0, 1, 0), 0, (0, 0, 0, 0), (0, 0, 0, 0), 45, 45, {"UNCATEGORISED": 1}),
    },
    "scanner": {
        "A": Expected(4, 4, 2, (1, 1, 2, 0), 0, (1, 1, 0, 0), (0, 0, 2, 0), 45, 228, {"CONTRABAND": 1}),
        "B": Expected(5, 3, 2, (1, 0, 1, 3), 1, (1, 0, 0, 1), (0, 0, 0, 1), 82.5, 112.5,
                      {"EXPLOSIVE": 1, "PROHIBITED_ITEM": 1}),
        "(unknown)": Expected(1, 1, 0, (0, 1, 0, 0), 0, (0, 0, 0, 0), (0, 1, 0, 0), 90, 90, {"UNCATEGORISED": 1}),
    },
}


@pytest.fixture(params=BACKENDS)
def hand_store(request, tmp_path):
    store = open_store(tmp_path, request.param)
    write_history(store, HAND_SCANS, HAND_CASES)
    yield store
    store.engine.dispose()


def hand_report(store: Store, by: str):
    with store.read() as conn:
        return build_report(conn, parse_period(HAND_FROM, HAND_TO, timezone=ZONE_NAME), by=by, config=CONFIG)


@pytest.mark.parametrize("by", list(HAND_GROUPS))
def test_the_hand_made_history_gives_every_figure_worked_out_by_hand(hand_store, by):
    report = hand_report(hand_store, by)
    body = report.to_dict()
    assert [g["group"] for g in body["groups"]] == list(HAND_GROUPS[by])  # days and shifts in order, unknown last
    for figures in body["groups"]:
        HAND_GROUPS[by][figures["group"]].check(figures)
    HAND_TOTAL.check(body["total"])
    assert body["by"] == by and body["timezone"] == ZONE_NAME
    assert body["from"] == "2026-01-05T00:00:00+01:00" and body["to"] == "2026-01-07T00:00:00+01:00"
    assert body["categories"] == [*CATEGORIES, "UNCATEGORISED"]
    json.dumps(body)  # what the API sends


def test_empty_days_and_shifts_still_have_their_group(hand_store):
    with hand_store.read() as conn:
        report = build_report(conn, parse_period("2026-01-06", "2026-01-09", timezone=ZONE_NAME), by="day",
                              config=CONFIG)
        quiet = build_report(conn, parse_period("2026-02-01", "2026-02-02", timezone=ZONE_NAME), by="shift",
                             config=CONFIG)
    assert [g.group for g in report.groups] == ["2026-01-06", "2026-01-07", "2026-01-08"]
    assert [g.scans for g in report.groups] == [4, 1, 0]  # s12 at midnight opens the 7th
    assert [g.seized for g in report.groups] == [2, 1, 0]
    assert [g.group for g in quiet.groups] == ["early", "late", "night"] and quiet.total.scans == 0
    for figures in (quiet.total, *quiet.groups):
        assert figures.alarm_rate is figures.agreement_rate is figures.decision_time_median_s is None


def test_a_period_can_start_and_end_within_a_day(hand_store):
    with hand_store.read() as conn:
        # The early shift of the 5th: from 06:00 up to 14:00 local, given as times.
        report = build_report(conn, parse_period("2026-01-05T06:00", "2026-01-05T14:00", timezone=ZONE_NAME),
                              by="shift", config=CONFIG)
        utc = build_report(conn, parse_period("2026-01-05T05:00Z", "2026-01-05T13:00Z", timezone=ZONE_NAME),
                           by="shift", config=CONFIG)
    assert [(g.group, g.scans) for g in report.groups] == [("early", 2), ("late", 0), ("night", 0)]
    assert utc.to_dict()["groups"] == report.to_dict()["groups"]


# -- CSV -------------------------------------------------------------------------------------------------------


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def as_cell(value) -> str:
    return "" if value is None else str(value)


@pytest.mark.parametrize("table", TABLES)
def test_each_table_round_trips_through_csv(hand_store, table):
    report = hand_report(hand_store, "lane")
    header, rows = report_table(report, table)
    text = report_csv(report, table)
    assert text.endswith("\r\n")
    parsed = read_csv(text)
    assert parsed[0] == header and header[0] == "lane"
    assert parsed[1:] == [[as_cell(v) for v in row] for row in rows]
    assert parsed[-1][0] == "total" or (table == "confusion" and parsed[-2][0] == parsed[-1][0] == "total")
    # Floats come back exactly.
    for row, back in zip(rows, parsed[1:]):
        for value, cell in zip(row, back):
            if isinstance(value, float):
                assert float(cell) == value


def test_text_a_spreadsheet_would_run_as_a_formula_is_quoted():
    from nii.serve.report import _csv_cell

    # Lane and scanner names come from scanners' sidecars: untrusted text.
    assert [_csv_cell(v) for v in ['=HYPERLINK("http://x","L")', "+1", "-2", "@SUM(A1)", "L1", None, -0.5, 3]] == [
        '\'=HYPERLINK("http://x","L")', "'+1", "'-2", "'@SUM(A1)", "L1", "", -0.5, 3]


def test_the_tables_hold_the_hand_made_figures(hand_store):
    report = hand_report(hand_store, "shift")
    tables = {t: read_csv(report_csv(report, t)) for t in TABLES}
    assert tables["scans"] == [["shift", "scans", "analysed", "alarms", "alarm_rate"],
                               ["early", "3", "3", "2", str(2 / 3)], ["late", "3", "2", "0", "0.0"],
                               ["night", "4", "3", "2", str(2 / 3)], ["total", "10", "8", "4", "0.5"]]
    assert tables["decisions"][0] == ["shift", "decided", "threat", "search", "clear", "undecided", "reversals",
                                      "compared", "agreed", "agreement_rate"]
    assert tables["decisions"][-1] == ["total", "7", "2", "2", "3", "3", "1", "6", "5", str(5 / 6)]
    assert tables["confusion"][-2:] == [["total", "ALARM", "2", "1", "0", "1"], ["total", "CLEAR", "0", "1", "2", "1"]]
    assert tables["decision_time"][1:] == [["early", "2", "75.0", "111.0"], ["late", "2", "30.0", "42.0"],
                                           ["night", "3", "90.0", "258.0"], ["total", "7", "60.0", "192.0"]]
    assert tables["seizures"] == [["shift", *CATEGORIES, "UNCATEGORISED", "total"],
                                  ["early", "0", "1", "0", "0", "0", "0", "1"],
                                  ["late", "1", "0", "0", "0", "0", "1", "2"],
                                  ["night", "0", "0", "1", "0", "0", "0", "1"],
                                  ["total", "1", "1", "1", "0", "0", "1", "4"]]
    text = report_text(report)
    assert "Seizures by category" in text and "83.3 %" in text and "192.0" in text


# -- the generated history -------------------------------------------------------------------------------------


def shift_of(local: datetime) -> str:
    return "early" if 6 <= local.hour < 14 else "late" if 14 <= local.hour < 22 else "night"


def generate_history(seed: int, n_scans: int = 360):
    """A random history and the truth about it, kept as the generator chooses each value."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 10)
    scan_specs, case_specs, truth_scans = [], [], []
    for i in range(n_scans):
        local = start + timedelta(days=rng.randrange(0, 11), hours=rng.randrange(24), minutes=rng.randrange(60),
                                  seconds=rng.randrange(60))
        spec = ScanSpec(f"g{i:04d}", local, rng.choice(["L1", "L2", "L3", None]), rng.choice(["X-1", "X-2", None]),
                        rng.choices(["ALARM", "CLEAR", None], [3, 6, 1])[0])
        first_delay = None
        if rng.random() < 0.8:
            for _ in range(1 + (rng.random() < 0.15)):
                outcome = rng.choice(["clear", "search", "threat"])
                delay = (spec.decisions[-1][0] if spec.decisions else 0) + rng.randrange(5, 3600)
                spec.decisions.append((delay, outcome, rng.choice(CATEGORIES) if outcome == "threat" else None))
            first_delay = spec.decisions[0][0]
        scan_specs.append(spec)
        truth_scans.append({"local": local, "day": local.date().isoformat(), "shift": shift_of(local),
                            "lane": spec.lane or "(unknown)", "scanner": spec.scanner or "(unknown)",
                            "verdict": spec.verdict, "outcome": spec.decisions[-1][1] if spec.decisions else "none",
                            "reversed": len(spec.decisions) > 1, "delay": first_delay})
    truth_cases = []
    for case_id in range(1, 61):
        linked = rng.sample(range(n_scans), rng.choice([0, 1, 1, 2]))
        base = max((scan_specs[i].local for i in linked), default=start + timedelta(days=rng.randrange(11)))
        local = base + timedelta(minutes=rng.randrange(5, 300))
        seized = rng.random() < 0.7
        category = rng.choice([*CATEGORIES, None])
        case_specs.append(CaseSpec(case_id, local, seized, category, [scan_specs[i].scan_id for i in linked]))
        first = min(linked, key=lambda i: scan_specs[i].local, default=None)
        truth_cases.append({"local": local, "day": local.date().isoformat(), "shift": shift_of(local),
                            "lane": (scan_specs[first].lane if first is not None else None) or "(unknown)",
                            "scanner": (scan_specs[first].scanner if first is not None else None) or "(unknown)",
                            "seized": seized, "category": category or "UNCATEGORISED"})
    return scan_specs, case_specs, truth_scans, truth_cases


def true_figures(truth_scans, truth_cases, lo: datetime, hi: datetime, by: str) -> dict[str, dict]:
    """The figures per group (and "total"), counted straight from the generator's truth."""
    groups: dict[str, dict] = defaultdict(lambda: {"scans": 0, "analysed": 0, "alarms": 0, "outcomes": Counter(),
                                                   "reversals": 0, "confusion": Counter(), "delays": [],
                                                   "seizures": Counter()})
    for scan in truth_scans:
        if not lo <= scan["local"] < hi:
            continue
        for key in (scan[by], "total"):
            g = groups[key]
            g["scans"] += 1
            g["analysed"] += scan["verdict"] is not None
            g["alarms"] += scan["verdict"] == "ALARM"
            g["outcomes"][scan["outcome"]] += 1
            g["reversals"] += scan["reversed"]
            if scan["verdict"]:
                g["confusion"][scan["verdict"], scan["outcome"]] += 1
            if scan["delay"] is not None:
                g["delays"].append(scan["delay"])
    for case in truth_cases:
        if case["seized"] and lo <= case["local"] < hi:
            for key in (case[by], "total"):
                groups[key]["seizures"][case["category"]] += 1
    return groups


def check_against_truth(figures: dict, truth: dict) -> None:
    assert (figures["scans"], figures["analysed"], figures["alarms"]) == (truth["scans"], truth["analysed"],
                                                                          truth["alarms"])
    assert figures["alarm_rate"] == (truth["alarms"] / truth["analysed"] if truth["analysed"] else None)
    assert figures["outcomes"] == {o: truth["outcomes"][o] for o in OUTCOMES}
    assert figures["reversals"] == truth["reversals"]
    assert figures["confusion"] == {v: {o: truth["confusion"][v, o] for o in OUTCOMES} for v in ("ALARM", "CLEAR")}
    agreed = sum(truth["confusion"][pair] for pair in [("ALARM", "threat"), ("ALARM", "search"), ("CLEAR", "clear")])
    compared = sum(n for (_, o), n in truth["confusion"].items() if o != "none")
    assert (figures["agreed"], figures["compared"]) == (agreed, compared)
    assert figures["agreement_rate"] == pytest.approx(agreed / compared if compared else None)
    delays = truth["delays"]
    assert figures["decision_time"]["decided"] == len(delays) == figures["decided"]
    if delays:
        median, p90 = np.percentile(delays, [50, 90])  # an independent judge of the percentiles
        assert figures["decision_time"]["median_s"] == pytest.approx(median)
        assert figures["decision_time"]["p90_s"] == pytest.approx(p90)
    else:
        assert figures["decision_time"]["median_s"] is None
    assert {c: n for c, n in figures["seizures"].items() if n} == dict(truth["seizures"])


@pytest.fixture(params=BACKENDS)
def generated(request, tmp_path):
    store = open_store(tmp_path, request.param)
    scan_specs, case_specs, truth_scans, truth_cases = generate_history(seed=10)
    write_history(store, scan_specs, case_specs)
    yield store, truth_scans, truth_cases
    store.engine.dispose()


def test_a_generated_history_gives_its_true_figures_for_every_grouping(generated):
    store, truth_scans, truth_cases = generated
    lo, hi = datetime(2026, 1, 12), datetime(2026, 1, 19)  # a week inside the eleven generated days
    period = parse_period(lo.date().isoformat(), hi.date().isoformat(), timezone=ZONE_NAME)
    for by in ("day", "shift", "lane", "scanner"):
        with store.read() as conn:
            body = build_report(conn, period, by=by, config=CONFIG).to_dict()
        truth = true_figures(truth_scans, truth_cases, lo, hi, by)
        assert truth["total"]["scans"] > 150 and sum(truth["total"]["seizures"].values()) > 10  # a fair test
        check_against_truth(body["total"], truth["total"])
        seen = {g["group"] for g in body["groups"]}
        assert {k for k in truth if k != "total"} <= seen
        for figures in body["groups"]:
            check_against_truth(figures, truth[figures["group"]])
        # Groups add up to the total.
        for name in ("scans", "analysed", "alarms", "reversals", "seized"):
            assert sum(g[name] for g in body["groups"]) == body["total"][name]
        if by == "day":
            assert [g["group"] for g in body["groups"]] == [f"2026-01-{d}" for d in range(12, 19)]


# -- configuration and input -----------------------------------------------------------------------------------


def test_reporting_settings_are_checked():
    assert reporting_config(None) == ReportingConfig()
    config = reporting_config({"timezone": "Asia/Kolkata", "shifts": ["07:30", "19:30"]})
    assert [s.label for s in config.shift_list()] == ["07:30-19:30", "19:30-07:30"]
    assert config.shift_of(datetime(2026, 1, 1, 7, 29)) == "19:30-07:30"
    assert config.shift_of(datetime(2026, 1, 1, 7, 30)) == "07:30-19:30"
    assert reporting_config({"shifts": ["00:00"]}).shift_of(datetime(2026, 1, 1, 23, 59)) == "00:00-00:00"
    bad = [({"timezone": "Mars/Olympus"}, "unknown time zone"), ({"shifts": ["14:00", "06:00"]}, "ascending"),
           ({"shifts": ["6:00"]}, "HH:MM"), ({"shifts": ["25:00"]}, "HH:MM"), ({"shifts": []}, "list of start"),
           ({"shift_names": ["a"]}, "each of the 3"), ({"shift": ["06:00"]}, "unknown settings shift")]
    for section, words in bad:
        with pytest.raises(ValueError, match=words):
            reporting_config(section)


def test_the_service_config_carries_the_reporting_section(tmp_path):
    from nii.serve.service import load_service_config

    assert load_service_config().reporting == ReportingConfig("UTC", ("06:00", "14:00", "22:00"))
    path = tmp_path / "service.toml"
    path.write_text('[reporting]\ntimezone = "Europe/Amsterdam"\nshifts = ["06:00", "14:00", "22:00"]\n'
                    'shift_names = ["early", "late", "night"]\n')
    assert load_service_config(path).reporting == CONFIG
    path.write_text('[reporting]\ntimezone = "Nowhere/Town"\n')
    with pytest.raises(ValueError, match=r"service.toml: unknown time zone 'Nowhere/Town'"):
        load_service_config(path)


def test_periods_are_checked_and_days_follow_the_zone(hand_store):
    for start, end, words in [("2026-01-07", "2026-01-05", "must end after it starts"),
                              ("yesterday", "2026-01-05", "from: expected a date"),
                              ("2026-01-05", "2026-13-01", "to: expected a date")]:
        with pytest.raises(ValueError, match=words):
            parse_period(start, end, timezone=ZONE_NAME)
    # Summer time starts on 29 March in Amsterdam: that day has 23 hours.
    spring = parse_period("2026-03-29", "2026-03-30", timezone=ZONE_NAME)
    assert spring.bounds() == ("2026-03-28T23:00:00.000000Z", "2026-03-29T22:00:00.000000Z")
    assert spring.days() == [date(2026, 3, 29)]
    with hand_store.read() as conn, pytest.raises(ValueError, match="by must be one of day, shift"):
        build_report(conn, spring, by="week")
    with hand_store.read() as conn, pytest.raises(ValueError, match="at most 1000 days"):
        build_report(conn, parse_period("2020-01-01", "2026-01-01"), by="day")


def test_live_counts_cover_the_whole_store(hand_store):
    with hand_store.read() as conn:
        live = live_counts(conn)
    assert live.officer_decisions == {"threat": 3, "search": 2, "clear": 4}  # every decision, the reversed one too
    assert live.reversals == 1
    assert live.machine_verdicts == {"ALARM": 6, "CLEAR": 4}
    assert live.alarms_awaiting_officer == 2  # s09 and s12
    assert live.cases == {"open": 3, "referred": 1, "closed": 2}
    assert live.seizures == {"CONTRABAND": 1, "EXPLOSIVE": 2, "UNCATEGORISED": 1, "PROHIBITED_ITEM": 1}


# -- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_data(tmp_path):
    store = Store.open(tmp_path / "data")
    write_history(store, HAND_SCANS, HAND_CASES)
    store.engine.dispose()
    config = tmp_path / "service.toml"
    config.write_text('[reporting]\ntimezone = "Europe/Amsterdam"\nshifts = ["06:00", "14:00", "22:00"]\n'
                      'shift_names = ["early", "late", "night"]\n')
    return ["--data", str(tmp_path / "data"), "--service-config", str(config)]


def test_nii_report_gives_the_same_figures(cli_data, capsys):
    assert main(["report", "--from", HAND_FROM, "--to", HAND_TO, "--by", "lane", "--format", "json", *cli_data]) == 0
    body = json.loads(capsys.readouterr().out)
    for figures in body["groups"]:
        HAND_GROUPS["lane"][figures["group"]].check(figures)
    HAND_TOTAL.check(body["total"])

    assert main(["report", "--from", HAND_FROM, "--to", HAND_TO, "--by", "shift", "--format", "csv",
                 "--table", "scans", *cli_data]) == 0
    assert read_csv(capsys.readouterr().out)[1:] == [
        ["early", "3", "3", "2", str(2 / 3)], ["late", "3", "2", "0", "0.0"],
        ["night", "4", "3", "2", str(2 / 3)], ["total", "10", "8", "4", "0.5"]]

    assert main(["report", "--from", HAND_FROM, "--to", HAND_TO, "--format", "csv", *cli_data]) == 0
    blocks = capsys.readouterr().out.split("\r\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"# {t}" for t in TABLES]
    assert read_csv(blocks[0].split("\n", 1)[1])[1] == ["2026-01-05", "6", "5", "3", "0.6"]

    assert main(["report", "--from", HAND_FROM, "--to", HAND_TO, "--by", "scanner", *cli_data]) == 0
    text = capsys.readouterr().out
    assert "Scans and machine alarms" in text and "Time from scan to decision" in text
    total_line = next(line for line in text.splitlines() if line.startswith("total"))
    assert total_line.split() == ["total", "10", "8", "4", "50.0", "%"]


def test_nii_report_counts_days_in_the_zone_it_is_given(cli_data, capsys):
    # In UTC, s02 (00:30 local on the 5th) falls on the 4th and s12 (midnight local on the 7th) on the 6th.
    assert main(["report", "--from", HAND_FROM, "--to", HAND_TO, "--timezone", "UTC", "--format", "json",
                 *cli_data]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [(g["group"], g["scans"]) for g in body["groups"]] == [("2026-01-05", 5), ("2026-01-06", 5)]
    assert main(["report", "--from", HAND_TO, "--to", HAND_FROM, *cli_data]) == 2
    assert "must end after it starts" in capsys.readouterr().err
    assert main(["report", "--from", HAND_FROM, "--to", HAND_TO, "--timezone", "Mars/Olympus", *cli_data]) == 2


# -- the API and /metrics --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_service(tmp_path_factory):
    from nii.serve.service import Service, ServiceConfig

    store = Store.open(tmp_path_factory.mktemp("report-data"))
    add_users(store)
    write_history(store, HAND_SCANS, HAND_CASES)
    return Service(store, ServiceConfig(workers=1, dicom_port=0, reporting=CONFIG))


@pytest.fixture(scope="module")
def client(hand_service):
    from fastapi.testclient import TestClient

    from nii.serve.app import create_app

    return TestClient(create_app(hand_service))


@pytest.fixture(scope="module")
def login(client):
    """User name -> bearer header; each user logs in once (Argon2 is slow on purpose)."""
    headers = {}
    for user in PASSWORDS:
        reply = client.post("/api/token", data={"username": user, "password": PASSWORDS[user]})
        assert reply.status_code == 200, reply.text
        headers[user] = {"Authorization": f"Bearer {reply.json()['access_token']}"}
    return headers


def test_reports_are_for_supervisors_and_administrators(client, login):
    period = {"from": HAND_FROM, "to": HAND_TO, "by": "shift"}
    assert client.get("/api/report", params=period).status_code == 401
    for user in ("op", "dev"):
        reply = client.get("/api/report", params=period, headers=login[user])
        assert reply.status_code == 403 and "may not read reports" in reply.json()["detail"]
        assert client.get("/api/report.csv", params={**period, "table": "scans"}, headers=login[user]).status_code == 403
    for user in ("sup", "boss"):
        reply = client.get("/api/report", params=period, headers=login[user])
        assert reply.status_code == 200, reply.text
        body = reply.json()
        for figures in body["groups"]:
            HAND_GROUPS["shift"][figures["group"]].check(figures)
        HAND_TOTAL.check(body["total"])
        assert body["tables"]["scans"]["columns"] == ["shift", "scans", "analysed", "alarms", "alarm_rate"]
        assert body["tables"]["seizures"]["rows"][-1] == ["total", 1, 1, 1, 0, 0, 1, 4]


def test_each_table_downloads_as_csv(client, login, hand_service):
    sup = login["sup"]
    with hand_service.store.read() as conn:
        report = build_report(conn, parse_period(HAND_FROM, HAND_TO, timezone=ZONE_NAME), by="lane", config=CONFIG)
    for table in TABLES:
        reply = client.get("/api/report.csv", params={"table": table, "from": HAND_FROM, "to": HAND_TO, "by": "lane"},
                           headers=sup)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/csv")
        assert reply.headers["content-disposition"] == \
            f'attachment; filename="nii-{table}-by-lane-2026-01-05-2026-01-07.csv"'
        assert reply.text == report_csv(report, table)


def test_bad_report_requests_are_refused_with_reasons(client, login):
    sup = login["sup"]
    for params, words in [({"from": HAND_TO, "to": HAND_FROM}, "must end after it starts"),
                          ({"from": "soon", "to": HAND_TO}, "from: expected a date"),
                          ({"from": HAND_FROM, "to": HAND_TO, "by": "week"}, "day"),
                          ({"from": HAND_FROM}, "Field required")]:
        reply = client.get("/api/report", params=params, headers=sup)
        assert reply.status_code == 422 and words in json.dumps(reply.json()), reply.text
    reply = client.get("/api/report.csv", params={"from": HAND_FROM, "to": HAND_TO, "table": "everything"}, headers=sup)
    assert reply.status_code == 422


def test_metrics_carry_the_live_counters(client):
    metrics = client.get("/metrics").text
    for line in ['nii_officer_decisions_total{outcome="threat"} 3.0',
                 'nii_officer_decisions_total{outcome="clear"} 4.0', "nii_decision_reversals_total 1.0", 'nii_machine_verdicts_total{verdict="ALARM"} 6.0',
                 "nii_alarms_awaiting_officer 2.0", 'nii_cases{status="open"} 3.0',
                 'nii_seizures{category="EXPLOSIVE"} 2.0', 'nii_seizures{category="UNCATEGORISED"} 1.0']:
        assert line in metrics.splitlines(), line


# -- the report page in a browser ------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
PLOT_H = 230 - 18 - 44  # report.js: chart height less its top and bottom padding
ACCENT_RGB = np.array([0x5A, 0xA9, 0xFF])  # --accent in style.css: the scans bars


@pytest.fixture(scope="module")
def web(hand_service):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright import sync_api  # a test dependency: missing, this fails
    with serving(hand_service) as base_url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield base_url, browser, sync_api.expect
        finally:
            browser.close()


def open_report(web, user: str, query: str):
    base, browser, expect = web
    context = browser.new_context(viewport={"width": 1300, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" and "403" not in msg.text else None)
    reply = context.request.post(f"{base}/api/session", form={"username": user, "password": PASSWORDS[user]})
    assert reply.ok
    page.goto(f"{base}/report?{query}")
    return context, page, problems, expect


def bars(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(selector, """rects => rects.map(r => ({
        group: r.dataset.group, series: r.dataset.series, outcome: r.dataset.outcome,
        value: r.dataset.value === '' ? null : Number(r.dataset.value), height: Number(r.getAttribute('height'))}))""")


def test_the_report_page_draws_the_figures(web, hand_service):
    context, page, problems, expect = open_report(web, "sup", f"from={HAND_FROM}&to={HAND_TO}&by=shift")
    try:
        expect(page.locator("#chart-scans rect.bar")).to_have_count(3)
        expect(page.locator("#who-name")).to_have_text("sup")
        expect(page.locator("#report-by")).to_have_value("shift")
        expected = HAND_GROUPS["shift"]

        # Scans: one bar per shift, heights proportional to the counts, the largest filling the plot.
        drawn = bars(page, "#chart-scans rect.bar")
        assert [(b["group"], b["value"]) for b in drawn] == [(k, e.scans) for k, e in expected.items()]
        top = max(e.scans for e in expected.values())
        for b in drawn:
            assert b["height"] == pytest.approx(PLOT_H * b["value"] / top)
        # Alarm rate: on a 0-100 % scale.
        for b in bars(page, "#chart-alarm-rate rect.bar"):
            e = expected[b["group"]]
            assert b["value"] == pytest.approx(e.alarms / e.analysed)
            assert b["height"] == pytest.approx(PLOT_H * e.alarms / e.analysed)
        # Decisions: stacked per shift, each piece in proportion, the stack as tall as the scans bar.
        stacked = bars(page, "#chart-decisions rect.bar")
        assert len(stacked) == 3 * 4
        for b in stacked:
            assert b["value"] == expected[b["group"]].outcomes[OUTCOMES.index(b["outcome"])]
            assert b["height"] == pytest.approx(PLOT_H * b["value"] / top)
        # The heat map: the whole period's confusion table, more scans drawn more opaque.
        cells = page.eval_on_selector_all("#chart-confusion rect.cell", """cells => cells.map(c => ({
            machine: c.dataset.machine, officer: c.dataset.officer, value: Number(c.dataset.value),
            opacity: Number(c.getAttribute('fill-opacity')), agree: c.classList.contains('agree')}))""")
        assert {(c["machine"], c["officer"]): c["value"] for c in cells} == {
            **{("ALARM", o): n for o, n in zip(OUTCOMES, HAND_TOTAL.alarm_row)},
            **{("CLEAR", o): n for o, n in zip(OUTCOMES, HAND_TOTAL.clear_row)}}
        assert {(c["machine"], c["officer"]) for c in cells if c["agree"]} == {
            ("ALARM", "threat"), ("ALARM", "search"), ("CLEAR", "clear")}
        by_value = sorted(cells, key=lambda c: c["value"])
        assert all(a["opacity"] <= b["opacity"] for a, b in zip(by_value, by_value[1:]))
        assert by_value[-1]["opacity"] == 1 and by_value[0]["opacity"] < 0.1
        # Decision times: median and 90th percentile per shift.
        times = bars(page, "#chart-decision-time rect.bar")
        assert {(b["group"], b["series"]): b["value"] for b in times} == {
            **{(k, "median"): e.median_s for k, e in expected.items()},
            **{(k, "p90"): e.p90_s for k, e in expected.items()}}
        longest = max(e.p90_s for e in expected.values())
        assert all(b["height"] == pytest.approx(PLOT_H * b["value"] / longest) for b in times)
        # Seizures by category over the period.
        seized = {b["group"]: b["value"] for b in bars(page, "#chart-seizures rect.bar")}
        assert seized == {**dict.fromkeys(CATEGORIES, 0), **HAND_TOTAL.seizures}
        # Totals and tables.
        expect(page.locator('.tile[data-figure="Scans"] strong')).to_have_text("10")
        expect(page.locator('.tile[data-figure="Agreement"] strong')).to_have_text("83.3 %")
        expect(page.locator('.tile[data-figure="Median time to decision"] strong')).to_have_text("1 min 00 s")
        expect(page.locator('.table-wrap[data-table="scans"] tbody tr')).to_have_count(4)
        expect(page.locator('.table-wrap[data-table="confusion"] tbody tr')).to_have_count(8)

        # The browser paints the bars so: accent-coloured columns as tall as the counts.
        shot = page.locator("#chart-scans svg").screenshot()
        heights = painted_bar_heights(shot, ACCENT_RGB)
        assert len(heights) == 3
        scale = heights[2] / expected["night"].scans
        assert heights[0] == pytest.approx(scale * 3, abs=2) and heights[1] == pytest.approx(scale * 3, abs=2)

        # Every Export CSV link gives that table as the API computes it.
        with hand_service.store.read() as conn:
            report = build_report(conn, parse_period(HAND_FROM, HAND_TO, timezone=ZONE_NAME), by="shift",
                                  config=CONFIG)
        links = page.eval_on_selector_all("a.export", "links => links.map(a => [a.dataset.table, a.href])")
        assert [t for t, _ in links] == list(TABLES)
        for table, href in links:
            reply = context.request.get(href)
            assert reply.ok and reply.text() == report_csv(report, table)

        # Another grouping, chosen on the page.
        page.select_option("#report-by", "lane")
        page.click("#report-form button[type=submit]")
        expect(page.locator("#report-period")).to_contain_text("by lane")  # drawn in the same task as the charts
        assert [(b["group"], b["value"]) for b in bars(page, "#chart-scans rect.bar")] == [
            (k, e.scans) for k, e in HAND_GROUPS["lane"].items()]
        assert page.url.endswith(f"/report?from={HAND_FROM}&to={HAND_TO}&by=lane")
    finally:
        context.close()
    assert problems == [], "script errors or CSP violations in the page"


def painted_bar_heights(png: bytes, rgb: np.ndarray) -> list[int]:
    """Heights in pixels of the runs of columns painted in ``rgb``, left to right."""
    import cv2

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(int)
    painted = (np.abs(image - rgb).max(axis=2) <= 12)
    columns = painted.sum(axis=0)
    heights, run = [], []
    for count in [*columns, 0]:
        if count:
            run.append(count)
        elif run:
            heights.append(int(np.median(run)))
            run = []
    return heights


def test_a_refused_period_hides_the_last_figures_and_a_good_one_clears_the_refusal(web, hand_service):
    context, page, problems, expect = open_report(web, "sup", f"from={HAND_FROM}&to={HAND_TO}&by=shift")
    problems_before = len(problems)
    try:
        expect(page.locator("#chart-scans rect.bar")).to_have_count(3)
        page.fill("#report-from", HAND_TO)  # ends before it starts: refused
        page.fill("#report-to", HAND_FROM)
        page.click("#report-form button[type=submit]")
        expect(page.locator("#banner-text")).to_contain_text("must end after it starts")
        expect(page.locator("#report-body")).to_be_hidden()  # not the last period's figures under these dates
        page.fill("#report-from", HAND_FROM)
        page.fill("#report-to", HAND_TO)
        page.click("#report-form button[type=submit]")
        expect(page.locator("#report-body")).to_be_visible()
        expect(page.locator("#banner")).to_be_hidden()
    finally:
        context.close()
    # The refused request is the page's own 422, logged by the browser; nothing else may be.
    assert [p for p in problems[problems_before:] if "422" not in p] == []

    context, page, problems, expect = open_report(web, "sup", "from=2026-13-45&to=xx")
    try:  # a bookmarked address with dates that are no dates: a report of the last week, and why
        expect(page.locator("#banner-text")).to_contain_text("not dates; showing the last seven days")
        expect(page.locator("#report-body")).to_be_visible()
    finally:
        context.close()


def test_operators_get_no_report(web):
    context, page, problems, expect = open_report(web, "op", f"from={HAND_FROM}&to={HAND_TO}")
    try:
        expect(page.locator("#report-refused")).to_be_visible()
        expect(page.locator("#report-refused")).to_contain_text("may not read reports")
        assert page.locator("#report-body").is_hidden()
    finally:
        context.close()
    assert problems == []


def test_the_console_links_to_reports_for_supervisors_only(web):
    base, browser, expect = web
    for user, visible in (("sup", True), ("op", False)):
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(base + "/")
            page.fill("#login-user", user)
            page.fill("#login-password", PASSWORDS[user])
            page.click("#login-form button[type=submit]")
            expect(page.locator("#who-name")).to_have_text(user)
            link = page.locator("#report-link")
            if visible:
                expect(link).to_be_visible()
                assert link.get_attribute("href") == "/report"
            else:
                expect(link).to_be_hidden()
        finally:
            context.close()
