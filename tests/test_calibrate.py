"""Calibration profiles and corrections, checked against simulated truth."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from nii import read_scan
from nii.calibrate.calibrated import UNCALIBRATED, MaterialClass
from nii.calibrate.correct import Calibrator, calibrate_scan
from nii.calibrate.profile import (
    ProfileError,
    build_profile,
    check_profile,
    default_profile_path,
    find_profile,
    load_profile,
    next_version,
    save_profile,
)
from nii.scan import Scan, ScanKind
from nii.simulate import detector
from nii.simulate.scanner import load_scanner, transmission
from tests.conftest import REPO

ACQUISITIONS = REPO / "calibration"


@pytest.fixture(scope="module")
def baggage_profile():
    return build_profile(ACQUISITIONS / "baggage-dual-kvp")


@pytest.fixture(scope="module")
def baggage():
    return load_scanner("baggage-dual-kvp")


def slab_scan(scanner, areal: np.ndarray, materials: list[str], seed: int) -> tuple[Scan, np.ndarray]:
    """A scan of a known areal-density map, and its true transmission."""
    truth = transmission(areal, materials, scanner)
    counts = detector.acquire(truth, scanner, np.random.default_rng(seed))
    scan = Scan(counts, kind=ScanKind.DUAL_ENERGY, scanner_id=scanner.name,
                spacing_mm=(scanner.belt_mm_per_line, scanner.pixel_mm))
    return scan, truth


def test_profile_quality_meets_the_targets(baggage_profile, baggage) -> None:
    report = check_profile(baggage_profile)
    assert report["residual_nonuniformity"] <= 0.005
    assert report["zeff_mae"] is not None and report["zeff_mae"] <= 0.5
    state = detector.detector_state(baggage)
    assert report["dead_pixels"] == int((state.dead | state.hot).sum())
    assert report["profile_id"].startswith("baggage-dual-kvp/v1/")


def test_profile_round_trips_and_refuses_tampering(baggage_profile, tmp_path: Path) -> None:
    path = save_profile(baggage_profile, tmp_path / "profile.npz")
    again = load_profile(path)
    assert again.profile_id == baggage_profile.profile_id
    np.testing.assert_array_equal(again.air, baggage_profile.air)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "tampered.npz").write_bytes(bytes(data))
    with pytest.raises(ProfileError):
        load_profile(tmp_path / "tampered.npz")
    with pytest.raises(ProfileError, match="no calibration profile"):
        load_profile(tmp_path / "missing.npz")


def test_flat_field_of_a_fresh_air_scan(baggage_profile, baggage) -> None:
    air = detector.air_frames(baggage, np.random.default_rng(99), lines=64)
    scan = Scan(air, kind=ScanKind.DUAL_ENERGY, scanner_id=baggage.name, spacing_mm=(0.8, 0.8))
    calibrated = Calibrator(baggage_profile)(scan)
    transmission_per_element = np.exp(-calibrated.attenuation.astype(np.float64)).mean(axis=1)
    rms = np.sqrt(np.mean((transmission_per_element - 1.0) ** 2))
    assert rms <= 0.005  # residual non-uniformity, bad elements interpolated
    assert not calibrated.opaque.any()


def test_attenuation_zeff_and_opacity_against_truth(baggage_profile, baggage) -> None:
    areal = np.zeros((3, 96, 1024), np.float32)
    areal[0, :, 100:400] = 5.0  # 5 cm of water
    areal[1, :, 500:700] = 2.7 * 0.5  # 5 mm aluminium
    areal[2, :, 800:900] = 11.35 * 3.0  # 3 cm of lead: opaque
    scan, truth = slab_scan(baggage, areal, ["water", "aluminium", "lead"], seed=5)
    calibrated = calibrate_scan(scan, baggage_profile, workers=2)
    assert calibrated.profile_id == baggage_profile.profile_id and calibrated.calibrated
    expected = -np.log(truth[1, :, 150:350].mean())
    assert calibrated.high[:, 150:350].mean() == pytest.approx(expected, rel=0.01)
    assert calibrated.opaque[:, 820:880].all() and not calibrated.opaque[:, 150:350].any()
    classes = calibrated.material_class
    assert (classes[:, 150:350] == MaterialClass.ORGANIC).mean() > 0.95
    assert (classes[:, 520:680] == MaterialClass.MIXED).mean() > 0.9
    assert (classes[:, 820:880] == MaterialClass.OPAQUE).all()
    assert calibrated.areal_density_g_cm2[:, 150:350].mean() == pytest.approx(5.0, rel=0.1)
    assert np.isfinite(calibrated.attenuation).all()


def test_bad_elements_are_interpolated(baggage_profile, baggage) -> None:
    scan, _ = slab_scan(baggage, np.zeros((1, 32, 1024), np.float32), ["water"], seed=8)
    calibrated = Calibrator(baggage_profile)(scan)
    bad = np.flatnonzero(baggage_profile.bad_pixels[1])
    assert bad.size > 0
    assert np.abs(calibrated.attenuation[1][:, bad]).max() < 0.05  # air stays air across dead/hot elements


def test_one_and_two_threads_agree(baggage_profile) -> None:
    scan = read_scan(REPO / "sample_scans" / "bag-threat.json")
    one, two = Calibrator(baggage_profile)(scan), Calibrator(baggage_profile, workers=2)(scan)
    np.testing.assert_array_equal(one.attenuation, two.attenuation)
    np.testing.assert_array_equal(one.material_class, two.material_class)


def test_profiles_that_do_not_fit_are_refused(baggage_profile, baggage) -> None:
    scan, _ = slab_scan(baggage, np.zeros((1, 8, 1024), np.float32), ["water"], seed=1)
    with pytest.raises(ProfileError, match="scanner"):
        Calibrator(baggage_profile)(scan.replace(scanner_id="lane-7"))
    narrow = Scan(np.asarray(scan.counts)[:, :, :512], kind=ScanKind.DUAL_ENERGY, scanner_id=baggage.name)
    with pytest.raises(ProfileError, match="detector elements"):
        Calibrator(baggage_profile)(narrow)
    with pytest.raises(ProfileError, match="not 'cargo-linac'"):
        build_profile(ACQUISITIONS / "baggage-dual-kvp", scanner_id="cargo-linac")


@pytest.mark.parametrize("plan, message", [
    (None, "needs metadata \"step_wedge\""),
    ([1], "needs metadata \"step_wedge\""),
    ({"thickness_cm": "abc", "lines_per_step": 8}, "thickness_cm must be a list of numbers"),
    ({"thickness_cm": [None] * 6, "lines_per_step": 8}, "thickness_cm must be a list of numbers"),
    ({"thickness_cm": [0.25, 0.5, 1, 2, 4, 8], "lines_per_step": "x"}, "lines_per_step must be a whole number"),
    ({"thickness_cm": [0.25, 0.5, 1, 2, 4, 8], "lines_per_step": 2.5}, "lines_per_step must be a whole number"),
    ({"thickness_cm": [1, 2], "lines_per_step": 8}, "lists 2 steps of 8 lines, but the acquisition has 48 lines"),
])
def test_a_malformed_step_wedge_sidecar_is_refused_naming_the_file(tmp_path: Path, plan, message) -> None:
    folder = tmp_path / "acquisitions"
    folder.mkdir()
    for source in (ACQUISITIONS / "baggage-dual-kvp").iterdir():
        if source.suffix in (".json", ".raw"):
            (folder / source.name).write_bytes(source.read_bytes())
    sidecar = folder / "wedge-aluminium.json"
    fields = json.loads(sidecar.read_text())
    fields["metadata"]["step_wedge"] = plan
    sidecar.write_text(json.dumps(fields))
    with pytest.raises(ProfileError, match="wedge-aluminium.json: .*" + message):
        build_profile(folder)


def test_uncalibrated_path_is_labelled_and_gives_no_zeff(baggage) -> None:
    areal = np.zeros((1, 200, 1024), np.float32)
    areal[0, 50:150, 200:600] = 4.0
    scan, truth = slab_scan(baggage, areal, ["water"], seed=3)
    calibrated = calibrate_scan(scan, None)
    assert calibrated.profile_id == UNCALIBRATED and not calibrated.calibrated
    assert calibrated.zeff is None and calibrated.material_class is None
    assert abs(float(np.median(calibrated.high[:40]))) < 0.02  # the belt reads as air
    assert calibrated.high[60:140, 250:550].mean() == pytest.approx(-np.log(truth[1, 60, 300]), rel=0.1)


def test_aspect_is_corrected_to_square_pixels() -> None:
    profile = build_profile(ACQUISITIONS / "parcel-sandwich")
    scanner = load_scanner("parcel-sandwich")
    scan, _ = slab_scan(scanner, np.zeros((1, 240, scanner.detector_elements), np.float32), ["water"], seed=2)
    calibrated = Calibrator(profile)(scan)
    assert calibrated.spacing_mm == (scanner.pixel_mm, scanner.pixel_mm)
    assert calibrated.attenuation.shape[1] == round(240 * scanner.belt_mm_per_line / scanner.pixel_mm)


def test_ct_hounsfield_units_from_air_and_water() -> None:
    profile = build_profile(ACQUISITIONS / "ct-baggage")
    water = read_scan(ACQUISITIONS / "ct-baggage" / "water.dcm")
    hu = Calibrator(profile)(water).attenuation
    _, rows, cols = hu.shape
    assert abs(float(np.median(hu[:, rows // 2 - 4:rows // 2 + 4, cols // 2 - 4:cols // 2 + 4]))) < 10
    assert float(np.median(hu[:, :3, :3])) == pytest.approx(-1000, abs=15)
    assert check_profile(profile)["kind"] == "ct"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nii.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_cli_build_check_and_render(tmp_path: Path) -> None:
    built = run_cli("calibrate", "build", "--scanner", "baggage-dual-kvp", "--out", str(tmp_path / "p.npz"))
    assert built.returncode == 0, built.stderr
    checked = run_cli("calibrate", "check", str(tmp_path / "p.npz"), "--json")
    report = json.loads(checked.stdout)
    assert {"residual_nonuniformity", "dead_pixels", "zeff_mae"} <= report.keys()
    assert report["residual_nonuniformity"] <= 0.005 and report["zeff_mae"] <= 0.5
    human = run_cli("calibrate", "check", str(tmp_path / "p.npz"))
    assert "residual_nonuniformity" in human.stdout and human.returncode == 0
    wrong = run_cli("calibrate", "build", "--scanner", "cargo-linac", "--acquisitions",
                    str(ACQUISITIONS / "baggage-dual-kvp"), "--out", str(tmp_path / "x.npz"))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a profile")
    bad = run_cli("calibrate", "check", str(broken))
    assert bad.returncode == 2 and "not a readable calibration profile" in bad.stderr
    # build replaces a profile, never another file (and leaves no partial file behind)
    over = run_cli("calibrate", "build", "--scanner", "baggage-dual-kvp", "--out", str(broken))
    assert over.returncode == 2 and "is not a calibration profile" in over.stderr
    assert broken.read_bytes() == b"not a profile"
    again = run_cli("calibrate", "build", "--scanner", "baggage-dual-kvp", "--out", str(tmp_path / "p.npz"))
    assert again.returncode == 0 and not list(tmp_path.glob(".*")), "no temporary file is left behind"
    assert "baggage-dual-kvp/v2/" in again.stdout, "a rebuild is the next version"
    rendered = run_cli("render", str(REPO / "sample_scans" / "bag-threat.json"), "--out", str(tmp_path / "r"),
                       "--profile", str(tmp_path / "p.npz"))
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "r" / "bag-threat-json-colour.png").is_file() and "baggage-dual-kvp/v2/" in rendered.stdout


def test_a_rebuild_keeps_the_profile_it_replaces(tmp_path: Path) -> None:
    root = tmp_path / "calibration"
    path = default_profile_path("baggage-dual-kvp", root)
    assert next_version(path) == 1
    acquisitions = ACQUISITIONS / "baggage-dual-kvp"
    first = build_profile(acquisitions, version=1, created_at=datetime(2026, 1, 5, tzinfo=timezone.utc))
    save_profile(first, path)
    save_profile(first, path)  # the same profile again changes nothing and keeps nothing
    assert not (path.parent / "superseded").exists()
    # Rebuilt the same day under the same version: refused, since results would name two profiles alike.
    same_version = build_profile(acquisitions, version=1, created_at=datetime(2026, 1, 6, tzinfo=timezone.utc))
    with pytest.raises(ProfileError, match=r"another build of version 1; .* new version \(--version 2\)"):
        save_profile(same_version, path)
    assert load_profile(path).profile_id == first.profile_id
    assert next_version(path) == 2
    second = build_profile(acquisitions, version=2, created_at=datetime(2026, 1, 6, tzinfo=timezone.utc))
    save_profile(second, path)
    assert load_profile(path).profile_id == second.profile_id
    older = build_profile(acquisitions, version=1, created_at=datetime(2026, 1, 7, tzinfo=timezone.utc))
    with pytest.raises(ProfileError, match=r"a newer profile than version 1; .* \(--version 3\)"):
        save_profile(older, path)  # a v1 now would be followed by a second, different v2
    kept = find_profile(first.profile_id, root)
    assert kept is not None and kept.parent.name == "superseded"
    # Every lane's service reads them, whoever runs it.
    assert {kept.stat().st_mode & 0o777, path.stat().st_mode & 0o777} == {0o644}
    assert load_profile(kept).profile_id == first.profile_id
    assert find_profile(second.profile_id, root) == path
    assert find_profile("baggage-dual-kvp/v9/000000000000", root) is None
    assert find_profile(first.profile_id, tmp_path / "elsewhere") is None


def test_mev_cargo_material_discrimination() -> None:
    # At 4/6 MV R falls with Z (pair production), the reverse of keV beams.
    profile = build_profile(ACQUISITIONS / "cargo-linac")
    assert not profile.material.rising and check_profile(profile)["zeff_mae"] <= 0.5
    scanner = load_scanner("cargo-linac")
    areal = np.zeros((2, 64, scanner.detector_elements), np.float32)
    areal[0, :, 50:250] = 40.0  # 40 cm of water
    areal[1, :, 350:550] = 7.87 * 10.0  # 10 cm of iron
    scan, _ = slab_scan(scanner, areal, ["water", "iron"], seed=4)
    calibrated = Calibrator(profile)(scan)
    assert np.median(calibrated.zeff[:, 80:220]) == pytest.approx(7.4, abs=1.0)
    assert np.median(calibrated.zeff[:, 380:520]) == pytest.approx(26.0, abs=2.0)
    assert (calibrated.material_class[:, 380:520] == MaterialClass.METAL).mean() > 0.8


def test_classify_zeff_codes_at_the_boundaries() -> None:
    from nii.calibrate.calibrated import MaterialClass, classify_zeff

    zeff = np.array([[6.0, 9.99, 10.0, 17.0, 17.01, 29.0]] * 2, np.float32)
    opaque = np.zeros(zeff.shape, bool)
    opaque[1, ::2] = True
    o, m, x, t = (int(c) for c in (MaterialClass.ORGANIC, MaterialClass.MIXED, MaterialClass.METAL,
                                    MaterialClass.OPAQUE))
    expected = np.array([[o, o, m, m, x, x], [t, o, t, m, t, x]], np.uint8)
    np.testing.assert_array_equal(classify_zeff(zeff, opaque), expected)
    # Any shape, not only images: the same codes.
    np.testing.assert_array_equal(classify_zeff(zeff.ravel(), opaque.ravel()), expected.ravel())
    np.testing.assert_array_equal(classify_zeff(zeff[None], opaque[None]), expected[None])
