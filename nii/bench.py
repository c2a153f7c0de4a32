"""``nii bench``: the pipeline's speed on the standard workloads.

Each workload runs the shipped pipeline (``configs/pipeline.toml``) end to
end on simulated scans of the standard size, in a fresh process of its own
so that its peak memory (the process's maximum resident set) is its own:

``baggage``
    raw dual-energy bag, 1024 detector elements x 768 lines;
``rendered``
    archived pseudo-colour RGB, 1000 x 1000;
``cargo``
    dual-energy container, 2000 detector elements x 6000 lines (the shipped
    cargo scanner has 640; the benchmark simulates a 2000-element variant
    and builds its profile from its own calibration acquisitions);
``ct``
    CT volume, 512 x 512 x 300.

The same run times torchvision's ``fasterrcnn_resnet50_fpn`` (random
weights: speed does not depend on them) on the baggage scan's 1024 x 768
image, the detector a model developer reaches for first, and prints how
many times faster the whole pipeline is than that one network.

Targets on 2 CPU cores (product issue): baggage at least 10 scans/s and p95
at most 250 ms end to end; CT at most 2 s a volume.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WORKLOADS", "run_bench", "bench_table"]

#: name -> (what, repeats)
WORKLOADS: dict[str, tuple[str, int]] = {
    "baggage": ("dual-energy bag 1024x768", 20),
    "rendered": ("pseudo-colour RGB 1000x1000", 20),
    "cargo": ("dual-energy container 2000x6000", 3),
    "ct": ("CT volume 512x512x300", 3),
}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _cargo_variant(folder: Path) -> Path:
    """A 2000-element version of the cargo scanner, with its own profile in ``folder``."""
    from nii.calibrate.profile import build_profile, save_profile
    from nii.simulate.engine import write_calibration_acquisitions

    text = (Path(__file__).parent / "simulate" / "scanners" / "cargo-linac.toml").read_text()
    for old, new in (("elements = 640", "elements = 2000"), ("pixel_mm = 5.0", "pixel_mm = 1.6"),
                     ("belt_mm_per_line = 5.0", "belt_mm_per_line = 1.6")):
        if old not in text:
            raise RuntimeError(f"cargo-linac.toml no longer has {old!r}; update the benchmark")
        text = text.replace(old, new)
    scanner = folder / "cargo-linac-2000.toml"
    scanner.write_text(text)
    acquisitions = folder / "acquisitions"
    write_calibration_acquisitions(acquisitions, scanner=scanner, seed=1)
    save_profile(build_profile(acquisitions, scanner_id="cargo-linac"), folder / "cargo-linac" / "profile.npz")
    return scanner


def _workload_scans(name: str, folder: Path, n: int) -> list[Any]:
    """``n`` different scans of one workload (simulated, fixed seeds)."""
    import cv2

    from nii.scan import Scan
    from nii.simulate.engine import simulate_scan
    from nii.simulate.scanner import load_scanner

    rng = np.random.default_rng(2026)
    if name == "baggage":
        return [simulate_scan(load_scanner("baggage-dual-kvp"), rng, threat_rate=0.5, index=i,
                              shape=(768, 1024)).scan for i in range(n)]
    if name == "rendered":
        from nii.calibrate.render import render
        from nii.calibrate.correct import calibrate_with_scanner_profile

        scans = []
        for i in range(n):
            raw = simulate_scan(load_scanner("baggage-dual-kvp"), rng, threat_rate=0.5, index=i, shape=(768, 1024)).scan
            rgb = cv2.resize(render(calibrate_with_scanner_profile(raw), tool="colour"), (1000, 1000))
            scans.append(Scan(rgb, "pseudo_colour", scan_id=f"bench-rendered-{i}"))
        return scans
    if name == "cargo":
        scanner = load_scanner(_cargo_variant(folder))
        return [simulate_scan(scanner, rng, scene="cargo", index=i, shape=(6000, 2000)).scan for i in range(n)]
    if name == "ct":
        return [simulate_scan(load_scanner("ct-baggage"), rng, scene="ct", threat_rate=1.0, index=i,
                              shape=(300, 512, 512)).scan for i in range(n)]
    raise ValueError(f"unknown workload {name!r}; workloads: {', '.join(WORKLOADS)}")


def _run_workload(name: str, repeats: int, config: str | None) -> dict[str, Any]:
    """One workload in this (fresh) process: stage medians/p95, scans/s, peak MB."""
    from nii.pipeline import STAGES, Pipeline, load_pipeline_config

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Simulated once, before the clock: a few distinct scans cycled.
        scans = _workload_scans(name, folder, min(repeats, 4))
        pipeline_config = load_pipeline_config(config)
        if name == "cargo":  # the 2000-element scanner's profile sits beside the shipped ones
            for shipped in pipeline_config.calibration_root.iterdir():
                if shipped.is_dir() and shipped.name != "cargo-linac":
                    (folder / shipped.name).symlink_to(shipped)
            pipeline_config = dataclasses.replace(pipeline_config, calibration_root=folder)
        pipeline = Pipeline(pipeline_config)
        pipeline.analyze(scans[0])  # warm-up: profile tables, first kernels
        totals, stages = [], {stage: [] for stage in STAGES}
        for i in range(repeats):
            started = time.perf_counter()
            result = pipeline.analyze(scans[i % len(scans)])
            totals.append(1000.0 * (time.perf_counter() - started))
            for stage in STAGES:
                stages[stage].append(result.timings_ms.get(stage, 0.0))
    return {
        "what": WORKLOADS[name][0],
        "scans": repeats,
        "scans_per_s": round(1000.0 / statistics.mean(totals), 2),
        "p50_ms": round(statistics.median(totals), 1),
        "p95_ms": round(_percentile(totals, 95), 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "stages": {stage: {"p50_ms": round(statistics.median(v), 2), "p95_ms": round(_percentile(v, 95), 2)}
                   for stage, v in stages.items()},
    }


def _time_fasterrcnn(repeats: int) -> dict[str, Any]:
    """torchvision's fasterrcnn_resnet50_fpn on one 1024 x 768 image."""
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=768, max_size=1024).eval()
    image = torch.rand(3, 768, 1024)
    times = []
    with torch.inference_mode():
        model([image])  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            model([image])
            times.append(1000.0 * (time.perf_counter() - started))
    return {"p50_ms": round(statistics.median(times), 1), "scans": repeats,
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}


