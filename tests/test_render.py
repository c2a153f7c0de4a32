"""Operator image tools, the colour lookup and the archive estimate."""

from __future__ import annotations

import numpy as np
import pytest

from nii.calibrate.archive import ARCHIVE_PROFILE_PREFIX, calibrate_archive
from nii.calibrate.calibrated import CalibratedScan, MaterialClass, classify_zeff
from nii.calibrate.palette import (
    estimate_pseudo_colour,
    SIXRAY_PALETTE,
    PseudoColourPalette,
    material_coordinate,
    render_pseudo_colour,
    zeff_from_material_coordinate,
)
from nii.calibrate.render import TOOLS, material_map, render, render_colour_fast
from nii.scan import Scan, ScanKind

ROWS, COLS = 120, 160

# Regions of the synthetic bag: (rows, cols) slices, high-energy attenuation, Zeff.
WATER = (slice(10, 40), slice(10, 50)), 1.0, 7.4
ALUMINIUM = (slice(10, 40), slice(60, 100)), 1.0, 13.0
IRON = (slice(10, 40), slice(110, 150)), 1.5, 26.0
DENSE_A = (slice(50, 80), slice(10, 50)), 6.0, 26.0  # grey shows both black ...
DENSE_B = (slice(50, 80), slice(60, 100)), 9.0, 26.0  # ... high penetration does not
OPAQUE = (slice(50, 80), slice(110, 150)), 12.0, 26.0
AIR = (slice(90, 120), slice(0, 160))  # and the gaps between regions


def _calibrated(*, dual: bool = True, with_class: bool = True, noise: float = 0.0, seed: int = 0) -> CalibratedScan:
    rng = np.random.default_rng(seed)
    high = np.zeros((ROWS, COLS), np.float32)
    zeff = np.full((ROWS, COLS), 7.0, np.float32)  # air: any value, it renders white
    for sl, a, z in (WATER, ALUMINIUM, IRON, DENSE_A, DENSE_B, OPAQUE):
        high[sl], zeff[sl] = a, z
    high += rng.normal(0.0, noise, high.shape).astype(np.float32)
    opaque = np.zeros((ROWS, COLS), bool)
    opaque[OPAQUE[0]] = True
    attenuation = np.stack([high * 1.2, high]) if dual else high[None]
    counts = np.ones((2, ROWS, COLS) if dual else (ROWS, COLS), np.uint16)
    kind = ScanKind.DUAL_ENERGY if dual else ScanKind.SINGLE_ENERGY
    return CalibratedScan(
        scan=Scan(counts, kind=kind),
        attenuation=attenuation.astype(np.float32),
        opaque=opaque,
        spacing_mm=(1.0, 1.0),
        profile_id="test/1/abc",
        zeff=zeff if dual else None,
        material_class=classify_zeff(zeff, opaque) if dual and with_class else None,
    )


def _mean(image: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
    return image[region].reshape(-1, 3).mean(axis=0)


def _render(cal: CalibratedScan, tool: str, **kwargs) -> np.ndarray:
    if tool == "window":
        kwargs.setdefault("window", (0.5, 1.5))
    return render(cal, tool=tool, **kwargs)


# ---------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------
def test_colour_hues_by_material_black_opaque_white_air() -> None:
    rgb = render(_calibrated())
    r, g, b = _mean(rgb, WATER[0])
    assert r > b + 50 and r > g, "organic is orange"
    r, g, b = _mean(rgb, ALUMINIUM[0])
    assert g > r and g > b, "mixed is green"
    r, g, b = _mean(rgb, IRON[0])
    assert b > r + 50, "metal is blue"
    assert (rgb[OPAQUE[0]] < 30).all(), "opaque is black"
    assert (rgb[AIR] > 240).all(), "air is white"


def test_brightness_follows_attenuation() -> None:
    a = np.linspace(0.0, 4.0, 50, dtype=np.float32)[None].repeat(4, axis=0)
    rgb = render_colour_fast(a, np.full(a.shape, 0.5, np.float32), np.zeros(a.shape, bool))
    total = rgb.astype(int).sum(axis=-1)[0]
    assert (np.diff(total) <= 0).all() and total[0] > 3 * 250 and total[-1] < 150


def test_single_energy_colour_is_grey() -> None:
    cal = _calibrated(dual=False)
    rgb = render(cal)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb == render(cal, tool="grey")).all()


