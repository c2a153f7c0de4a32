"""How fast does the data engine make dual-energy 1024x768 bags?

Target (product issue): at least 10 bags per second on 2 cores, so that
10,000 training scans take minutes. Prints the median of several runs for 1
and for 2 worker processes, measured side by side, plus where one scan's
time goes. Run: ``.venv/bin/python benchmarks/bench_simulate.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from nii.simulate import detector, scenes
from nii.simulate.engine import simulate_dataset
from nii.simulate.physics import nominal_densities
from nii.simulate.scanner import load_scanner, transmission


def stage_times(repeats: int) -> dict[str, float]:
    """Median milliseconds of each stage for one bag, on one core."""
    scanner = load_scanner("baggage-dual-kvp")
    densities = nominal_densities()
    times: dict[str, list[float]] = {"scene": [], "areal density": [], "transmission": [], "detector": []}
    for i in range(repeats):
        rng = np.random.default_rng([7, i])
        t0 = time.perf_counter()
        scene = scenes.bag_scene(rng, shape=(768, scanner.detector_elements), pixel_mm=scanner.pixel_mm)
        t1 = time.perf_counter()
        materials = sorted({o.material for o in scene.objects})
        areal = scenes.areal_density(scene, materials, densities)
        t2 = time.perf_counter()
        trans = transmission(areal, materials, scanner)
        t3 = time.perf_counter()
        detector.acquire(trans, scanner, rng)
        t4 = time.perf_counter()
        for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[name].append(dt * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def bags_per_second(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        simulate_dataset(out, n=n, seed=1, workers=workers, progress=False)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="bags per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per worker count")
    args = parser.parse_args()
    scanner = load_scanner("baggage-dual-kvp")
    print(f"dual-energy bags, 768 lines x {scanner.detector_elements} detector elements, raw + sidecar + COCO")
    for stage, ms in stage_times(10).items():
        print(f"  {stage:>14}: {ms:6.1f} ms median per bag (one core)")
    results = {}
    for _ in range(args.repeats):  # interleaved so both see the same machine load
        for workers in (1, 2):
            results.setdefault(workers, []).append(bags_per_second(args.n, workers))
    for workers, rates in results.items():
        print(f"  {workers} worker(s): {statistics.median(rates):5.1f} bags/s median of {len(rates)} runs "
              f"(runs: {', '.join(f'{r:.1f}' for r in rates)})")
    print(f"  speed-up 2 vs 1 workers: {statistics.median(results[2]) / statistics.median(results[1]):.2f}x")


if __name__ == "__main__":
    main()
