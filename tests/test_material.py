"""Dual-energy material discrimination: step-wedge calibration, Zeff, areal density, lookup table.

The calibration is fitted to simulated step-wedge acquisitions of the
baggage-dual-kvp scanner, then judged on *fresh* acquisitions (another
seed) of uniform slabs, including materials that are not in the wedge set.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import nii
from nii.calibrate.calibrated import MaterialClass, classify_zeff
from nii.calibrate.material import (
    MaterialCalibration,
    estimate_zeff,
    fit_material_calibration,
    lookup_zeff,
    material_lookup,
    wedge_attenuation,
)
from nii.simulate import detector, physics
from nii.simulate.engine import STEP_WEDGES, simulate_scan
from nii.simulate.scanner import load_scanner, transmission

REPO = Path(__file__).resolve().parents[1]
SCANNER = "baggage-dual-kvp"
FRAME_LINES = 128
WEDGE_LINES = 16  # per step
SLAB_LINES = 32  # per slab
# Zeff 6.1 (nylon) to 29.3 (brass); nylon, glass, PVC, titanium, nickel and
# brass are not wedge materials. Polyethylene (5.4) lies below the lowest
# wedge material (PMMA, 6.5) and would only measure the clamp.
TARGET_MATERIALS = ("nylon", "pmma", "pom", "water", "glass", "aluminium", "pvc", "titanium", "iron", "nickel",
                    "copper", "brass")
TARGET_THICKNESS_CM = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0)


@dataclasses.dataclass(frozen=True)
class Frames:
    """Flat-field references of one scanner: mean dark and air (C, cols), bad elements."""

    dark: np.ndarray
    air: np.ndarray
    bad: np.ndarray


@pytest.fixture(scope="module")
def scanner():
    return load_scanner(SCANNER)


@pytest.fixture(scope="module")
def frames(scanner) -> Frames:
    rng = np.random.default_rng(2024)
    dark = detector.dark_frames(scanner, rng, lines=FRAME_LINES).mean(axis=1, dtype=np.float64)
    air = detector.air_frames(scanner, rng, lines=FRAME_LINES).mean(axis=1, dtype=np.float64)
    gain = air - dark
    # Dead elements read their offset, hot ones full scale: no gain either way.
    bad = gain < 0.5 * np.median(gain, axis=1, keepdims=True)
    return Frames(dark, air, bad)


@pytest.fixture(scope="module")
def wedge_steps(scanner, frames) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2025)
    steps = {}
    for material, thickness in STEP_WEDGES["line"].items():
        counts = detector.step_wedge(scanner, material, thickness, rng, lines_per_step=WEDGE_LINES)
        steps[material] = (np.asarray(thickness, dtype=np.float64), wedge_attenuation(
            counts, dark=frames.dark, air=frames.air, bad=frames.bad, thickness_cm=thickness,
            lines_per_step=WEDGE_LINES))
    return steps


@pytest.fixture(scope="module")
def calibration(wedge_steps) -> MaterialCalibration:
    return fit_material_calibration(wedge_steps)


def slab_attenuation(scanner, frames: Frames, material: str, thickness_cm, seed: int) -> np.ndarray:
    """Per-pixel (A_low, A_high) of fresh uniform slabs: float32 (2, slabs, SLAB_LINES, good cols)."""
    rng = np.random.default_rng(seed)
    counts = detector.step_wedge(scanner, material, thickness_cm, rng, lines_per_step=SLAB_LINES)
    good = ~frames.bad.any(axis=0)
    t = (counts[:, :, good] - frames.dark[:, None, good]) / (frames.air - frames.dark)[:, None, good]
    # Near-opaque pixels read noise around zero: floor them as a flat-field would.
    a = -np.log(np.maximum(t, 1e-6))
    return a.astype(np.float32).reshape(2, len(thickness_cm), SLAB_LINES, -1)


@pytest.fixture(scope="module")
def slabs(scanner, frames) -> dict[str, np.ndarray]:
    return {material: slab_attenuation(scanner, frames, material, TARGET_THICKNESS_CM, seed=3000 + i)
            for i, material in enumerate(TARGET_MATERIALS)}


def slab_zeff_errors(scanner, calibration, slabs) -> tuple[dict, dict]:
    """Signed Zeff error of each (material, thickness) slab, the median over its pixels; and the
    slabs skipped, with the reason."""
    errors, skipped = {}, {}
    for material, a in slabs.items():
        density = physics.MATERIALS[material].density_g_cm3
        areal = (np.asarray(TARGET_THICKNESS_CM) * density)[None].astype(np.float32)
        t_high = transmission(areal, [material], scanner)[1]
        zeff, _ = estimate_zeff(a[0], a[1], calibration)
        for i, thickness in enumerate(TARGET_THICKNESS_CM):
            a_high = float(np.median(a[1, i]))
            if t_high[i] < 1e-3:
                skipped[(material, thickness)] = f"opaque: T_high = {t_high[i]:.1e}"
            elif a_high > calibration.a_high_max:
                skipped[(material, thickness)] = f"A_high {a_high:.2f} beyond a_high_max {calibration.a_high_max:.2f}"
            else:
                errors[(material, thickness)] = float(np.median(zeff[i])) - physics.effective_z(material)
    return errors, skipped


# -- the product target ------------------------------------------------------------


def test_zeff_mean_absolute_error_on_fresh_slabs_is_at_most_half_a_unit(scanner, calibration, slabs):
    errors, skipped = slab_zeff_errors(scanner, calibration, slabs)
    mae = np.mean(np.abs(list(errors.values())))
    assert mae <= 0.5, f"Zeff MAE {mae:.3f}: " + ", ".join(f"{m} {t:g} cm {e:+.2f}" for (m, t), e in errors.items())
    # Every material counts, thin to thick, from nylon (6.1) to brass (29.3).
    assert {m for m, _ in errors} == set(TARGET_MATERIALS)
    assert len(errors) >= 40
    # Only dense metals and the thickest glass / aluminium are skipped; the
    # worst single slab stays within 1.5.
    assert all(m in {"titanium", "iron", "nickel", "copper", "brass", "glass", "aluminium"} for m, _ in skipped)
    assert max(abs(e) for e in errors.values()) <= 1.5


def test_zeff_is_unbiased_on_the_wedge_materials_themselves(scanner, calibration, slabs):
    errors, _ = slab_zeff_errors(scanner, calibration, slabs)
    for material in ("pmma", "pom", "water", "aluminium"):
        worst = max(abs(e) for (m, _), e in errors.items() if m == material)
        assert worst <= 0.1, material


def test_zeff_between_the_wedge_curves_without_noise(scanner, calibration):
    # Glass, PVC, titanium and nickel lie between the wedge materials' curves:
    # this is the interpolation across curves alone, noise aside.
    errors = []
    for material, thickness in (("glass", (0.5, 1, 2, 3)), ("pvc", (0.5, 1, 2, 3)), ("titanium", (0.5, 1, 2, 3)),
                                ("nickel", (0.1, 0.2, 0.5))):
        areal = (np.asarray(thickness) * physics.MATERIALS[material].density_g_cm3)[None].astype(np.float32)
        a = -np.log(transmission(areal, [material], scanner).astype(np.float64))
        zeff, _ = estimate_zeff(a[0], a[1], calibration)
        errors.extend(zeff - physics.effective_z(material))
    assert np.max(np.abs(errors)) <= 0.6
    assert np.mean(np.abs(errors)) <= 0.3


# -- calibration ---------------------------------------------------------------------


def test_ratio_falls_with_thickness_for_aluminium(scanner, frames):
    # Beam hardening: the thicker the slab, the harder the beam, the lower R.
    rng = np.random.default_rng(41)
    thickness = (1.0, 2.0, 5.0)
    counts = detector.step_wedge(scanner, "aluminium", thickness, rng, lines_per_step=SLAB_LINES)
    a = wedge_attenuation(counts, dark=frames.dark, air=frames.air, bad=frames.bad, thickness_cm=thickness,
                          lines_per_step=SLAB_LINES)
    ratio = a[:, 0] / a[:, 1]
    assert np.all(np.diff(ratio) < -0.05)
    assert ratio[0] == pytest.approx(2.3, abs=0.25)
    assert ratio[2] == pytest.approx(1.8, abs=0.25)


def test_wedge_attenuation_matches_the_physics(scanner, wedge_steps):
    for material, (thickness, attenuation) in wedge_steps.items():
        areal = (thickness * physics.MATERIALS[material].density_g_cm3)[None].astype(np.float32)
        truth = -np.log(transmission(areal, [material], scanner).astype(np.float64)).T
        measurable = truth < 9.0  # T >= 1e-4: the rest is noise-dominated
        np.testing.assert_allclose(attenuation[measurable], truth[measurable], rtol=0.01, atol=0.005,
                                   err_msg=material)


def test_calibration_leaves_lead_out_and_orders_by_zeff(calibration):
    assert "lead" not in calibration.materials
    assert calibration.materials == ("pmma", "pom", "water", "aluminium", "iron", "copper")
    np.testing.assert_allclose(calibration.zeff, [physics.effective_z(m) for m in calibration.materials])
    assert np.all(np.diff(calibration.ratio, axis=0) > 0)
    # The thickest usable step: 8 cm of aluminium (A_high 3.9, T_low 1e-3).
    assert calibration.a_high_max == pytest.approx(3.9, abs=0.05)


def test_areal_density_of_water_and_aluminium(scanner, frames, calibration):
    for material, thickness, expected in (("water", 4.0, 4.0), ("aluminium", 0.5, 1.35)):
        a = slab_attenuation(scanner, frames, material, (thickness,), seed=42)[:, 0]
        _, areal = estimate_zeff(a[0], a[1], calibration)
        assert float(np.median(areal)) == pytest.approx(expected, rel=0.1), material


def test_classes_of_water_aluminium_and_iron(scanner, frames, calibration):
    expected = {"water": MaterialClass.ORGANIC, "aluminium": MaterialClass.MIXED, "iron": MaterialClass.METAL}
    for material, thickness in (("water", 4.0), ("aluminium", 2.0), ("iron", 0.5)):
        a = slab_attenuation(scanner, frames, material, (thickness,), seed=43)[:, 0]
        zeff, _ = estimate_zeff(a[0], a[1], calibration)
        classes = classify_zeff(zeff, np.zeros(zeff.shape, dtype=bool))
        assert np.mean(classes == expected[material]) >= 0.95, material
        median = classify_zeff(np.median(zeff, keepdims=True), np.zeros(1, dtype=bool))
        assert median[0] == expected[material]


def test_fit_from_the_committed_acquisitions():
    folder = REPO / "calibration" / SCANNER
    dark = nii.read_scan(folder / "dark.raw").counts.mean(axis=1, dtype=np.float64)
    air = nii.read_scan(folder / "air.raw").counts.mean(axis=1, dtype=np.float64)
    bad = (air - dark) < 0.5 * np.median(air - dark, axis=1, keepdims=True)
    steps = {}
    for path in sorted(folder.glob("wedge-*.raw")):
        scan = nii.read_scan(path)
        wedge = scan.metadata["step_wedge"]
        steps[scan.metadata["material"]] = (np.asarray(wedge["thickness_cm"]), wedge_attenuation(
            scan.counts, dark=dark, air=air, bad=bad, thickness_cm=wedge["thickness_cm"],
            lines_per_step=wedge["lines_per_step"]))
    assert "lead" in steps
    calibration = fit_material_calibration(steps)
    assert "lead" not in calibration.materials
    aluminium = calibration.materials.index("aluminium")
    ratio_at = np.interp(np.log([0.534, 2.04]), np.log(calibration.a_high), calibration.ratio[aluminium])
    np.testing.assert_allclose(ratio_at, [2.35, 1.91], atol=0.03)  # 1 cm and 4 cm of aluminium


def test_fit_refuses_a_material_with_fewer_than_two_usable_steps(wedge_steps):
    steps = dict(wedge_steps)
    thickness, attenuation = steps["iron"]
    steps["iron"] = (thickness[:1], attenuation[:1])
    with pytest.raises(ValueError, match="iron"):
        fit_material_calibration(steps)
    # Steps present but all opaque (or too thin) count as missing too.
    steps["iron"] = (thickness, np.full_like(attenuation, 20.0))
    with pytest.raises(ValueError, match="iron"):
        fit_material_calibration(steps)
    steps["iron"] = (thickness, np.full_like(attenuation, 0.001))
    with pytest.raises(ValueError, match="iron"):
        fit_material_calibration(steps)


def test_fit_refuses_malformed_input(wedge_steps):
    with pytest.raises(ValueError, match="not a material"):
        fit_material_calibration({**wedge_steps, "unobtainium": wedge_steps["iron"]})
    thickness, attenuation = wedge_steps["water"]
    with pytest.raises(ValueError, match="water"):
        fit_material_calibration({**wedge_steps, "water": (thickness, attenuation[:, :1])})
    with pytest.raises(ValueError, match="at least two"):
        fit_material_calibration({"water": wedge_steps["water"], "lead": wedge_steps["lead"]})
    with pytest.raises(ValueError, match="grid_size"):
        fit_material_calibration(wedge_steps, grid_size=1)


def test_wedge_attenuation_refuses_mismatched_lines(frames):
    counts = np.zeros((2, 30, frames.dark.shape[1]), dtype=np.uint16)
    with pytest.raises(ValueError, match="lines_per_step"):
        wedge_attenuation(counts, dark=frames.dark, air=frames.air, bad=frames.bad, thickness_cm=(1, 2),
                          lines_per_step=16)
    with pytest.raises(ValueError, match="dark"):
        wedge_attenuation(counts, dark=frames.dark[:, :10], air=frames.air, thickness_cm=(1, 2), lines_per_step=15)


# -- storage -------------------------------------------------------------------------


def test_arrays_round_trip_through_npz(calibration, tmp_path):
    path = tmp_path / "profile.npz"
    np.savez(path, **calibration.to_arrays())
    with np.load(path, allow_pickle=False) as stored:
        again = MaterialCalibration.from_arrays(dict(stored))
    assert again.materials == calibration.materials
    assert again.a_high_max == calibration.a_high_max
    for name in ("zeff", "a_high", "ratio", "areal_density"):
        np.testing.assert_array_equal(getattr(again, name), getattr(calibration, name))
    a_high = np.linspace(0.0, 5.0, 101)
    a_low = 2.0 * a_high
    for x, y in zip(estimate_zeff(a_low, a_high, again), estimate_zeff(a_low, a_high, calibration)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("key, value, match", [
    ("ratio", lambda c: c.ratio[:, :-1], "ratio must have shape"),
    ("areal_density", lambda c: c.areal_density[:-1], "areal_density must have shape"),
    ("zeff", lambda c: c.zeff[:-1], "materials and zeff"),
    ("a_high", lambda c: c.a_high[:1], "a_high"),
    ("a_high_max", lambda c: np.array([1.0, 2.0]), "a_high_max"),
    # Monotone either way is allowed (keV rises, MeV falls); a zigzag is not.
    ("ratio", lambda c: c.ratio[[0, 2, 1] + list(range(3, len(c.ratio)))], "ratio must be"),
    ("materials", lambda c: np.array([[1.0]]), "materials"),
])
def test_from_arrays_refuses_bad_shapes(calibration, key, value, match):
    arrays = calibration.to_arrays()
    arrays[key] = value(calibration)
    with pytest.raises(ValueError, match=match):
        MaterialCalibration.from_arrays(arrays)


def test_from_arrays_refuses_a_missing_key(calibration):
    arrays = calibration.to_arrays()
    del arrays["areal_density"]
    with pytest.raises(ValueError, match="areal_density"):
        MaterialCalibration.from_arrays(arrays)


# -- per-pixel semantics and the lookup table ------------------------------------------


def test_air_and_odd_pixels(calibration):
    lut = material_lookup(calibration)
    a_high = np.array([0.0, -0.01, 0.005, np.inf, np.nan, 1.0, 1.0, 1.0, 200.0], dtype=np.float32)
    a_low = np.array([0.0, 0.02, 0.02, np.inf, 1.0, np.nan, -1.0, 100.0, 300.0], dtype=np.float32)
    for zeff, areal in (estimate_zeff(a_low, a_high, calibration), lookup_zeff(a_low, a_high, lut)):
        assert zeff.dtype == np.float32 and areal.dtype == np.float32
        assert np.all(np.isfinite(zeff)) and np.all(np.isfinite(areal))
        assert np.all(zeff >= calibration.zeff[0] - 1e-4) and np.all(zeff <= calibration.zeff[-1] + 1e-4)
        # Air: the organic side, nothing there.
        np.testing.assert_allclose(zeff[:3], calibration.zeff[0], rtol=1e-6)
        np.testing.assert_array_equal(areal[:3], 0.0)
        # R below the lowest curve and above the highest: clamped.
        assert zeff[6] == pytest.approx(calibration.zeff[0], rel=1e-6)
        assert zeff[7] == pytest.approx(calibration.zeff[-1], rel=1e-6)


def test_estimate_keeps_the_shape(calibration):
    a_high = np.full((3, 4, 5), 0.7)
    zeff, areal = estimate_zeff(1.45 * a_high, a_high, calibration)
    assert zeff.shape == areal.shape == (3, 4, 5)
    with pytest.raises(ValueError, match="same shape"):
        estimate_zeff(a_high[0], a_high, calibration)
    empty = np.zeros((0, 7), dtype=np.float32)
    lut = material_lookup(calibration)
    for zeff, areal in (estimate_zeff(empty, empty, calibration), lookup_zeff(empty, empty, lut)):
        assert zeff.shape == areal.shape == (0, 7)
    zeff, areal = lookup_zeff(1.45 * a_high, a_high, lut)
    assert zeff.shape == areal.shape == (3, 4, 5)


def test_lookup_fills_the_given_maps(calibration):
    """A calibrator passes its own maps: they are filled, in place, as without ``out``."""
    lut = material_lookup(calibration)
    a_high = np.random.default_rng(0).uniform(0.01, 3.0, (70, 1000)).astype(np.float32)  # > one 64k block
    a_low = a_high * np.float32(1.6)
    expected = lookup_zeff(a_low, a_high, lut)
    out = (np.full(a_high.shape, np.nan, np.float32), np.full(a_high.shape, np.nan, np.float32))
    returned = lookup_zeff(a_low, a_high, lut, out=out)
    assert returned[0] is out[0] and returned[1] is out[1]
    np.testing.assert_array_equal(out[0], expected[0])
    np.testing.assert_array_equal(out[1], expected[1])
    with pytest.raises(ValueError, match="out must be"):
        lookup_zeff(a_low, a_high, lut, out=(out[0], out[1][:, ::2]))
    with pytest.raises(ValueError, match="out must be"):
        lookup_zeff(a_low, a_high, lut, out=(out[0], out[1].astype(np.float64)))


def test_lookup_agrees_with_estimate_on_realistic_pixels(scanner, frames, calibration, slabs):
    lut = material_lookup(calibration)
    bag = simulate_scan(scanner, np.random.default_rng(7), scene="bag").scan.counts
    good = ~frames.bad.any(axis=0)
    t = (bag[:, :, good] - frames.dark[:, None, good]) / (frames.air - frames.dark)[:, None, good]
    images = [(-np.log(np.maximum(t, 1e-6))).astype(np.float32)]
    images += [a.reshape(2, -1) for a in slabs.values()]
    for a in images:
        zeff, areal = estimate_zeff(a[0], a[1], calibration)
        zeff_lut, areal_lut = lookup_zeff(a[0], a[1], lut)
        assert np.max(np.abs(zeff_lut - zeff)) <= 0.15
        assert np.percentile(np.abs(zeff_lut - zeff), 99) <= 0.05
        inside = (a[1] >= 0.05) & (a[1] <= calibration.a_high_max)
        np.testing.assert_allclose(areal_lut[inside], areal[inside], rtol=0.03)


def test_lookup_refuses_bad_options(calibration):
    with pytest.raises(ValueError, match="n_r"):
        material_lookup(calibration, n_r=1)
    with pytest.raises(ValueError, match="a_max"):
        material_lookup(calibration, a_max=0.001)
    with pytest.raises(ValueError, match="same shape"):
        lookup_zeff(np.zeros(3), np.zeros(4), material_lookup(calibration))