def test_render_colour_fast_is_the_colour_tool() -> None:
    cal = _calibrated(noise=0.05)
    expected = render_colour_fast(cal.high, material_map(cal.zeff), cal.opaque)
    assert (render(cal) == expected).all()
    # Every Zeff step of the lookup, every attenuation level, random opaque.
    rng = np.random.default_rng(1)
    shape = (300, 257)
    zeff = rng.uniform(0.0, 40.0, shape).astype(np.float32)
    a = rng.uniform(-0.5, 20.0, shape).astype(np.float32)
    opaque = rng.random(shape) < 0.1
    cal = CalibratedScan(Scan(np.ones((2, *shape), np.uint16), kind="dual_energy"),
                         np.stack([a, a]), opaque, None, "t", zeff=zeff)
    assert (render(cal) == render_colour_fast(a, material_map(zeff), opaque)).all()


def test_lookup_is_close_to_the_exact_palette() -> None:
    rng = np.random.default_rng(2)
    a = rng.uniform(0.0, 10.0, (200, 200)).astype(np.float32)
    m = rng.uniform(0.0, 1.0, a.shape).astype(np.float32)
    fast = render_colour_fast(a, m, np.zeros(a.shape, bool)).astype(int)
    exact = render_pseudo_colour(a, m).astype(int)
    assert np.abs(fast - exact).max() <= 8 and np.abs(fast - exact).mean() < 1.0
    zeff = np.linspace(0.0, 40.0, 10001, dtype=np.float32)[None]
    assert np.abs(material_map(zeff) - material_coordinate(zeff)).max() <= 0.0125 + 1e-6


def test_render_colour_fast_edges() -> None:
    a = np.array([[-0.3, 0.0, 16.5, 1e9, np.inf, np.nan]], np.float32)
    m = np.array([[0.5, -1.0, 0.5, 2.0, 0.0, 0.5]], np.float32)
    rgb = render_colour_fast(a, m, np.zeros(a.shape, bool))
    assert (rgb[0, :2] == 255).all(), "negative attenuation is air"
    assert (rgb[0, 2:] == 0).all(), "beyond the table, inf and NaN are black"
    # Long enough rows for the vectorised paths too.
    wide = np.repeat(a, 40, axis=1)
    assert (render_colour_fast(wide, np.repeat(m, 40, axis=1), np.zeros(wide.shape, bool))
            == np.repeat(rgb, 40, axis=1)).all()
    with pytest.raises(ValueError, match="one shape"):
        render_colour_fast(np.zeros((3, 4)), np.zeros((3, 5)), np.zeros((3, 4), bool))


def test_nan_zeff_is_organic_and_infinite_zeff_metal() -> None:
    # Wide enough for OpenCV's vector paths, whose float -> int casts of NaN differ by release.
    zeff = np.tile(np.array([np.nan, 7.0, np.inf, 30.0], np.float32), (3, 40))
    m = material_map(zeff)
    assert (m[:, 0::4] == 0).all() and (m[:, 1::4] == pytest.approx(material_coordinate(7.0), abs=0.0125))
    assert (m[:, 2::4] == 1).all() and (m[:, 3::4] == 1).all()
    a = np.full(zeff.shape, 1.0, np.float32)
    cal = CalibratedScan(Scan(np.ones((2, *zeff.shape), np.uint16), kind="dual_energy"),
                         np.stack([a, a]), np.zeros(zeff.shape, bool), None, "t", zeff=zeff)
    assert (render(cal) == render_colour_fast(a, m, np.zeros(zeff.shape, bool))).all()


