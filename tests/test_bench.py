"""nii bench: the report's shape and the table it prints (timings are not asserted)."""

from __future__ import annotations

import pytest

from nii.bench import WORKLOADS, bench_table, run_bench


def _report(baggage_p95: float) -> dict:
    stages = {s: {"p50_ms": 1.0, "p95_ms": 2.0} for s in ("ingest", "calibrate", "detect", "fuse", "decide", "render")}
    row = {"what": "x", "scans": 3, "scans_per_s": 12.0, "p50_ms": 80.0, "p95_ms": baggage_p95, "peak_mb": 900.0,
           "stages": stages}
    return {"workloads": {"baggage": row, "ct": {**row, "p95_ms": 2500.0}},
            "fasterrcnn_resnet50_fpn": {"p50_ms": 3200.0, "scans": 5, "peak_mb": 800.0},
            "ratio_vs_fasterrcnn": 40.0}


def test_table_says_whether_each_target_is_met():
    table = bench_table(_report(baggage_p95=240.0))
    assert "baggage target (>= 10 scans/s, p95 <= 250 ms): met" in table
    assert "CT target (<= 2000 ms a volume): NOT met" in table
    assert "40.0x faster" in table and "calibrate 1/2" in table
    assert "baggage target (>= 10 scans/s, p95 <= 250 ms): NOT met" in bench_table(_report(baggage_p95=260.0))


def test_the_standard_workloads_and_a_clear_error_for_others():
    assert list(WORKLOADS) == ["baggage", "rendered", "cargo", "ct"]
    with pytest.raises(ValueError, match="unknown workload trucks; workloads: baggage, rendered, cargo, ct"):
        run_bench(["trucks"], progress=False)
