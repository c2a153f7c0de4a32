"""Batch re-analysis throughput: the local engine against the single-scan pipeline, and Ray against local.

Targets (issue #9), on this machine:

- the local engine with W workers analyses at least 90 % of the single-scan
  pipeline's rate (what ``nii bench baggage`` measures) times W;
- the ray engine's overhead against the local engine is at most 20 %.

Method, in one run, side by side:

1. **Archive.** ``--distinct`` simulated dual-energy bags of the benchmark's
   standard size (1024 x 768, ``nii bench baggage``), written as NPZ files
   and copied up to ``--scans`` files, each copy with its own scan id.
2. **Single-scan rate.** ``nii bench``'s baggage workload in a fresh
   process, as ``nii bench baggage`` runs it (torch on every core), and
   again with torch on one worker's share of the cores. Then W of those
   one-worker benchmarks at once, in W processes: their summed rate is
   what W workers with no engine at all get from this machine (its
   ceiling: cores that share caches and memory bandwidth do not scale
   perfectly), so the engine's own cost shows apart from the machine's.
3. **Batch rate.** ``nii batch run`` (the library call, manifest commits
   and all) over the archive with each engine. Each scan's record is timestamped as it comes back; the
   steady rate is the slope through them, leaving out the first two per
   worker, so that starting the workers and loading the models (once per
   run, however long the archive) is reported apart: a months-long
   archive sees the steady rate.
4. **Rounds.** Steps 2 and 3 make one round; ``--repeats`` rounds run one
   after the other, so a busy moment on this shared machine hurts a
   round's reference and its engines alike.
5. **Figures.** Median rates, and each ratio as the median of the rounds'
   own ratios; each target met or not.

Run: ``.venv/bin/python benchmarks/bench_batch.py`` (the ray rows need
``pip install 'ray[data]'``; they are left out without it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nii.batch import run_batch
from nii.batch.engines import available_cores
from nii.ingest import write_scan


def single_scan_rate(repeats: int, threads: int | None) -> dict[str, Any]:
    """``nii bench baggage`` in this (fresh) process, torch limited to ``threads`` when given."""
    from nii.bench import _run_workload  # the very measurement `nii bench baggage` prints

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return _run_workload("baggage", repeats, None)


def in_fresh_process(function: Any, *args: Any) -> Any:
    return in_fresh_processes(1, function, *args)[0]


def in_fresh_processes(count: int, function: Any, *args: Any) -> list[Any]:
    """``function(*args)`` in ``count`` fresh processes at once."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        futures = [pool.submit(function, *args) for _ in range(count)]
        return [future.result() for future in futures]


def write_archive(folder: Path, *, scans: int, distinct: int) -> Path:
    """A folder of ``scans`` baggage NPZ files, ``distinct`` different bags among them."""
    from nii.bench import _workload_scans

    bags = _workload_scans("baggage", folder, distinct)
    archive = folder / "archive"
    archive.mkdir()
    for i in range(scans):
        write_scan(bags[i % distinct].replace(scan_id=f"bench-batch-{i:05d}"), archive / f"bag-{i:05d}.npz")
    return archive


class _Timestamped:
    """An engine whose records are timestamped as they come back."""

    def __init__(self, engine: Any, arrivals: list[float]) -> None:
        self.engine, self.arrivals = engine, arrivals

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def records(self, todo: Any) -> Any:
        for record in self.engine.records(todo):
            self.arrivals.append(time.perf_counter())
            yield record


def timed_run(archive: Path, engine: str, workers: int, results: Path) -> dict[str, float]:
    """One ``run_batch``: wall time, start-up (to the first record) and the steady rate."""
    import nii.batch.run

    arrivals: list[float] = []
    make_engine = nii.batch.run.make_engine
    nii.batch.run.make_engine = lambda *a, **k: _Timestamped(make_engine(*a, **k), arrivals)
    shutil.rmtree(results, ignore_errors=True)
    try:
        started = time.perf_counter()
        summary = run_batch([archive], results, engine=engine, workers=workers, progress=False)
        wall = time.perf_counter() - started
    finally:
        nii.batch.run.make_engine = make_engine
    if summary.errors:
        raise RuntimeError(f"{engine}: {summary.errors} scans failed: {summary.reasons}")
    # Records come back in bursts (a Ray batch at a time): the rate is the
    # slope of a line through all arrivals but the first two per worker.
    skip = 2 * workers
    slope = np.polyfit(np.arange(skip, len(arrivals)), np.asarray(arrivals[skip:]), 1)[0]
    return {"wall_s": wall, "start_s": arrivals[0] - started, "rate": 1.0 / slope}


