"""How fast is calibration plus the operator's colour rendering?

Target (product issue): a 2x1024x768 uint16 dual-energy scan calibrated
(offset/gain, bad elements, attenuation, opaque, Zeff) and rendered to RGB
in at most 15 ms median on 2 cores. Printed side by side in one run:

- nii's path, as the pipeline runs it (``Calibrator`` with 1 and 2 threads,
  then ``render(calibrated)``, the operator's colour tool);
- a straightforward float64 NumPy implementation of the same maths;
- the memory-bandwidth floor: bytes in plus bytes out over the measured
  copy bandwidth of this machine;
- the pipeline's setting (1 thread) again while another process keeps the
  other core busy, since these machines are shared with noisy neighbours.

Run: ``.venv/bin/python benchmarks/bench_calibrate.py`` (builds the profile
from ``calibration/baggage-dual-kvp`` if needed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from nii.calibrate import material as materials
from nii.calibrate.correct import Calibrator
from nii.calibrate.palette import material_coordinate, render_pseudo_colour
from nii.calibrate.profile import build_profile
from nii.calibrate.render import render
from nii.simulate.engine import simulate_scan
from nii.simulate.scanner import load_scanner

ROOT = Path(__file__).resolve().parents[1]


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def straightforward(counts: np.ndarray, profile) -> np.ndarray:
    """The same steps written plainly in float64, as a reference."""
    dark, air = profile.dark.astype(np.float64)[:, None, :], profile.air.astype(np.float64)[:, None, :]
    normalised = (counts.astype(np.float64) - dark) / np.maximum(air - dark, 1.0)
    for c in range(2):  # bad elements: mean of the neighbours
        for col in np.flatnonzero(profile.bad_pixels[c]):
            left, right = max(col - 1, 0), min(col + 1, counts.shape[2] - 1)
            normalised[c][:, col] = 0.5 * (normalised[c][:, left] + normalised[c][:, right])
    attenuation = -np.log(np.clip(normalised, profile.min_transmission.astype(np.float64)[:, None, None], 1.0))
    zeff, _ = materials.estimate_zeff(attenuation[0], attenuation[1], profile.material)
    coordinate = material_coordinate(zeff.astype(np.float64))
    return render_pseudo_colour(attenuation[1], coordinate)


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


@contextmanager
def other_core_busy():
    """A second process spinning on the CPU for the duration (a noisy neighbour)."""
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.2)  # let it reach full speed
        yield
    finally:
        stop.set()
        spinner.join()


def copy_bandwidth_gb_s() -> float:
    source = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, well beyond the caches
    target = np.empty_like(source)
    seconds = median_ms(lambda: np.copyto(target, source), 9) / 1000
    return 2 * source.nbytes / seconds / 1e9  # a copy reads and writes every byte


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed runs per variant")
    args = parser.parse_args()
    profile = build_profile(ROOT / "calibration" / "baggage-dual-kvp")
    scanner = load_scanner("baggage-dual-kvp")
    scan = simulate_scan(scanner, np.random.default_rng(3), shape=(768, 1024)).scan
    counts = np.asarray(scan.counts)
    print(f"scan {counts.shape} {counts.dtype}, profile {profile.profile_id}")

    def ours(workers: int):
        calibrate = Calibrator(profile, workers=workers)

        def run() -> np.ndarray:
            # The colour table gather holds the GIL, so rendering runs once, whole.
            return render(calibrate(scan))

        return run

    results = {}
    for _ in range(3):  # interleave variants so they share the machine's load
        for name, function in (("nii, 1 thread", ours(1)), ("nii, 2 threads", ours(2))):
            results.setdefault(name, []).append(median_ms(function, args.repeats))
        # OpenCV's own pool competes with the calibrator's row threads on 2 cores.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        results.setdefault("nii, 2 threads, OpenCV 1", []).append(median_ms(ours(2), args.repeats))
        cv2.setNumThreads(threads)
        with other_core_busy():
            results.setdefault("nii, 1 thread, other core busy", []).append(median_ms(ours(1), args.repeats))
        results.setdefault("float64 NumPy", []).append(median_ms(lambda: straightforward(counts, profile), 3))
    bandwidth = copy_bandwidth_gb_s()
    bytes_moved = counts.nbytes + counts.shape[1] * counts.shape[2] * 3  # uint16 in, RGB out
    floor_ms = bytes_moved / (bandwidth * 1e9) * 1000
    reference = statistics.median(results["float64 NumPy"])
    for name, values in results.items():
        ms = statistics.median(values)
        print(f"  {name:>30}: {ms:7.2f} ms median  ({reference / ms:5.1f}x vs float64 NumPy, "
              f"{ms / floor_ms:6.1f}x the bandwidth floor)")
    print(f"  copy bandwidth {bandwidth:.1f} GB/s; floor for {bytes_moved / 1e6:.1f} MB in+out: {floor_ms:.3f} ms")
    # The pipeline calibrates with one thread per scan (Calibrator's default):
    # parallelism comes from scans in flight, not from splitting one scan.
    pipeline_ms = statistics.median(results["nii, 1 thread"])
    verdict = "met" if pipeline_ms <= 15 else "NOT met"
    print(f"  target: <= 15 ms median on 2 cores; the pipeline's setting (1 thread): {pipeline_ms:.2f} ms, {verdict}")


if __name__ == "__main__":
    main()
