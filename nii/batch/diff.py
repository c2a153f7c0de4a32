"""``nii batch diff``: what changed between two batch runs, scan by scan.

When a new model or threshold is approved, the archive is re-run with it
and a supervisor signs off the difference: per scan, the alerts that are
**new** (in B only), **removed** (in A only) and **changed** (the same
object, but its score, or whether it alarms, differs), with the decision
before and after, and summary counts.

Scans are matched by scan id (by path for a scan that could not be read).
Alerts of a scan are matched by class and box: a pair of the same class
whose boxes overlap with IoU of at least ``min_iou``
(:func:`nii.detect.metrics.box_iou`), best overlaps first, each alert in at
most one pair.

Both runs' tables are sorted by scan and walked side by side, so no Python
object per scan is kept beyond the scans that differ.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nii.batch.results import summarise_manifest
from nii.detect.metrics import box_iou

__all__ = ["RunDiff", "ScanDiff", "diff_runs", "diff_text", "match_alerts"]

_SCAN_COLUMNS = ["key", "scan_id", "path", "decision", "error"]
_ALERT_COLUMNS = ["key", "scan_id", "path", "alert_id", "class", "score", "alarm", "severity", "box", "label"]


@dataclasses.dataclass
class ScanDiff:
    """How one scan's analysis differs between run A and run B.

    ``new``/``removed`` hold alert rows (``alerts.parquet`` columns);
    ``changed`` holds ``{"a": row, "b": row, "iou": float, "what": [...]}``
    where ``what`` lists ``score`` and/or ``severity``. ``only_in`` is
    ``"A"`` or ``"B"`` for a scan one run did not analyse.
    """

    scan_id: str | None
    path: str
    decision_a: str | None = None
    decision_b: str | None = None
    error_a: str | None = None
    error_b: str | None = None
    only_in: str | None = None
    new: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    removed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    changed: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def differs(self) -> bool:
        return bool(self.only_in or self.new or self.removed or self.changed or self.decision_a != self.decision_b
                    or self.error_a != self.error_b)


@dataclasses.dataclass
class RunDiff:
    """Two runs compared: their pipelines, the counts, and every scan that differs."""

    a: str
    b: str
    pipeline_a: Mapping[str, Any] | None
    pipeline_b: Mapping[str, Any] | None
    summary: dict[str, Any]
    scans: list[ScanDiff]

    def to_dict(self) -> dict[str, Any]:
        return {"a": {"results": self.a, "pipeline": self.pipeline_a},
                "b": {"results": self.b, "pipeline": self.pipeline_b},
                "summary": self.summary, "scans": [dataclasses.asdict(s) for s in self.scans]}


def match_alerts(alerts_a: Sequence[Mapping[str, Any]], alerts_b: Sequence[Mapping[str, Any]], *,
                 min_iou: float = 0.5) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Pair the alerts of one scan in two runs by class and box overlap.

    Parameters
    ----------
    alerts_a, alerts_b : sequence of mapping
        Alert rows with ``class`` and ``box``.
    min_iou : float
        Least box IoU for a pair.

    Returns
    -------
    pairs : list of (index in A, index in B, IoU)
        Greedily by highest IoU; each alert in at most one pair.
    only_a, only_b : list of int
        Indices of the alerts left unpaired (removed, new).

    Examples
    --------
    >>> a = [{"class": "knife", "box": [0, 0, 10, 10]}]
    >>> b = [{"class": "knife", "box": [1, 0, 11, 10]}, {"class": "gun", "box": [0, 0, 10, 10]}]
    >>> match_alerts(a, b)
    ([(0, 0, 0.8181818181818182)], [], [1])
    """
    candidates = sorted(((box_iou(x["box"], y["box"]), i, j)
                         for i, x in enumerate(alerts_a) for j, y in enumerate(alerts_b)
                         if x["class"] == y["class"] and len(x["box"]) == len(y["box"])), reverse=True)
    pairs: list[tuple[int, int, float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for iou, i, j in candidates:
        if iou < min_iou:
            break
        if i not in used_a and j not in used_b:
            pairs.append((i, j, iou))
            used_a.add(i)
            used_b.add(j)
    pairs.sort()
    return (pairs, [i for i in range(len(alerts_a)) if i not in used_a],
            [j for j in range(len(alerts_b)) if j not in used_b])


def _ids_of_failed_scans(folder: Path, other: Path) -> dict[str, str]:
    """Scan ids the other run found for the scans that failed in this one, by archive key.

    A scan that could not be read has no id of its own; without this it
    would be "only in A" and "only in B" instead of ERROR -> ALARM.
    """
    failed = pq.read_table(folder / "scans.parquet", columns=["key", "scan_id"])
    keys = failed.filter(pc.is_null(failed["scan_id"]))["key"]
    if not len(keys):
        return {}
    found = pq.read_table(other / "scans.parquet", columns=["key", "scan_id"])
    found = found.filter(pc.and_(pc.is_in(found["key"], value_set=keys), pc.is_valid(found["scan_id"])))
    return dict(zip(found["key"].to_pylist(), found["scan_id"].to_pylist()))


def _sorted_by_scan(path: Path, columns: list[str], ids_by_key: Mapping[str, str]) -> pa.Table:
    table = pq.read_table(path, columns=columns)
    by_path = pc.binary_join_element_wise("path:", table["path"], "")
    borrowed = pc.take(pa.array(list(ids_by_key.values()), pa.string()),
                       pc.index_in(table["key"], value_set=pa.array(list(ids_by_key), pa.string())))
    table = table.append_column("ident", pc.coalesce(table["scan_id"], borrowed, by_path))
    return table.sort_by([("ident", "ascending"), ("key", "ascending"), *(
        [("alert_id", "ascending")] if "alert_id" in columns else [])])


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=4096):
        yield from batch.to_pylist()


def _check_tables(folder: Path) -> None:
    for name in ("scans.parquet", "alerts.parquet"):
        if not (folder / name).exists():
            raise ValueError(f"{folder}: no {name}; is it the RESULTS of a finished nii batch run?")
    # The tables are merged at the end of a run: after an interrupted one,
    # they lack what its parts committed since.
    state = summarise_manifest(folder)
    if state.last_part > max(state.merged_part, 0):
            raise ValueError(f"{folder}: its tables miss what was committed after they were last merged (an "
                             "interrupted run); run the same nii batch run again to finish it, then compare")


def _scans_with_alerts(folder: Path, ids_by_key: Mapping[str, str]) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """``(ident, scan row, its alert rows)`` in ident order; a scan listed twice counts once."""
    alerts = _rows(_sorted_by_scan(folder / "alerts.parquet", _ALERT_COLUMNS, ids_by_key))
    alert = next(alerts, None)
    previous = None
    for scan in _rows(_sorted_by_scan(folder / "scans.parquet", _SCAN_COLUMNS, ids_by_key)):
        ident = scan["ident"]
        own: list[dict[str, Any]] = []
        while alert is not None and alert["ident"] <= ident:
            if alert["ident"] == ident and alert["key"] == scan["key"]:
                own.append(alert)
            alert = next(alerts, None)
        if ident != previous:
            yield ident, scan, own
        previous = ident


def _compare(scan_a: Mapping[str, Any], alerts_a: list[dict[str, Any]], scan_b: Mapping[str, Any],
             alerts_b: list[dict[str, Any]], *, min_iou: float, score_tolerance: float) -> tuple[ScanDiff, int]:
    """One scan in both runs; also returns how many alerts are unchanged."""
    diff = ScanDiff(scan_b["scan_id"] or scan_a["scan_id"], scan_b["path"], scan_a["decision"], scan_b["decision"],
                    scan_a["error"], scan_b["error"])
    pairs, only_a, only_b = match_alerts(alerts_a, alerts_b, min_iou=min_iou)
    unchanged = 0
    for i, j, iou in pairs:
        a, b = alerts_a[i], alerts_b[j]
        what = (["score"] if abs(a["score"] - b["score"]) > score_tolerance else []) + \
            (["severity"] if a["alarm"] != b["alarm"] else [])
        if what:
            diff.changed.append({"a": _shown(a), "b": _shown(b), "iou": round(iou, 3), "what": what})
        else:
            unchanged += 1
    diff.removed = [_shown(alerts_a[i]) for i in only_a]
    diff.new = [_shown(alerts_b[j]) for j in only_b]
    return diff, unchanged


def _shown(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {k: alert[k] for k in ("alert_id", "class", "score", "alarm", "severity", "box", "label")}


def _pipeline(folder: Path) -> dict[str, Any] | None:
    return summarise_manifest(folder).header.get("pipeline")


def diff_runs(results_a: str | os.PathLike, results_b: str | os.PathLike, *, min_iou: float = 0.5,
              score_tolerance: float = 1e-3) -> RunDiff:
    """Compare two batch runs' tables (see the module docstring).

    Parameters
    ----------
    results_a, results_b : path-like
        RESULTS folders of finished runs: A before, B after.
    min_iou : float
        Least box IoU for an alert in A and one in B to be the same object.
    score_tolerance : float
        Score differences up to this are not a change (scores are
        recomputed; the last digits may differ between machines).

    Returns
    -------
    RunDiff
        ``summary`` counts scans in both runs, only in A or B, with
        changes, decision changes (``CLEAR->ALARM``...), errors in each,
        and alerts new, removed, changed and unchanged.

    Raises
    ------
    ValueError
        A folder without the tables, or ``min_iou`` outside (0, 1].
    """
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must lie in (0, 1], got {min_iou}")
    if score_tolerance < 0:
        raise ValueError(f"score_tolerance must not be negative, got {score_tolerance}")
    a, b = Path(results_a), Path(results_b)
    summary: dict[str, Any] = {"scans_in_both": 0, "only_in_a": 0, "only_in_b": 0, "scans_with_changes": 0,
                               "decisions": {}, "errors_a": 0, "errors_b": 0,
                               "alerts": {"new": 0, "removed": 0, "changed": 0, "unchanged": 0}}
    scans: list[ScanDiff] = []
    _check_tables(a), _check_tables(b)
    walk_a, walk_b = _scans_with_alerts(a, _ids_of_failed_scans(a, b)), _scans_with_alerts(b, _ids_of_failed_scans(b, a))
    next_a, next_b = next(walk_a, None), next(walk_b, None)
    while next_a is not None or next_b is not None:
        if next_b is None or (next_a is not None and next_a[0] < next_b[0]):
            scan = next_a[1]
            scans.append(ScanDiff(scan["scan_id"], scan["path"], scan["decision"], None, scan["error"], None, "A"))
            summary["only_in_a"] += 1
            summary["errors_a"] += scan["error"] is not None
            next_a = next(walk_a, None)
            continue
        if next_a is None or next_b[0] < next_a[0]:
            scan = next_b[1]
            scans.append(ScanDiff(scan["scan_id"], scan["path"], None, scan["decision"], None, scan["error"], "B"))
            summary["only_in_b"] += 1
            summary["errors_b"] += scan["error"] is not None
            next_b = next(walk_b, None)
            continue
        diff, unchanged = _compare(next_a[1], next_a[2], next_b[1], next_b[2], min_iou=min_iou,
                                   score_tolerance=score_tolerance)
        summary["scans_in_both"] += 1
        summary["errors_a"] += diff.error_a is not None
        summary["errors_b"] += diff.error_b is not None
        summary["alerts"]["unchanged"] += unchanged
        for kind in ("new", "removed", "changed"):
            summary["alerts"][kind] += len(getattr(diff, kind))
        if diff.decision_a != diff.decision_b:
            change = f"{diff.decision_a or 'ERROR'}->{diff.decision_b or 'ERROR'}"
            summary["decisions"][change] = summary["decisions"].get(change, 0) + 1
        if diff.differs:
            summary["scans_with_changes"] += 1
            scans.append(diff)
        next_a, next_b = next(walk_a, None), next(walk_b, None)
    return RunDiff(str(a), str(b), _pipeline(a), _pipeline(b), summary, scans)


def _alert_text(alert: Mapping[str, Any]) -> str:
    box = ", ".join(f"{v:g}" for v in alert["box"])
    return f"{alert['class']} {alert['score']:.2f} {alert['severity']}  box [{box}]"


def _run_line(name: str, folder: str, pipeline: Mapping[str, Any] | None) -> str:
    if pipeline is None:
        return f"{name}  {folder}: (no manifest)"
    models = ", ".join(f"{m['name']} {m['version']}" for m in pipeline.get("models", ()))
    return f"{name}  {folder}: {models}; operating point {pipeline.get('operating_point')}"


def diff_text(diff: RunDiff) -> str:
    """The report ``nii batch diff`` prints: both pipelines, each scan that differs, the counts."""
    lines = [_run_line("A", diff.a, diff.pipeline_a), _run_line("B", diff.b, diff.pipeline_b)]
    for scan in diff.scans:
        name = f"{scan.scan_id or '-'}  {scan.path}"
        if scan.only_in:
            lines.append(f"{name}  only in {scan.only_in}")
            continue
        before = scan.decision_a or f"ERROR ({scan.error_a})"
        after = scan.decision_b or f"ERROR ({scan.error_b})"
        lines.append(f"{name}  {before} -> {after}" if before != after else f"{name}  {after}")
        lines += [f"  + new      {_alert_text(a)}" for a in scan.new]
        lines += [f"  - removed  {_alert_text(a)}" for a in scan.removed]
        for change in scan.changed:
            a, b = change["a"], change["b"]
            what = []
            if "score" in change["what"]:
                what.append(f"score {a['score']:.3f} -> {b['score']:.3f}")
            if "severity" in change["what"]:
                what.append(f"{a['severity']} -> {b['severity']}")
            lines.append(f"  ~ changed  {b['class']} {', '.join(what)}  (IoU {change['iou']:.2f})")
    s = diff.summary
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(s["decisions"].items())) or "none changed"
    alerts = s["alerts"]
    lines.append(f"summary: {s['scans_in_both']} scans in both runs ({s['only_in_a']} only in A, "
                 f"{s['only_in_b']} only in B), {s['scans_with_changes']} with changes; decisions: {decisions}; "
                 f"alerts: {alerts['new']} new, {alerts['removed']} removed, {alerts['changed']} changed, "
                 f"{alerts['unchanged']} unchanged; errors: {s['errors_a']} in A, {s['errors_b']} in B")
    return "\n".join(lines)