def main(args: argparse.Namespace) -> None:
    cores = available_cores()
    workers = args.workers or cores
    engines = ["local"]
    try:
        import ray.data  # noqa: F401

        engines.append("ray")
    except ImportError:
        print("ray is not installed: the ray rows are left out")
    if args.scans < 4 * workers:
        raise SystemExit(f"--scans must be at least {4 * workers} for a steady rate with {workers} workers")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        archive = write_archive(folder, scans=args.scans, distinct=args.distinct)
        print(f"archive: {args.scans} baggage scans 1024x768 (NPZ, {args.distinct} distinct); "
              f"{workers} workers on {cores} cores; medians of {args.repeats} rounds")

        share = max(1, cores // workers)
        runs: dict[str, list[dict[str, float]]] = {engine: [] for engine in engines}
        singles, shares, ceilings = [], [], []
        # Each round measures every reference and every engine, so a busy
        # moment on this shared machine hurts them alike; the ratios are
        # taken per round, then their median.
        for _ in range(args.repeats):
            singles.append(in_fresh_process(single_scan_rate, args.single_repeats, None)["scans_per_s"])
            shares.append(in_fresh_process(single_scan_rate, args.single_repeats, share)["scans_per_s"])
            # Longer runs, so that the W timed phases overlap despite uneven start-ups.
            side_by_side = in_fresh_processes(workers, single_scan_rate, 3 * args.single_repeats, share)
            ceilings.append(sum(r["scans_per_s"] for r in side_by_side))
            for engine in engines:
                runs[engine].append(timed_run(archive, engine, workers, folder / "results"))
    rows = {engine: {key: statistics.median(r[key] for r in done) for key in done[0]}
            for engine, done in runs.items()}
    local_rates = [r["rate"] for r in runs["local"]]

    def ratio(references: list[float], per_worker: int = workers) -> float:
        return statistics.median(rate / (reference * per_worker) for rate, reference in zip(local_rates, references))

    single, single_share, ceiling = (statistics.median(v) for v in (singles, shares, ceilings))

    print(f"\nsingle-scan pipeline (nii bench baggage), torch on {cores} cores: {single:.2f} scans/s")
    print(f"single-scan pipeline, torch on {share} core(s), one worker's share: {single_share:.2f} scans/s")
    print(f"{workers} of those at once, in {workers} processes: {ceiling:.2f} scans/s together "
          f"(the machine's ceiling for {workers} workers: {ceiling / single_share:.2f}x one)")
    print(f"\n{'engine':<7} {'wall s':>7} {'start-up s':>10} {'steady scans/s':>14} {'whole run scans/s':>17}")
    for engine, row in rows.items():
        print(f"{engine:<7} {row['wall_s']:>7.1f} {row['start_s']:>10.1f} {row['rate']:>14.2f} "
              f"{args.scans / row['wall_s']:>17.2f}")

    print(f"\nratios: medians of the {args.repeats} rounds' own ratios")
    for label, references in (("nii bench baggage", singles), ("one worker's share", shares)):
        value = ratio(references)
        print(f"local steady rate vs {label} x {workers} workers: {value:.0%} "
              f"(target >= 90 %: {'met' if value >= 0.9 else 'NOT met'})")
    print(f"local steady rate vs the machine's ceiling ({workers} benchmarks at once): {ratio(ceilings, 1):.0%}")
    if "ray" in rows:
        overhead = statistics.median(a["rate"] / b["rate"] for a, b in zip(runs["local"], runs["ray"])) - 1.0
        print(f"ray overhead vs local, steady rate: {overhead:+.0%} (target <= 20 %: "
              f"{'met' if overhead <= 0.2 else 'NOT met'}); start-up {rows['ray']['start_s']:.1f} s "
              f"vs {rows['local']['start_s']:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=60, help="scans in the archive (default %(default)s)")
    parser.add_argument("--distinct", type=int, default=8, help="distinct simulated bags (default %(default)s)")
    parser.add_argument("--workers", type=int, help="workers for both engines (default: the cores)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each timing every reference and engine once (default %(default)s)")
    parser.add_argument("--single-repeats", type=int, default=20,
                        help="scans timed for the single-scan rate (default %(default)s, as nii bench)")
    main(parser.parse_args())
