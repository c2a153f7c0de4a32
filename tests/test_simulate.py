"""The data engine end to end: files, ground truth, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nii import read_scan
from nii.scan import ScanFormat, ScanKind
from nii.simulate.annotations import COCO_CATEGORIES, rle_decode, rle_encode
from nii.simulate.engine import simulate_dataset, simulate_scan, write_calibration_acquisitions
from nii.simulate.scanner import load_scanner
from tests.conftest import REPO


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bag_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bags")
    simulate_dataset(out, n=4, seed=11, threat_rate=1.0, workers=2, progress=False)
    return out


def test_same_seed_same_bytes_whatever_the_workers(bag_run: Path, tmp_path: Path) -> None:
    simulate_dataset(tmp_path, n=4, seed=11, threat_rate=1.0, workers=1, progress=False)
    assert digests(tmp_path) == digests(bag_run)
    other = tmp_path / "other"
    simulate_dataset(other, n=4, seed=12, threat_rate=1.0, workers=1, progress=False)
    assert digests(other)["scans/bag-000000.raw"] != digests(bag_run)["scans/bag-000000.raw"]


def test_coco_ground_truth_matches_the_scans(bag_run: Path) -> None:
    doc = json.loads((bag_run / "annotations.json").read_text())
    assert {c["id"] for c in doc["categories"]} == {c["id"] for c in COCO_CATEGORIES}
    assert len(doc["images"]) == 4 and doc["info"]["seed"] == 11
    assert all(any(a["image_id"] == im["id"] for a in doc["annotations"]) for im in doc["images"])  # rate 1
    for image in doc["images"]:
        scan = read_scan(bag_run / image["file_name"])
        assert scan.kind is ScanKind.DUAL_ENERGY and scan.source_format is ScanFormat.RAW
        assert scan.spatial_shape == (image["height"], image["width"])
        assert scan.scan_id == image["scan_id"] and scan.scanner_id == "baggage-dual-kvp"
        assert scan.energies_kv and scan.spacing_mm
    for ann in doc["annotations"]:
        mask = rle_decode(ann["segmentation"])
        x, y, w, h = ann["bbox"]
        assert mask.sum() == ann["area"] > 0
        rows, cols = np.nonzero(mask)
        assert y <= rows.min() and rows.max() < y + h and x <= cols.min() and cols.max() < x + w
        assert ann["mass_g"] > 0 and ann["dicos_category"] in {"EXPLOSIVE", "PROHIBITED_ITEM", "CONTRABAND", "ANOMALY"}


def test_threats_attenuate_where_the_ground_truth_says(bag_run: Path) -> None:
    doc = json.loads((bag_run / "annotations.json").read_text())
    ann = max(doc["annotations"], key=lambda a: a["area"])
    image = next(im for im in doc["images"] if im["id"] == ann["image_id"])
    high = read_scan(bag_run / image["file_name"]).high.astype(float)
    mask = rle_decode(ann["segmentation"])
    x, y, w, h = ann["bbox"]
    ring = np.zeros_like(mask)
    ring[max(0, y - 20):y + h + 20, max(0, x - 20):x + w + 20] = True
    ring &= ~mask
    assert high[mask].mean() < high[ring].mean()  # the threat absorbs more than its surroundings


def test_rle_round_trip() -> None:
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (5, 7), (40, 33)):
        mask = rng.random(shape) > 0.6
        np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask)
    full = np.ones((3, 4), bool)
    assert rle_encode(full)["counts"][0] == 0


def test_dicos_output_and_parcels(tmp_path: Path) -> None:
    simulate_dataset(tmp_path, n=2, seed=2, scene="parcel", fmt="dicos", workers=1, progress=False)
    scans = sorted((tmp_path / "scans").glob("*.dcm"))
    assert len(scans) == 2
    scan = read_scan(scans[0])
    assert scan.source_format is ScanFormat.DICOS and scan.kind is ScanKind.DUAL_ENERGY


def test_cargo_scans_carry_their_manifest(tmp_path: Path) -> None:
    simulate_dataset(tmp_path, scanner="cargo-linac", n=2, seed=4, scene="cargo", workers=1, progress=False)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    for image in doc["images"]:
        scan = read_scan(tmp_path / image["file_name"])
        assert scan.metadata["manifest"] == image["manifest_declared"]
        assert scan.metadata["container_number"] and "mismatch" in image["manifest_truth"]
        assert min(scan.energies_kv) >= 1000  # MeV linac


def test_ct_volumes_and_3d_boxes(tmp_path: Path) -> None:
    simulate_dataset(tmp_path, scanner="ct-baggage", n=2, seed=5, threat_rate=1.0, workers=1, progress=False)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert len(doc["volumes"]) == 2 and doc["objects"]
    volume = read_scan(tmp_path / doc["volumes"][0]["file_name"])
    assert volume.kind is ScanKind.CT_VOLUME and volume.source_format is ScanFormat.DICOS
    for obj in doc["objects"]:
        z0, y0, x0, z1, y1, x1 = obj["box_zyx"]
        assert 0 <= z0 < z1 <= volume.counts.shape[0] and 0 <= x0 < x1 <= volume.counts.shape[2]


def test_scene_and_scanner_must_agree() -> None:
    with pytest.raises(ValueError, match="cannot image"):
        simulate_scan(load_scanner("ct-baggage"), np.random.default_rng(0), scene="bag")
    with pytest.raises(ValueError, match="scene must be"):
        simulate_scan(load_scanner(), np.random.default_rng(0), scene="truck")


def test_calibration_acquisitions(tmp_path: Path) -> None:
    written = write_calibration_acquisitions(tmp_path, scanner="baggage-dual-kvp", seed=1)
    names = {p.stem for p in written}
    assert {"dark", "air", "wedge-pom", "wedge-aluminium", "wedge-lead"} <= names
    dark = read_scan(tmp_path / "dark.json").counts.astype(float)
    air = read_scan(tmp_path / "air.json").counts.astype(float)
    assert np.median(air) > 10 * np.median(dark)
    wedge = read_scan(tmp_path / "wedge-aluminium.json")
    steps = wedge.metadata["step_wedge"]
    lines = steps["lines_per_step"]
    means = [np.median(wedge.counts[1, i * lines:(i + 1) * lines]) for i in range(len(steps["thickness_cm"]))]
    assert all(a > b for a, b in zip(means, means[1:]))  # thicker aluminium, fewer photons
    ct = write_calibration_acquisitions(tmp_path / "ct", scanner="ct-baggage", seed=1)
    assert {p.name for p in ct} == {"air.dcm", "water.dcm"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nii.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_cli_simulate_and_its_errors(tmp_path: Path) -> None:
    result = run_cli("simulate", "--n", "2", "--seed", "3", "--out", str(tmp_path), "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "annotations.json").is_file() and len(list((tmp_path / "scans").glob("*.raw"))) == 2
    info = run_cli("info", str(tmp_path / "scans"))
    assert info.returncode == 0 and len(info.stdout.splitlines()) == 2
    bad = run_cli("simulate", "--scene", "ct", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "cannot image" in bad.stderr and "Traceback" not in bad.stderr
    unknown = run_cli("simulate", "--scanner", "no-such-scanner", "--out", str(tmp_path / "y"))
    assert unknown.returncode == 2 and "baggage-dual-kvp" in unknown.stderr
    rate = run_cli("simulate", "--threat-rate", "1.5", "--out", str(tmp_path / "z"))
    assert rate.returncode == 2 and "within 0 and 1" in rate.stderr
    again = run_cli("simulate", "--n", "1", "--seed", "4", "--out", str(tmp_path), "--quiet")
    assert again.returncode == 2 and "already holds files" in again.stderr  # the first set is kept whole
    assert len(list((tmp_path / "scans").glob("*.raw"))) == 2


def _same_within(a, b, *, rel: float) -> bool:
    """JSON values equal, floats to within ``rel`` of each other."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == pytest.approx(b, rel=rel)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_within(a[k], b[k], rel=rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_within(x, y, rel=rel) for x, y in zip(a, b))
    return a == b


