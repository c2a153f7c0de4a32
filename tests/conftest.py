"""Shared fixtures: small synthetic scans of every kind."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from nii.scan import Scan, ScanKind

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# dciodvfy (Debian's dicom3tools) checks DICOM files against the standard's
# IOD tables, VRs and data dictionary: an independent judge of what we write.
requires_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                       reason="dciodvfy (Debian dicom3tools) is not installed")
# Its messages start the line ("Error - ...") or follow the tag they are
# about ("(0x0002,0x0004)  ?  - Warning - ..."); this finds errors in both.
_DCIODVFY_ERROR = re.compile(r"(^|- )Error - ")


def make_scan(kind: ScanKind, *, dtype: str = "uint16", seed: int = 0) -> Scan:
    """A small random scan of ``kind`` with every descriptive field set."""
    rng = np.random.default_rng(seed)
    shapes = {
        ScanKind.SINGLE_ENERGY: (12, 17),
        ScanKind.DUAL_ENERGY: (2, 12, 17),
        ScanKind.PSEUDO_COLOUR: (12, 17, 3),
        ScanKind.CT_VOLUME: (5, 12, 17),
    }
    if kind is ScanKind.PSEUDO_COLOUR:
        dtype = "uint8"
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    counts = (
        rng.integers(info.min, info.max, shapes[kind], endpoint=True, dtype=dtype)
        if info
        else rng.random(shapes[kind]).astype(dtype)
    )
    return Scan(
        counts,
        kind=kind,
        spacing_mm=(0.8, 1.25) if kind.spatial_ndim == 2 else (2.5, 0.8, 1.25),
        energies_kv=(80.0, 160.0) if kind is ScanKind.DUAL_ENERGY else (),
        scanner_id="test-scanner-7",
        acquired_at=datetime(2026, 3, 4, 5, 6, 7),
        metadata={"bag_tag": "BT123", "manifest": {"goods": "books", "gross_kg": 12.5}},
    )


@pytest.fixture(params=list(ScanKind), ids=lambda k: k.value)
def any_scan(request: pytest.FixtureRequest) -> Scan:
    return make_scan(request.param)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (it is never part of the project)")
    return path


def sample_truth_box(sample: str, category: str) -> tuple[float, float, float, float]:
    """The (x0, y0, x1, y1) box of a 2D sample scan's threat, from sample_scans/ground_truth.json."""
    truth = json.loads((REPO / "sample_scans" / "ground_truth.json").read_text())
    r0, c0, r1, c1 = next(t["bbox_rc"] for t in truth[sample] if t["category"] == category)
    return (c0, r0, c1, r1)


def dciodvfy(path: Path) -> tuple[str, list[str]]:
    """Run dciodvfy on a file: its whole report, and the lines that report an error."""
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    output = report.stdout + report.stderr
    return output, [line for line in output.splitlines() if _DCIODVFY_ERROR.search(line)]
