"""How fast is the shipped contraband detector on one 1024 x 768 scan?

Target (product issue): at most 60 ms per 1024x768 scan on 2 CPU cores at
the shipped setting. Printed side by side in one run, medians over
``--repeats`` scans of a simulated dual-energy bag:

- detector image: calibrated scan to the RGB the network takes (rendered
  afresh each time: a scan caches its rendering, so the clock runs on a
  new ``CalibratedScan`` over the same arrays);
- network: resize, FCOS forward and box decoding (``detect_images``);
- both together (``detect(calibrated)``, again on a fresh scan object),
  the figure the target is about;
- with 1 thread, for the ratio.

On a machine with a GPU the network runs there (``--device`` to choose).

Run: ``make bench-detect`` (or ``.venv/bin/python benchmarks/bench_detect.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from nii.calibrate.correct import calibrate_with_scanner_profile
from nii.detect.inputs import detector_image
from nii.detect.registry import MODELS_ROOT, load_detector
from nii.simulate.engine import simulate_scan
from nii.simulate.scanner import load_scanner


def median_ms(function, repeats: int) -> float:
    function()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="contraband-fcos")
    parser.add_argument("--models", default=str(MODELS_ROOT))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", choices=["cpu", "cuda"])
    args = parser.parse_args()

    detector = load_detector(args.model, root=args.models, device=args.device)
    scan = simulate_scan(load_scanner("baggage-dual-kvp"), np.random.default_rng(0), threat_rate=1.0).scan
    calibrated = calibrate_with_scanner_profile(scan)
    image = detector_image(calibrated)
    print(f"model {detector.identity}, device {detector.device}, scan {scan.counts.shape} -> image {image.shape}")
    rows = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        rows.append((threads,
                     median_ms(lambda: detector_image(dataclasses.replace(calibrated)), args.repeats),
                     median_ms(lambda: detector.detect_images([image]), args.repeats),
                     median_ms(lambda: detector.detect(dataclasses.replace(calibrated)), args.repeats)))
    print(f"{'threads':>8} {'image ms':>9} {'network ms':>11} {'detect ms':>10}")
    for threads, image_ms, network_ms, total_ms in rows:
        print(f"{threads:>8} {image_ms:>9.1f} {network_ms:>11.1f} {total_ms:>10.1f}")
    print(f"2 threads against 1: {rows[1][3] / rows[0][3]:.2f}x faster; target 60 ms per scan on 2 cores: "
          f"{'met' if rows[0][3] <= 60 else 'NOT met'} ({rows[0][3]:.1f} ms median of {args.repeats})")


if __name__ == "__main__":
    main()