def test_palette_is_hashable_and_tables_are_cached() -> None:
    listed = PseudoColourPalette(name="lists", anchors=[(0.0, [1, 2, 3]), (1.0, [3, 2, 1])])
    assert hash(listed) == hash(PseudoColourPalette(name="lists", anchors=((0.0, (1, 2, 3)), (1.0, (3, 2, 1)))))
    a = np.ones((4, 4), np.float32)
    m = np.zeros((4, 4), np.float32)
    assert not (render_colour_fast(a, m, np.zeros((4, 4), bool), palette=listed)
                == render_colour_fast(a, m, np.zeros((4, 4), bool))).all()


# ---------------------------------------------------------------------------
# All tools
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_is_pure_uint8_rgb(tool: str) -> None:
    cal = _calibrated(noise=0.02)
    before = {name: np.array(getattr(cal, name)) for name in ("attenuation", "opaque", "zeff", "material_class")}
    first = _render(cal, tool)
    assert first.dtype == np.uint8 and first.shape == (ROWS, COLS, 3)
    assert (first == _render(cal, tool)).all(), "deterministic"
    for name, value in before.items():
        assert (np.asarray(getattr(cal, name)) == value).all(), f"{tool} changed {name}"
    zoomed = _render(cal, tool, zoom=2.5, centre=(30, 40))
    assert zoomed.dtype == np.uint8 and zoomed.shape == (ROWS, COLS, 3)


def test_inverse_is_inverted_grey() -> None:
    cal = _calibrated(noise=0.02)
    assert (render(cal, tool="inverse") == 255 - render(cal, tool="grey")).all()
    grey = render(_calibrated(), tool="grey")
    assert (grey[AIR] == 255).all() and (grey[OPAQUE[0]] == 0).all()
    assert (np.abs(grey[WATER[0]].astype(int) - round(255 * np.exp(-1.0))) <= 1).all()


def test_organic_only_and_inorganic_only_wash_out_the_other() -> None:
    cal = _calibrated()
    colour = render(cal)
    organic = render(cal, tool="organic_only")
    inorganic = render(cal, tool="inorganic_only")
    washed = lambda img, sl: (img[sl].min() >= 190) and (np.ptp(img[sl], axis=-1) == 0).all()  # noqa: E731
    assert (organic[WATER[0]] == colour[WATER[0]]).all()
    assert washed(organic, IRON[0]) and washed(organic, ALUMINIUM[0])
    assert (inorganic[IRON[0]] == colour[IRON[0]]).all() and (inorganic[ALUMINIUM[0]] == colour[ALUMINIUM[0]]).all()
    assert washed(inorganic, WATER[0])
    assert (organic[OPAQUE[0]] == 0).all() and (inorganic[OPAQUE[0]] == 0).all(), "opaque stays black"
    # Classes come from zeff when material_class is absent; nothing to go on without either.
    assert (render(_calibrated(with_class=False), tool="organic_only") == organic).all()
    with pytest.raises(ValueError, match="zeff or material_class"):
        render(_calibrated(dual=False), tool="organic_only")


def test_high_penetration_separates_what_grey_saturates() -> None:
    cal = _calibrated()
    grey = render(cal, tool="grey").astype(int)
    assert abs(_mean(grey, DENSE_A[0]) - _mean(grey, DENSE_B[0])).max() <= 2
    hp = render(cal, tool="high_penetration").astype(int)
    assert abs(_mean(hp, DENSE_A[0]) - _mean(hp, DENSE_B[0])).max() > 20
    # Low penetration: thin material stands out from air.
    thin = _calibrated()
    thin.attenuation[:, AIR[0], :80] = 0.1  # a fresh object, ours to modify
    lp = render(thin, tool="low_penetration").astype(int)
    grey = render(thin, tool="grey").astype(int)
    contrast = lambda img: (img[100, 120] - img[100, 40]).mean()  # noqa: E731  air - thin
    assert contrast(lp) > 2 * contrast(grey) > 0


def test_edge_sharpens_edges_and_keeps_flat_regions() -> None:
    cal = _calibrated()
    colour = render(cal).astype(int)
    edge = render(cal, tool="edge").astype(int)
    assert (np.abs(edge[20:30, 20:40] - colour[20:30, 20:40]) <= 1).all(), "flat interior unchanged"
    step = lambda img: np.abs(np.diff(img[25, 40:60], axis=0)).max()  # noqa: E731  water -> air -> aluminium
    assert step(edge) > step(colour)


