"""Make the sample scans: one small synthetic bag in every format nii reads.

Run from the repository root: ``.venv/bin/python sample_scans/make_samples.py``.
The scenes are toy phantoms (Beer-Lambert over rectangles with textbook
attenuation values), there to exercise the readers, not the physics; the
data engine's simulator makes realistic scans.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from nii import Scan, ScanKind, write_scan
from nii.ingest.raw import write_raw

OUT = Path(__file__).resolve().parent
RNG = np.random.default_rng(20261122)
AIR_COUNTS = 60000.0

# (row slice, col slice, thickness cm, mu_low, mu_high) in 1/cm: clothing-like
# organic, a water bottle, a steel bar. Low energy attenuates more, and more
# so for high Z: that gap is what dual-energy material discrimination reads.
OBJECTS = [
    (slice(20, 90), slice(30, 200), 6.0, 0.25, 0.18),
    (slice(100, 140), slice(40, 110), 7.0, 0.27, 0.19),
    (slice(60, 80), slice(140, 220), 0.8, 4.5, 1.6),
]


def path_lengths(rows: int = 160, cols: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals of mu (low, high) through the phantom, per pixel."""
    low = np.full((rows, cols), 0.02)  # the bag shell
    high = np.full((rows, cols), 0.015)
    for r, c, cm, mu_low, mu_high in OBJECTS:
        low[r, c] += mu_low * cm
        high[r, c] += mu_high * cm
    return low, high


def transmitted_counts(line_integral: np.ndarray) -> np.ndarray:
    """Poisson-noisy detector counts for one energy channel."""
    expected = AIR_COUNTS * np.exp(-line_integral)
    return np.clip(RNG.poisson(expected), 0, 65535).astype(np.uint16)


def pseudo_colour(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """A console-style rendering: hue from the low/high ratio, white for air."""
    ratio = low / np.maximum(high, 1e-6)
    transmission = np.exp(-high)[..., None]
    organic = np.array([230.0, 150.0, 60.0])  # orange
    metal = np.array([60.0, 110.0, 230.0])  # blue
    weight = np.clip((ratio - 1.4) / 1.0, 0, 1)[..., None]
    hue = (1 - weight) * organic + weight * metal
    air = transmission**4  # nearly clear paths fade to the white background
    rgb = (1 - air) * hue * (0.3 + 0.7 * transmission) + air * 255
    return np.clip(rgb, 0, 255).astype(np.uint8)


def ct_volume(slices: int = 16, size: int = 64) -> np.ndarray:
    """A cylinder of water with a denser core, stored as HU + 1024."""
    z, y, x = np.mgrid[:slices, :size, :size]
    radius = np.hypot(y - size / 2, x - size / 2)
    hu = np.where(radius < size * 0.4, 0, -1000) + np.where(radius < size * 0.1, 800, 0)
    hu = hu + RNG.normal(0, 5, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def main() -> None:
    low_mu, high_mu = path_lengths()
    dual_counts = np.stack([transmitted_counts(low_mu), transmitted_counts(high_mu)])
    when = datetime(2026, 11, 22, 9, 30, 0)
    dual = Scan(
        dual_counts,
        kind=ScanKind.DUAL_ENERGY,
        spacing_mm=(1.0, 1.0),
        energies_kv=(80.0, 160.0),
        scanner_id="sample-linescan-1",
        acquired_at=when,
        metadata={"bag_tag": "0123456789", "lane": "3"},
        bits_stored=16,
    )
    write_scan(dual, OUT / "bag-dual-energy.dcm")
    write_scan(dual, OUT / "bag-dual-energy.png")
    write_raw(dual, OUT / "bag-dual-energy.raw", layout="side_by_side")
    write_scan(dual.replace(kind=ScanKind.SINGLE_ENERGY, counts=dual_counts[1], energies_kv=(160.0,)), OUT / "bag-single-energy.tiff")

    rgb = Scan(pseudo_colour(low_mu, high_mu), kind=ScanKind.PSEUDO_COLOUR, metadata={"source": "console export"})
    write_scan(rgb, OUT / "bag-console.jpg")
    write_scan(rgb, OUT / "bag-console.png")

    ct = Scan(
        ct_volume(),
        kind=ScanKind.CT_VOLUME,
        spacing_mm=(2.0, 1.5, 1.5),
        rescale=(1.0, -1024.0),
        scanner_id="sample-ct-1",
        acquired_at=when,
        metadata={"bag_tag": "0123456790"},
    )
    write_scan(ct, OUT / "bag-ct-volume.dcm")
    (OUT / "bag-ct-slices").mkdir(exist_ok=True)
    write_scan(ct.replace(scan_id="", counts=ct.counts[:8]), OUT / "bag-ct-slices", format="dicom_series")

    cargo = Scan(
        (dual_counts // 4).astype(np.uint16),
        kind=ScanKind.DUAL_ENERGY,
        spacing_mm=(5.0, 5.0),
        energies_kv=(4000.0, 6000.0),
        scanner_id="sample-cargo-1",
        metadata={"container_number": "MSCU1234565", "manifest": {"goods": "furniture", "gross_kg": 8200}},
    )
    write_scan(cargo, OUT / "container-dual-energy.npz")


if __name__ == "__main__":
    main()
