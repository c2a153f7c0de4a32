"""Threat image projection: physics of insertion, signatures, renderings."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from nii.scan import Scan, ScanKind
from nii.simulate.scanner import load_scanner
from nii.simulate.scene import SceneObject
from nii.simulate.tip import (
    SIXRAY_PALETTE,
    ThreatSignature,
    choose_location,
    estimate_pseudo_colour,
    load_gdxray_signatures,
    material_coordinate,
    project_into_counts,
    project_into_rendering,
    render_pseudo_colour,
    signature_from_grey_image,
    signature_from_objects,
    transform_signature,
)

from .conftest import shared_data


def _disk_mask(h: int, w: int) -> np.ndarray:
    rr, cc = np.mgrid[:h, :w]
    return ((rr - (h - 1) / 2) / (h / 2)) ** 2 + ((cc - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0


def _signature(att: np.ndarray | list[float], shape: tuple[int, int] = (20, 30), *, zeff: float = 26.0,
               full: bool = True) -> ThreatSignature:
    """A signature of constant attenuation per channel over a disk (or the whole canvas)."""
    att = np.asarray(att, np.float32)
    mask = np.ones(shape, bool) if full else _disk_mask(*shape)
    return ThreatSignature(
        category="handgun",
        attenuation=att[:, None, None] * mask,
        mask=mask,
        zeff=zeff,
        material="steel",
        mass_g=100.0,
        source="test:constant",
    )


def _flat_dual(level: float, dark: float, shape=(120, 150), dtype=np.float64) -> Scan:
    return Scan(np.full((2, *shape), level, dtype), kind=ScanKind.DUAL_ENERGY, spacing_mm=(1.0, 1.0))


def _scanner():
    return load_scanner("baggage-dual-kvp")


# --------------------------------------------------------------------------
# Raw counts
# --------------------------------------------------------------------------
def test_insert_into_flat_field_is_exact_and_local():
    flat, dark = 20000.0, 150.0
    scan = _flat_dual(flat, dark)
    att = [1.2, 0.7]
    sig = _signature(att, full=False)
    new, truth = project_into_counts(scan, sig, at=(30, 40), dark=dark)

    expected = dark + (flat - dark) * np.exp(-np.asarray(att, np.float32).astype(np.float64))
    inside = new.counts[:, 30:50, 40:70][:, sig.mask]
    np.testing.assert_allclose(inside, np.broadcast_to(expected[:, None], inside.shape), rtol=1e-12)
    changed = np.any(new.counts != scan.counts, axis=0)
    assert not changed[:30].any() and not changed[50:].any()
    assert not changed[:, :40].any() and not changed[:, 70:].any()
    assert np.array_equal(changed[30:50, 40:70], sig.mask)

    assert truth["bbox_rc"] == (30, 40, 50, 70)
    assert np.array_equal(truth["mask"], sig.mask)
    assert truth["category"] == "handgun" and truth["dicos_category"] == "PROHIBITED_ITEM"
    assert truth["method"] == "tip" and truth["source"] == "test:constant"
    assert new.scan_id != scan.scan_id and new.counts.dtype == scan.counts.dtype


def test_insert_keeps_integer_dtype_and_per_column_dark():
    cols = 60
    dark = np.stack([np.linspace(100, 160, cols), np.linspace(80, 90, cols)])
    counts = np.stack([np.full((40, cols), 30000, np.uint16), np.full((40, cols), 40000, np.uint16)])
    scan = Scan(counts, kind=ScanKind.DUAL_ENERGY)
    sig = _signature([2.0, 1.0], (10, 20))
    new, _ = project_into_counts(scan, sig, at=(5, 30), dark=dark)
    assert new.counts.dtype == np.uint16
    d = dark[:, None, 30:50]
    expected = np.rint(d + (counts[:, 5:15, 30:50] - d) * np.exp(-np.array([2.0, 1.0]))[:, None, None])
    np.testing.assert_array_equal(new.counts[:, 5:15, 30:50], expected)


def test_attenuations_add():
    scan = _flat_dual(10000.0, 50.0)
    a1, a2 = np.array([0.375, 0.25]), np.array([0.875, 0.5])  # exact in float32
    once, _ = project_into_counts(scan, _signature(a1 + a2), at=(10, 10), dark=50.0)
    first, _ = project_into_counts(scan, _signature(a1), at=(10, 10), dark=50.0)
    twice, _ = project_into_counts(first, _signature(a2), at=(10, 10), dark=50.0)
    np.testing.assert_allclose(twice.counts, once.counts, rtol=1e-12)


def test_noisy_insertion_is_binomial_thinning():
    flat, dark, trans = 10000, 100, 0.3
    counts = np.full((2, 220, 220), flat, np.uint16)
    scan = Scan(counts, kind=ScanKind.DUAL_ENERGY)
    a = -np.log(trans)
    sig = _signature([a, a], (200, 200))
    new, _ = project_into_counts(scan, sig, at=(10, 10), dark=dark, rng=np.random.default_rng(1))
    region = new.counts[:, 10:210, 10:210].astype(np.float64)
    n = flat - dark
    mean_expected = dark + n * trans
    var_expected = n * trans * (1 - trans)
    assert abs(region.mean() - mean_expected) / mean_expected < 0.01
    assert 0.9 < region.var() / var_expected < 1.1
    untouched = new.counts.copy()
    untouched[:, 10:210, 10:210] = flat
    assert np.array_equal(untouched, counts)


def test_single_energy_uses_high_channel_and_refuses_grey_into_dual():
    single = Scan(np.full((30, 40), 1000.0), kind=ScanKind.SINGLE_ENERGY)
    new, _ = project_into_counts(single, _signature([3.0, 1.0], (5, 5)), at=(0, 0), dark=0.0)
    np.testing.assert_allclose(new.counts[:5, :5], 1000.0 * np.exp(-1.0))

    dual = _flat_dual(1000.0, 0.0)
    with pytest.raises(ValueError) as info:
        project_into_counts(dual, _signature([1.0], (5, 5)), at=(0, 0), dark=0.0)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        project_into_counts(dual, _signature([1.0, 1.0], (5, 5)), at=(0, 0), dark=np.zeros(3))
    with pytest.raises(ValueError):
        project_into_counts(dual, _signature([1.0, 1.0], (5, 5)), at=(500, 0), dark=0.0)


def test_partly_outside_is_clipped_with_truth():
    scan = _flat_dual(1000.0, 0.0, shape=(50, 50))
    new, truth = project_into_counts(scan, _signature([1.0, 0.5], (20, 30)), at=(-5, 35), dark=0.0)
    assert truth["bbox_rc"] == (0, 35, 15, 50)
    assert truth["mask"].shape == (15, 15)
    assert (new.counts[:, :15, 35:] < 1000).all() and (new.counts[:, 15:] == 1000).all()


def test_signature_validation():
    with pytest.raises(ValueError):
        ThreatSignature("knife", -np.ones((1, 3, 3), np.float32), np.ones((3, 3), bool), source="x")
    with pytest.raises(ValueError):
        ThreatSignature("knife", np.full((1, 3, 3), np.nan, np.float32), np.ones((3, 3), bool), source="x")
    with pytest.raises(ValueError):
        ThreatSignature("knife", np.ones((2, 3, 3), np.float32), np.ones((3, 4), bool), source="x")
    sig = _signature([1.0, 0.5])
    assert sig.attenuation.dtype == np.float32 and not sig.attenuation.flags.writeable


# --------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------
def _plate(material: str, thickness_cm: float, category: str = "knife") -> SceneObject:
    thick = np.zeros((30, 40), np.float32)
    thick[5:25, 5:35] = thickness_cm
    return SceneObject(category=category, material=material, box=(100, 200, 130, 240), thickness_cm=thick)


def test_signature_from_simulated_objects():
    scanner = _scanner()
    steel = signature_from_objects([_plate("steel", 0.3)], scanner)
    assert steel.channels == 2 and steel.shape == (20, 30) and steel.mask.all()
    low, high = steel.attenuation[:, steel.mask].mean(axis=1)
    assert low > high > 0
    assert 24 < steel.zeff < 28 and steel.material == "steel"
    assert steel.source.startswith("simulator:") and steel.category == "knife"
    assert steel.mass_g == pytest.approx(20 * 30 * 0.3 * 7.9 * (scanner.pixel_mm / 10) ** 2, rel=0.05)

    # A knife wrapped in clothes: the threat names the category and the material.
    wrapped = signature_from_objects([_plate("cotton", 4.0, "clothes"), _plate("steel", 0.2)], scanner)
    assert wrapped.category == "knife" and wrapped.material == "steel"
    assert wrapped.mass_g > steel.mass_g * 2 / 3

    organic = signature_from_objects([_plate("polyethylene", 3.0, "explosive")], scanner)
    o_low, o_high = organic.attenuation[:, organic.mask].mean(axis=1)
    assert o_low / o_high < low / high
    assert organic.zeff < 8


def test_signature_from_grey_image_synthetic():
    rng = np.random.default_rng(3)
    img = rng.normal(230, 1.5, (200, 260))
    mask = np.zeros(img.shape, bool)
    mask[60:120, 80:200] = True
    img[mask] *= np.exp(-1.5)
    img = np.clip(img, 0, 255).astype(np.uint8)
    sig = signature_from_grey_image(img, category="handgun", source="test:synthetic")
    assert sig.channels == 1
    h, w = sig.shape
    assert 60 <= h <= 66 and 120 <= w <= 126  # tight: the object and a 2-pixel rim
    assert np.median(sig.attenuation[0][sig.mask]) == pytest.approx(1.5, abs=0.05)
    assert (sig.attenuation[0][~sig.mask] == 0).all()
    assert sig.zeff > 20  # steel by default

    scanner = _scanner()
    dual = signature_from_grey_image(img, category="handgun", source="test:synthetic", scanner=scanner)
    low, high = np.median(dual.attenuation[:, dual.mask], axis=1)
    assert high == pytest.approx(1.5, abs=0.05)
    assert low > high


def test_transform_signature_keeps_attenuation_and_scales_footprint():
    sig = _signature([2.0, 1.0], (40, 80))
    rng = np.random.default_rng(5)
    for _ in range(5):
        t = transform_signature(sig, rng, scale_range=(1.5, 1.5))
        assert t.mask.sum() == pytest.approx(sig.mask.sum() * 2.25, rel=0.1)
        assert t.attenuation[0].max() == pytest.approx(2.0, rel=1e-5)
        assert np.median(t.attenuation[1][t.mask]) == pytest.approx(1.0, rel=1e-5)
        assert t.mass_g == pytest.approx(225.0)
        assert t.mask[0].any() and t.mask[:, 0].any() and t.mask[-1].any() and t.mask[:, -1].any()
    flat = transform_signature(sig, rng, scale_range=(1.0, 1.0), rotate=False, flip=False)
    assert np.array_equal(flat.mask, sig.mask) and np.allclose(flat.attenuation, sig.attenuation)


def test_gdxray_signatures():
    folder = shared_data("gdxray-threats")
    from nii.ingest import read_scan

    sigs = load_gdxray_signatures(folder / "handgun", limit=3) + load_gdxray_signatures(folder / "shuriken", limit=3)
    assert [s.category for s in sigs] == ["handgun"] * 3 + ["shuriken"] * 3
    for sig in sigs:
        assert sig.source.startswith(f"gdxray:{sig.category}/") and sig.channels == 1
        image = read_scan(folder / sig.source.split(":", 1)[1]).counts.astype(float)
        assert (sig.attenuation >= 0).all() and sig.mask.sum() > 1000
        assert sig.mask.size < image.size
        if sig.category == "shuriken":
            assert sig.mask.size < 0.5 * image.size  # small object, mostly belt around it
        # tight: the canvas is the bounding box of the dark object, plus the rim
        dark = (image < 0.85 * np.percentile(image, 99)).astype(np.uint8)
        dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) > 0
        rows, cols = np.flatnonzero(dark.any(1)), np.flatnonzero(dark.any(0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert h <= sig.shape[0] <= h + 12 and w <= sig.shape[1] <= w + 12
        assert np.median(sig.attenuation[0][sig.mask]) > 1.0  # steel: dark
        # the canvas rim is belt: near-zero attenuation
        a = sig.attenuation[0]
        assert np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])) < 0.15


# --------------------------------------------------------------------------
# Pseudo-colour renderings
# --------------------------------------------------------------------------
def _hue_deg(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8).reshape(1, -1, 3), cv2.COLOR_RGB2HSV)[0, :, 0] * 2.0


def test_render_estimate_round_trip():
    a, m = np.meshgrid(np.linspace(0.2, 2.5, 47), np.linspace(0, 1, 21), indexing="ij")
    a_est, m_est = estimate_pseudo_colour(render_pseudo_colour(a, m))
    assert np.abs(a_est - a).max() < 0.15
    assert np.abs(a_est - a)[a < 2].max() < 0.04
    assert np.abs(a_est - a)[a < 1].max() < 0.01
    assert np.abs(m_est - m).max() < 0.05
    white, _ = estimate_pseudo_colour(np.full((2, 2, 3), 255, np.uint8))
    assert (white == 0).all()
    hues = _hue_deg(render_pseudo_colour(np.ones(5), np.linspace(0, 1, 5)))
    assert hues[0] < 45 and 80 < hues[2] < 130 and hues[4] > 190  # orange, green, blue
    assert np.all(np.diff(hues) > 0)


def _orange_bag() -> Scan:
    rgb = np.full((100, 120, 3), 255, np.uint8)
    rgb[20:80, 20:100] = render_pseudo_colour(np.full((60, 80), 1.0), np.zeros((60, 80)))
    return Scan(rgb, kind=ScanKind.PSEUDO_COLOUR)


def test_steel_into_orange_goes_darker_and_bluer():
    scan = _orange_bag()
    sig = _signature([1.0], (20, 30), full=False)
    new, truth = project_into_rendering(scan, sig, at=(30, 40))
    before = scan.counts[30:50, 40:70][sig.mask].astype(int)
    after = new.counts[30:50, 40:70][sig.mask].astype(int)
    assert (after.sum(1) < before.sum(1)).all()
    hue_before, hue_after = _hue_deg(before), _hue_deg(after)
    assert (hue_after > hue_before + 40).all()  # orange (~30) towards blue (~210)
    _, m_after = estimate_pseudo_colour(after.astype(np.uint8))
    assert np.all((m_after > 0.35) & (m_after < 0.75))  # equal organic + metal: mixed
    outside = np.ones(scan.spatial_shape, bool)
    outside[30:50, 40:70] = ~sig.mask
    assert np.array_equal(new.counts[outside], scan.counts[outside])
    assert truth["bbox_rc"] == (30, 40, 50, 70)


def test_steel_on_white_is_a_metal_colour():
    scan = Scan(np.full((60, 60, 3), 255, np.uint8), kind=ScanKind.PSEUDO_COLOUR)
    sig = _signature([1.5], (20, 20))
    new, _ = project_into_rendering(scan, sig, at=(10, 10))
    patch = new.counts[10:30, 10:30].reshape(-1, 3)
    assert (patch == render_pseudo_colour(np.array(1.5), np.array(1.0))).all()
    r, g, b = patch[0].astype(int)
    assert b > g > r and _hue_deg(patch[:1])[0] > 190
    a_est, m_est = estimate_pseudo_colour(patch)
    assert np.allclose(a_est, 1.5, atol=0.02) and (m_est > 0.95).all()
    assert material_coordinate(26.0) > 0.95 and material_coordinate(7.0) < 0.1
    assert 0.35 < material_coordinate(13.0) < 0.65


def test_rendering_is_multiplicative_not_pasted():
    # Textured background: its structure must show through the inserted threat.
    rng = np.random.default_rng(2)
    a_bg = cv2.GaussianBlur(rng.uniform(0.2, 1.2, (80, 80)), (0, 0), 2)
    scan = Scan(render_pseudo_colour(a_bg, np.full(a_bg.shape, 0.3)), kind=ScanKind.PSEUDO_COLOUR)
    sig = _signature([0.8], (40, 40))
    new, _ = project_into_rendering(scan, sig, at=(20, 20))
    a_before, _ = estimate_pseudo_colour(scan.counts[20:60, 20:60])
    a_after, _ = estimate_pseudo_colour(new.counts[20:60, 20:60])
    np.testing.assert_allclose(a_after - a_before, 0.8, atol=0.05)


def test_sixray_bag_with_gdxray_handgun():
    bags = shared_data("sixray-negatives")
    guns = shared_data("gdxray-threats")
    from nii.ingest import read_scan

    scan = read_scan(bags / "N0000001.jpg")
    sig = transform_signature(load_gdxray_signatures(guns / "handgun", limit=1)[0], np.random.default_rng(0),
                              scale_range=(0.5, 0.5))
    rng = np.random.default_rng(1)
    at = choose_location(scan, sig, rng)
    new, truth = project_into_rendering(scan, sig, at=at)
    r0, c0, r1, c1 = truth["bbox_rc"]
    mask = truth["mask"]
    before = scan.counts[r0:r1, c0:c1].astype(int)
    after = new.counts[r0:r1, c0:c1].astype(int)
    changed = np.any(after != before, axis=-1)
    assert changed[~mask].sum() == 0 and changed.sum() > 0.5 * mask.sum()
    assert after[mask].sum() < before[mask].sum()
    a_bg, _ = estimate_pseudo_colour(scan.counts[r0:r1, c0:c1])
    _, m_new = estimate_pseudo_colour(new.counts[r0:r1, c0:c1])
    assert np.median(m_new[mask]) > 0.8  # the gun reads as metal
    # most of the gun lies inside the bag
    assert np.mean(a_bg[mask] > 0.1) > 0.8


# --------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------
def test_choose_location_inside_the_bag():
    rows, cols = 300, 400
    air, dark = 40000.0, 100.0
    att = np.zeros((rows, cols))
    att[80:220, 150:330] = 0.8  # the bag
    att[120:140, 200:260] = 0.0  # an air gap inside the bag still counts as inside
    counts = np.stack([dark + (air - dark) * np.exp(-1.5 * att), dark + (air - dark) * np.exp(-att)])
    scan = Scan(counts.astype(np.uint16), kind=ScanKind.DUAL_ENERGY)
    sig = _signature([1.0, 0.6], (30, 50), full=False)
    rng = np.random.default_rng(7)
    bag = np.zeros((rows, cols), bool)
    bag[80:220, 150:330] = True
    spots = set()
    for _ in range(30):
        r, c = choose_location(scan, sig, rng)
        assert 0 <= r <= rows - 30 and 0 <= c <= cols - 50
        assert bag[r : r + 30, c : c + 50][sig.mask].mean() >= 0.9
        spots.add((r, c))
    assert len(spots) > 20
    r, c = choose_location(scan, sig, rng, inside_object=False)
    assert 0 <= r <= rows - 30 and 0 <= c <= cols - 50
    with pytest.raises(ValueError):
        choose_location(scan, _signature([1.0, 0.6], (200, 250)), rng)

    rgb = Scan(np.where(bag[..., None], np.uint8(120), np.uint8(255)).repeat(3, axis=-1), kind=ScanKind.PSEUDO_COLOUR)
    r, c = choose_location(rgb, sig, rng)
    assert bag[r : r + 30, c : c + 50][sig.mask].mean() >= 0.9


def test_palette_is_fitted_to_sixray_hues():
    # The SIXray console's orange/green/blue at the three anchor points.
    assert SIXRAY_PALETTE.anchor_m[0] == 0 and SIXRAY_PALETTE.anchor_m[-1] == 1
    rgb = render_pseudo_colour(np.full(3, 1.5), np.array([0.0, 0.5, 1.0]))
    assert rgb[0, 0] > rgb[0, 1] > rgb[0, 2]  # orange
    assert rgb[1, 1] > rgb[1, 0] and rgb[1, 1] > rgb[1, 2]  # green
    assert rgb[2, 2] > rgb[2, 1] > rgb[2, 0]  # blue