def test_window_maps_the_range_to_full_scale() -> None:
    cal = _calibrated()
    img = render(cal, tool="window", window=(0.5, 1.5))
    assert (img[AIR] == 255).all() and (img[IRON[0]] == 0).all()
    assert (np.abs(img[WATER[0]].astype(int) - 128) <= 1).all()
    assert (img[OPAQUE[0]] == 0).all()


@pytest.mark.parametrize("window", [(1.0, 1.0), (2.0, 1.0), (0.0, float("nan"))])
def test_degenerate_window_warns_and_falls_back_to_grey(window: tuple[float, float]) -> None:
    cal = _calibrated()
    with pytest.warns(RuntimeWarning, match="degenerate window"):
        img = render(cal, tool="window", window=window)
    assert (img == render(cal, tool="grey")).all()


def test_bad_options_are_refused() -> None:
    cal = _calibrated()
    with pytest.raises(ValueError, match="colour, grey, inverse"):
        render(cal, tool="thermal")
    with pytest.raises(ValueError, match="window"):
        render(cal, tool="window")
    with pytest.raises(ValueError, match="window"):
        render(cal, tool="colour", window=(0.0, 1.0))
    with pytest.raises(ValueError, match="zoom"):
        render(cal, zoom=0.5)
    with pytest.raises(ValueError, match="centre"):
        render(cal, zoom=2.0, centre=(ROWS + 5, 10))
    ct = Scan(np.zeros((2, 8, 8), np.int16), kind=ScanKind.CT_VOLUME)
    with pytest.raises(ValueError, match="2D projection"):
        render(CalibratedScan(ct, np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), bool), None, "t"))