def _in_fresh_process(function: Any, *args: Any) -> Any:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()


def run_bench(workloads: list[str] | None = None, *, config: str | None = None, repeats: int | None = None,
              fasterrcnn_repeats: int = 5, progress: bool = True) -> dict[str, Any]:
    """Run the workloads (all by default) and the Faster R-CNN comparison.

    Returns
    -------
    dict
        ``{"workloads": {name: {"scans_per_s", "p50_ms", "p95_ms",
        "peak_mb", "stages": {stage: {"p50_ms", "p95_ms"}}}},
        "fasterrcnn_resnet50_fpn": {...}, "ratio_vs_fasterrcnn": float}``.
    """
    from tqdm import tqdm

    names = workloads or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {', '.join(unknown)}; workloads: {', '.join(WORKLOADS)}")
    report: dict[str, Any] = {"workloads": {}}
    for name in tqdm(names, desc="bench", unit="workload", disable=not progress):
        report["workloads"][name] = _in_fresh_process(_run_workload, name, repeats or WORKLOADS[name][1], config)
    report["fasterrcnn_resnet50_fpn"] = _in_fresh_process(_time_fasterrcnn, fasterrcnn_repeats)
    if "baggage" in report["workloads"]:
        report["ratio_vs_fasterrcnn"] = round(
            report["fasterrcnn_resnet50_fpn"]["p50_ms"] / report["workloads"]["baggage"]["p50_ms"], 2)
    return report


def bench_table(report: dict[str, Any]) -> str:
    """The report as the table ``nii bench`` prints."""
    lines = [f"{'workload':<10} {'scans/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'peak MB':>8}   stage p50/p95 ms"]
    for name, row in report["workloads"].items():
        stages = "  ".join(f"{k} {v['p50_ms']:.0f}/{v['p95_ms']:.0f}" for k, v in row["stages"].items())
        lines.append(f"{name:<10} {row['scans_per_s']:>8.2f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
                     f"{row['peak_mb']:>8.0f}   {stages}")
    frcnn = report["fasterrcnn_resnet50_fpn"]
    lines.append(f"fasterrcnn_resnet50_fpn at 1024x768: {frcnn['p50_ms']:.0f} ms per image (median of {frcnn['scans']})")
    if "ratio_vs_fasterrcnn" in report:
        lines.append(f"the whole baggage pipeline is {report['ratio_vs_fasterrcnn']:.1f}x faster than that one network")
    baggage, ct = report["workloads"].get("baggage"), report["workloads"].get("ct")
    if baggage:
        met = baggage["scans_per_s"] >= 10 and baggage["p95_ms"] <= 250
        lines.append(f"baggage target (>= 10 scans/s, p95 <= 250 ms): {'met' if met else 'NOT met'}")
    if ct:
        lines.append(f"CT target (<= 2000 ms a volume): {'met' if ct['p95_ms'] <= 2000 else 'NOT met'}")
    return "\n".join(lines)