def test_committed_samples_come_from_the_committed_command(tmp_path: Path) -> None:
    script = REPO / "sample_scans" / "make_samples.py"
    result = subprocess.run([sys.executable, str(script), "--samples", str(tmp_path / "s"), "--calibration",
                             str(tmp_path / "c")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    committed = REPO / "sample_scans"
    # Geometry and labels are exact. Sums of float pixels (a cargo's true mass)
    # and the pixel values themselves depend on the CPU's vector width, which
    # changes the order of additions: those are compared within 1e-6 and one
    # count.
    fresh_truth = json.loads((tmp_path / "s" / "ground_truth.json").read_text())
    assert _same_within(fresh_truth, json.loads((committed / "ground_truth.json").read_text()), rel=1e-6)
    assert (tmp_path / "s" / "README.md").read_text() == (committed / "README.md").read_text()
    for name in ("bag-threat.json", "container.json", "parcel-dicos-dx.dcm", "bag-dicos-ct.dcm"):
        fresh, kept = read_scan(tmp_path / "s" / name), read_scan(committed / name)
        assert np.abs(fresh.counts.astype(np.int64) - kept.counts.astype(np.int64)).max() <= 1, name
    for wedge in sorted((REPO / "calibration").rglob("*.json")):
        again = tmp_path / "c" / wedge.relative_to(REPO / "calibration")
        assert np.abs(read_scan(again).counts.astype(np.int64) - read_scan(wedge).counts.astype(np.int64)).max() <= 1