# ---------------------------------------------------------------------------
# Zoom
# ---------------------------------------------------------------------------
def test_zoom_enlarges_the_centre_region() -> None:
    cal = _calibrated(noise=0.05)
    full = render(cal)
    centre = (57, 70)
    zoomed = render(cal, zoom=2.0, centre=centre)
    h, w = ROWS // 2, COLS // 2
    crop = full[centre[0] - h // 2 : centre[0] + h // 2, centre[1] - w // 2 : centre[1] + w // 2]
    # Whole pixels replicated: every 2x2 block of the zoom is one crop pixel.
    assert (zoomed[::2, ::2] == crop).all() and (zoomed[1::2, 1::2] == crop).all()
    # The centre pixel sits at the middle of the output.
    assert (zoomed[ROWS // 2, COLS // 2] == full[centre]).all()
    # Near the border the region shifts to stay inside, keeping the factor.
    corner = render(cal, zoom=2.0, centre=(0, 0))
    assert (corner[::2, ::2] == full[:h, :w]).all()
    assert (render(cal, zoom=1.0) == full).all()


def test_zoom_below_two_interpolates_within_range() -> None:
    cal = _calibrated(noise=0.05)
    full = render(cal)
    zoomed = render(cal, zoom=1.5, centre=(60, 80))
    assert zoomed.shape == (ROWS, COLS, 3) and zoomed.dtype == np.uint8
    # 1.5x around the centre shows rows 20-100 and columns 27-133 (80 x 107
    # pixels), stretched: every value lies within what those pixels hold...
    shown = full[20:100, 27:134].reshape(-1, 3)
    assert (zoomed.reshape(-1, 3).min(axis=0) >= shown.min(axis=0)).all()
    assert (zoomed.reshape(-1, 3).max(axis=0) <= shown.max(axis=0)).all()
    # ...the centre stays in the middle...
    assert np.abs(zoomed[59:62, 79:82].astype(int) - full[60, 80].astype(int)).min() <= 8
    # ...and, linear rather than replicated, new levels appear between pixels.
    assert len(np.unique(zoomed.reshape(-1, 3), axis=0)) > len(np.unique(shown, axis=0))


# ---------------------------------------------------------------------------
# Archive estimate
# ---------------------------------------------------------------------------
def _gradient_bag(seed: int = 3) -> CalibratedScan:
    """Materials side by side over attenuation 0.2 - 2.5 with Zeff noise, air around."""
    rng = np.random.default_rng(seed)
    rows, cols = 90, 200
    high = np.zeros((rows, cols), np.float32)
    zeff = np.full((rows, cols), 7.0, np.float32)
    ramp = np.linspace(0.2, 2.5, cols - 20, dtype=np.float32)
    for band, z in zip((slice(5, 30), slice(35, 60), slice(65, 85)), (7.4, 13.0, 26.0)):
        high[band, 10:-10] = ramp
        zeff[band, 10:-10] = z + rng.normal(0.0, 0.3, (band.stop - band.start, cols - 20))
    opaque = np.zeros((rows, cols), bool)
    opaque[40:50, 100:120] = True
    high[opaque] = 10.0
    return CalibratedScan(Scan(np.ones((2, rows, cols), np.uint16), kind="dual_energy"),
                          np.stack([high, high]), opaque, (0.8, 0.8), "test/1/abc", zeff=zeff,
                          material_class=classify_zeff(zeff, opaque))


def test_archive_round_trip() -> None:
    cal = _gradient_bag()
    rgb = render(cal, tool="colour")
    scan = Scan(rgb, kind=ScanKind.PSEUDO_COLOUR, spacing_mm=(0.8, 0.8))
    est = calibrate_archive(scan)
    assert est.attenuation.shape == (1, *rgb.shape[:2]) and est.attenuation.dtype == np.float32
    assert est.zeff.dtype == np.float32 and est.material_class.dtype == np.uint8
    assert est.areal_density_g_cm2 is None and est.spacing_mm == (0.8, 0.8) and est.scan is scan
    assert est.profile_id == ARCHIVE_PROFILE_PREFIX + "sixray" and "estimate" in est.profile_id
    non_air = (cal.high > 0.1) | cal.opaque
    agree = (est.material_class == cal.material_class)[non_air].mean()
    assert agree >= 0.9, agree
    assert (est.material_class[cal.opaque] == MaterialClass.OPAQUE).all()
    assert (est.opaque == cal.opaque).all()
    thin = (cal.high < 2.0) & ~cal.opaque
    assert np.abs(est.high - cal.high)[thin].max() <= 0.1
    # Rendering the estimate gives (nearly) the same picture back.
    assert np.abs(render(est).astype(int) - rgb).mean() < 2.0


def test_archive_refuses_other_kinds() -> None:
    with pytest.raises(ValueError, match="pseudo_colour"):
        calibrate_archive(Scan(np.ones((2, 4, 4), np.uint16), kind=ScanKind.DUAL_ENERGY))


def test_material_coordinate_inverts() -> None:
    zeff = np.linspace(6.0, 26.0, 401)
    assert np.allclose(zeff_from_material_coordinate(material_coordinate(zeff)), zeff, atol=1e-4)
    assert zeff_from_material_coordinate(0.0) == 6.0 and zeff_from_material_coordinate(1.0) == 26.0
    assert isinstance(material_coordinate(13.0), float) and material_coordinate(None) == 1.0
    assert material_coordinate(np.array([7.4, 13.0]), ).dtype == np.float32
    # Scalars and arrays agree, and the palette is still importable from tip.
    from nii.simulate.tip import material_coordinate as tip_material_coordinate
    from nii.simulate.tip import render_pseudo_colour as tip_render

    assert tip_material_coordinate is material_coordinate and tip_render is render_pseudo_colour
    assert SIXRAY_PALETTE.name == "sixray"


def test_estimating_a_large_rendering_colour_by_colour_matches_pixel_by_pixel():
    # Past 65536 pixels the estimate solves each distinct colour once; it must
    # give exactly what the per-pixel path gives on the same pixels.
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    rgb[:100] = rgb[100:200]  # repeated colours, as real images have
    att, material = estimate_pseudo_colour(rgb)
    for rows in (slice(0, 150), slice(150, 300)):  # 60000 pixels each: the per-pixel path
        part_att, part_material = estimate_pseudo_colour(rgb[rows])
        np.testing.assert_array_equal(att[rows], part_att)
        np.testing.assert_array_equal(material[rows], part_material)
