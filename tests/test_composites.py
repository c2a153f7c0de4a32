"""TIP composites as a data set: raw and rendered backgrounds, ground truth, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nii import read_scan, write_scan
from nii.scan import Scan, ScanKind
from nii.simulate.annotations import rle_decode
from nii.simulate.composites import tip_dataset
from nii.simulate.engine import simulate_dataset
from nii.simulate.tip import render_pseudo_colour
from tests.conftest import REPO, shared_data


@pytest.fixture(scope="module")
def clear_raw_bags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clear")
    simulate_dataset(out, n=2, seed=21, threat_rate=0.0, workers=1, progress=False)
    return out / "scans"


def test_simulated_threats_into_raw_bags(clear_raw_bags: Path, tmp_path: Path) -> None:
    tip_dataset(tmp_path, [clear_raw_bags], n=3, seed=1, progress=False)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert len(doc["images"]) == 3 and len(doc["annotations"]) == 3, doc["info"]["skipped"]
    for image, ann in zip(doc["images"], doc["annotations"]):
        composite = read_scan(tmp_path / image["file_name"])
        background = read_scan(image["background"])
        assert composite.kind is ScanKind.DUAL_ENERGY and composite.scan_id != background.scan_id
        mask = rle_decode(ann["segmentation"])
        changed = np.any(composite.counts != background.counts, axis=0)
        assert changed.any() and not (changed & ~mask).any()  # only the threat's pixels change
        # Adding attenuation only ever removes photons (up to re-drawn noise).
        assert composite.high[mask].mean() < background.high[mask].mean()


def test_same_seed_same_composites(clear_raw_bags: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    tip_dataset(a, [clear_raw_bags], n=2, seed=5, progress=False)
    tip_dataset(b, [clear_raw_bags], n=2, seed=5, progress=False)
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    for name in ("tip-000000.raw", "tip-000001.raw"):
        assert (a / "scans" / name).read_bytes() == (b / "scans" / name).read_bytes()


def test_backgrounds_tip_cannot_project_into_are_refused_with_the_reason(clear_raw_bags: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="background comes from baggage-dual-kvp, not from .* cargo-linac"):
        tip_dataset(tmp_path / "cargo", [clear_raw_bags], n=1, seed=1, scanner="cargo-linac", progress=False)
    volume = simulate_dataset(tmp_path / "ct", scanner="ct-baggage", n=1, seed=2, workers=1, progress=False)
    with pytest.raises(ValueError, match="takes 2D projection backgrounds, not CT volumes"):
        tip_dataset(tmp_path / "out", [volume.parent / "scans"], n=1, seed=1, progress=False)


def test_rendered_background(tmp_path: Path) -> None:
    rows, cols = np.mgrid[:300, :400]
    inside = (abs(rows - 150) < 120) & (abs(cols - 200) < 170)
    attenuation = np.where(inside, 0.6, 0.0).astype(np.float32)
    material = np.zeros_like(attenuation)  # an orange, organic bag
    bag = Scan(render_pseudo_colour(attenuation, material), kind=ScanKind.PSEUDO_COLOUR)
    write_scan(bag, tmp_path / "bag.png")
    tip_dataset(tmp_path / "out", [tmp_path / "bag.png"], n=2, seed=3, progress=False)
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(doc["annotations"]) == 2
    composite = read_scan(tmp_path / "out" / doc["images"][0]["file_name"])
    mask = rle_decode(doc["annotations"][0]["segmentation"])
    before = bag.counts.astype(int).sum(-1)
    after = composite.counts.astype(int).sum(-1)
    assert (after[mask] <= before[mask]).all() and (after[mask] < before[mask]).any()
    np.testing.assert_array_equal(composite.counts[~mask], bag.counts[~mask])


def test_gdxray_into_sixray_negatives(tmp_path: Path) -> None:
    negatives = shared_data("sixray-negatives")
    threats = shared_data("gdxray-threats")
    backgrounds = sorted(negatives.glob("N*.jpg"))[:3]
    tip_dataset(tmp_path, backgrounds, signatures=threats, n=2, seed=2, attenuation_scale=0.6, progress=False)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert len(doc["annotations"]) == 2
    assert {a["source_class"] for a in doc["annotations"]} <= {"handgun", "shuriken", "razor_blade"}


def test_cli_tip_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nii.cli", "tip", str(tmp_path / "empty"), "--out",
                             str(tmp_path / "o"), "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
