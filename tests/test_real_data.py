"""Real baggage X-rays from ../shared/data, read as a user's archive would be.

Skipped where the folder is absent: the data never enters the project.
"""

from __future__ import annotations

import itertools

from nii import read_scan
from nii.scan import ScanFormat, ScanKind
from tests.conftest import shared_data


def test_sixray_jpegs_are_pseudo_colour() -> None:
    folder = shared_data("sixray-subset") / "JPEGImages"
    for path in itertools.islice(sorted(folder.glob("*.jpg")), 20):
        scan = read_scan(path)
        assert scan.kind is ScanKind.PSEUDO_COLOUR and scan.source_format is ScanFormat.JPEG
        assert scan.counts.dtype.name == "uint8" and 150 <= min(scan.spatial_shape)


def test_gdxray_threat_images_are_grey_single_energy() -> None:
    folder = shared_data("gdxray-threats")
    paths = list(itertools.islice(sorted(folder.rglob("*.jpg")), 10))
    assert paths
    for path in paths:
        scan = read_scan(path)
        assert scan.kind is ScanKind.SINGLE_ENERGY and scan.counts.ndim == 2
