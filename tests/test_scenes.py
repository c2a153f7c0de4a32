"""Scene generators: determinism, rates, ground truth and the shape rasterisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nii.simulate import shapes
from nii.simulate.scene import THREAT_CATEGORIES, Scene, SceneObject, VolumeScene
from nii.simulate.scenes import (
    GOODS_TYPES,
    MISMATCH_TYPES,
    areal_density,
    bag_scene,
    cargo_scene,
    ct_scene,
    object_mass_g,
    threat_annotations,
    volume_threat_annotations,
)

MATERIALS = (
    "air nylon polyester cotton cellulose leather rubber water pet abs pvc polyethylene pom pmma wood glass pcb "
    "li_ion aluminium steel iron copper brass nickel lead zirconia explosive narcotic"
).split()
# Stand-in densities (g/cm^3), close to physics.MATERIALS: the tests need numbers, not its exact ones.
DENSITY = dict(
    zip(
        MATERIALS,
        (0.0012, 1.14, 0.35, 0.3, 0.9, 0.95, 1.1, 1.0, 1.38, 1.05, 1.38, 0.94, 1.41, 1.18)
        + (0.6, 2.5, 2.0, 2.6, 2.699, 7.85, 7.874, 8.96, 8.53, 8.908, 11.35, 6.0, 1.7, 1.2),
    )
)

# Statistics run on coarse scenes (4 mm pixels): the same bags in cm, 16x fewer pixels.
SMALL = dict(shape=(192, 256), pixel_mm=4.0)
CARGO_SMALL = dict(shape=(610, 160), pixel_mm=20.0)  # 12.2 m of travel, 3.2 m of detector


def _fingerprint(scene: Scene | VolumeScene) -> list:
    out = []
    for o in scene.objects:
        data = o.thickness_cm if isinstance(o, SceneObject) else o.occupancy
        out.append((o.category, o.material, o.box, o.density_g_cm3, o.group, data.dtype.str, data.tobytes()))
    if isinstance(scene, Scene):
        out.append((scene.kind, scene.shape, scene.pixel_mm, repr(scene.manifest), repr(scene.manifest_truth)))
    return out


def _groups(scene: Scene | VolumeScene) -> dict[int, list]:
    groups: dict[int, list] = {}
    for o in scene.objects:
        if o.is_threat:
            assert o.group is not None, "every threat part carries its group"
            groups.setdefault(o.group, []).append(o)
    return groups


@pytest.fixture(scope="module")
def threat_bags() -> list[Scene]:
    """200 coarse bags and parcels, each with 1-2 threats."""
    kinds = ("parcel", "bag", "bag", "bag")
    return [bag_scene(np.random.default_rng(s), threat_rate=1.0, kind=kinds[s % 4], **SMALL) for s in range(200)]


@pytest.fixture(scope="module")
def containers() -> list[Scene]:
    return [cargo_scene(np.random.default_rng(s), **CARGO_SMALL) for s in range(200)]


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: bag_scene(np.random.default_rng(seed)),
        lambda seed: bag_scene(np.random.default_rng(seed), kind="parcel", threat_rate=1.0),
        lambda seed: cargo_scene(np.random.default_rng(seed)),
        lambda seed: ct_scene(np.random.default_rng(seed), threat_rate=1.0),
    ],
    ids=["bag", "parcel", "cargo", "ct"],
)
def test_same_seed_same_scene_other_seed_other_scene(make) -> None:
    first, again, other = make(11), make(11), make(12)
    assert _fingerprint(first) == _fingerprint(again)
    assert _fingerprint(first) != _fingerprint(other)


def test_generator_state_not_seed_decides() -> None:
    rng = np.random.default_rng(5)
    a, b = bag_scene(rng, **SMALL), bag_scene(rng, **SMALL)
    assert _fingerprint(a) != _fingerprint(b)


# --------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------


def test_threat_rate_zero_means_no_threats() -> None:
    for seed in range(50):
        scene = bag_scene(np.random.default_rng(seed), threat_rate=0.0, kind="bag" if seed % 2 else "parcel", **SMALL)
        assert not any(o.is_threat for o in scene.objects)
        assert scene.manifest_truth["threats"] == []


def test_threat_rate_one_means_threats(threat_bags: list[Scene]) -> None:
    for scene in threat_bags:
        groups = _groups(scene)
        assert 1 <= len(scene.manifest_truth["threats"]) <= 2
        assert len(groups) >= 1


def test_clear_bag_rate_is_respected() -> None:
    n, rate = 200, 0.3
    scenes = [
        bag_scene(np.random.default_rng(1000 + s), clear_bag_rate=rate, threat_rate=0.0, **SMALL) for s in range(n)
    ]
    clear = [s.manifest_truth["clear"] for s in scenes]
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(sum(clear) - n * rate) < 4 * sd
    for scene, is_clear in zip(scenes, clear):
        items = scene.manifest_truth["clutter_items"]
        assert (1 <= items <= 5) if is_clear else (10 <= items <= 30)


# --------------------------------------------------------------------------
# Threat content
# --------------------------------------------------------------------------


def test_every_threat_category_appears(threat_bags: list[Scene]) -> None:
    seen = {o.category for s in threat_bags for o in s.objects if o.is_threat}
    assert seen == set(THREAT_CATEGORIES)


def test_ceramic_knives_appear(threat_bags: list[Scene]) -> None:
    knives = [o for s in threat_bags for o in s.objects if o.category == "knife"]
    blades = [o.material for o in knives if o.material in ("steel", "zirconia")]
    assert "zirconia" in blades


def test_explosives_are_complete_and_in_density_range(threat_bags: list[Scene]) -> None:
    found = 0
    for scene in threat_bags:
        for parts in _groups(scene).values():
            if parts[0].category != "explosive":
                continue
            found += 1
            assert {p.category for p in parts} == {"explosive"}
            materials = {p.material for p in parts}
            assert "explosive" in materials, "a charge"
            assert "copper" in materials, "detonator wires"
            assert materials & {"li_ion", "steel"}, "a battery"
            densities = {p.density_g_cm3 for p in parts if p.material == "explosive"}
            assert len(densities) == 1 and 1.5 <= densities.pop() <= 1.9
    assert found >= 5


def test_narcotics_and_currency_densities(threat_bags: list[Scene]) -> None:
    for scene in threat_bags:
        for o in scene.objects:
            if o.material == "narcotic":
                assert 1.1 <= o.density_g_cm3 <= 1.3
            if o.category == "currency":
                assert 0.9 <= o.density_g_cm3 <= 1.0


def test_shielding_is_opaque_lead(threat_bags: list[Scene]) -> None:
    lead = [o for s in threat_bags for o in s.objects if o.category == "shielding"]
    assert lead and all(o.material == "lead" for o in lead)
    # Away from its edges a lead box is at least 2 cm of lead along the beam.
    assert all(np.percentile(o.thickness_cm[o.mask], 75) >= 2.0 - 1e-6 for o in lead)


def test_handguns_are_pistol_sized(threat_bags: list[Scene]) -> None:
    pixel_cm = SMALL["pixel_mm"] / 10.0
    for scene in threat_bags:
        for ann in threat_annotations(scene, DENSITY):
            if ann["category"] == "handgun":
                r0, c0, r1, c1 = ann["bbox_rc"]
                assert 14.0 <= math.hypot(r1 - r0, c1 - c0) * pixel_cm <= 40.0
                assert 200.0 <= ann["mass_g"] <= 3000.0


# --------------------------------------------------------------------------
# Geometry and maps
# --------------------------------------------------------------------------


def _check_objects(scene: Scene) -> None:
    rows, cols = scene.shape
    for o in scene.objects:
        r0, c0, r1, c1 = o.box
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols, o.box
        t = o.thickness_cm
        assert t.dtype == np.float32 and t.shape == (r1 - r0, c1 - c0)
        assert np.isfinite(t).all() and (t >= 0).all()
        assert o.mask.any(), f"empty {o.category} {o.material}"
        assert o.material in MATERIALS


def test_objects_are_valid_at_full_resolution() -> None:
    for seed in range(4):
        _check_objects(bag_scene(np.random.default_rng(seed), threat_rate=1.0))
    _check_objects(bag_scene(np.random.default_rng(9), kind="parcel", threat_rate=1.0))
    _check_objects(cargo_scene(np.random.default_rng(3), empty_rate=0.0, mismatch_rate=1.0))


def test_objects_are_valid_on_coarse_scenes(threat_bags: list[Scene], containers: list[Scene]) -> None:
    for scene in threat_bags[:60] + containers[:30]:
        _check_objects(scene)


def _naive_areal_density(scene: Scene) -> np.ndarray:
    out = np.zeros((len(MATERIALS), *scene.shape), np.float64)
    for o in scene.objects:
        full = np.zeros(scene.shape, np.float64)
        r0, c0, r1, c1 = o.box
        full[r0:r1, c0:c1] = o.thickness_cm
        density = o.density_g_cm3 if o.density_g_cm3 is not None else DENSITY[o.material]
        out[MATERIALS.index(o.material)] += density * full
    return out


def test_areal_density_matches_naive_sum() -> None:
    scenes = [bag_scene(np.random.default_rng(s), threat_rate=1.0, **SMALL) for s in range(3)]
    scenes.append(cargo_scene(np.random.default_rng(4), empty_rate=0.0, mismatch_rate=1.0, **CARGO_SMALL))
    for scene in scenes:
        fast = areal_density(scene, MATERIALS, DENSITY)
        assert fast.dtype == np.float32 and fast.shape == (len(MATERIALS), *scene.shape)
        np.testing.assert_allclose(fast, _naive_areal_density(scene), rtol=1e-5, atol=1e-4)


def test_areal_density_rejects_a_missing_channel() -> None:
    scene = bag_scene(np.random.default_rng(0), **SMALL)
    with pytest.raises(KeyError):
        areal_density(scene, ["air"], DENSITY)


@pytest.mark.parametrize("angle", [0.0, 0.37, 1.2, 2.9])
@pytest.mark.parametrize("pixel_mm", [0.8, 2.0])
def test_steel_plate_mass_is_analytic(angle: float, pixel_mm: float) -> None:
    length_cm, width_cm, thickness_cm = 12.0, 7.0, 0.4
    px = 10.0 / pixel_mm
    length, width = length_cm * px, width_cm * px
    centre, shape = (150.3, 170.6), (300, 340)
    raster = shapes.plate(centre, length=length, width=width, thickness_cm=thickness_cm, angle=angle, shape=shape)
    plate = SceneObject("test", "steel", raster[0], raster[1])
    expected = 7.85 * length_cm * width_cm * thickness_cm
    assert object_mass_g(plate, 7.85, pixel_mm) == pytest.approx(expected, rel=0.01)


def test_cylinder_tube_and_disc_volumes_are_analytic() -> None:
    shape = (400, 400)
    axis = dict(length=150.0, radius=20.0, angle=0.8, pixel_mm=1.0, shape=shape)
    _, chord = shapes.cylinder((200.2, 190.7), inner_radius=15.0, **axis)
    assert chord.sum() * 0.01 == pytest.approx(math.pi * (20**2 - 15**2) * 150 * 1e-3, rel=0.01)
    shell, water = shapes.filled_cylinder((200.2, 190.7), wall=5.0, level=0.5, **axis)
    assert shell[1].sum() == pytest.approx(chord.sum(), rel=1e-4)
    assert water[1].sum() * 0.01 == pytest.approx(math.pi * 15**2 * 150 * 1e-3 / 2, rel=0.01)
    points = np.array([[50.0, 50.0], [120.0, 300.0], [330.0, 320.0]])
    length = float(np.hypot(*np.diff(points, axis=0).T).sum())
    core, sheath = shapes.tube(points, radii=(0.6, 2.5), pixel_mm=1.0, shape=shape)
    assert core[1].sum() * 0.01 == pytest.approx(math.pi * 0.6**2 * length * 1e-3, rel=1e-3)
    assert sheath[1].sum() * 0.01 == pytest.approx(math.pi * (2.5**2 - 0.6**2) * length * 1e-3, rel=1e-3)
    _, coin = shapes.disc((100.4, 80.9), radius=11.0, thickness_cm=0.2, shape=shape)
    assert coin.sum() == pytest.approx(math.pi * 11.0**2 * 0.2, rel=0.01)


def test_shapes_clip_to_the_scene_and_drop_what_falls_outside() -> None:
    shape = (100, 120)
    assert shapes.plate((-80.0, -80.0), length=40.0, width=20.0, thickness_cm=1.0, shape=shape) is None
    assert shapes.disc((50.0, 500.0), radius=10.0, thickness_cm=1.0, shape=shape) is None
    box, t = shapes.plate((5.0, 5.0), length=40.0, width=30.0, thickness_cm=1.0, angle=0.3, shape=shape)
    assert box[0] == 0 and box[1] == 0 and t.shape == (box[2], box[3])
    whole = shapes.plate((50.0, 60.0), length=40.0, width=30.0, thickness_cm=1.0, angle=0.3, shape=shape)[1].sum()
    assert t.sum() < whole


@settings(max_examples=60, deadline=None)
@given(
    row=st.floats(-60, 160),
    col=st.floats(-60, 180),
    size=st.floats(0.5, 90),
    aspect=st.floats(0.05, 1.0),
    angle=st.floats(0, 2 * math.pi),
    kind=st.sampled_from(["plate", "polygon", "cylinder", "ellipsoid", "slab", "disc"]),
)
def test_rasterisers_stay_in_bounds(
    row: float, col: float, size: float, aspect: float, angle: float, kind: str
) -> None:
    shape = (100, 120)
    centre, width = (row, col), max(size * aspect, 0.3)
    turned = dict(angle=angle, shape=shape)
    raster = {
        "plate": lambda: shapes.plate(
            centre, length=size, width=width, thickness_cm=1.0, corner_radius=width / 4, **turned
        ),
        "polygon": lambda: shapes.polygon(
            [shapes.rounded_rect_contour(size, width, 0.0)], center=centre, thickness_cm=1.0, **turned
        ),
        "cylinder": lambda: shapes.cylinder(centre, length=size, radius=width / 2, pixel_mm=1.0, level=0.5, **turned),
        "ellipsoid": lambda: shapes.ellipsoid(centre, semi_axes=(size / 2, width / 2), depth_cm=2.0, **turned),
        "slab": lambda: shapes.textured_slab(
            np.random.default_rng(0), centre, length=size, width=width, thickness_cm=1.0, edge_jitter=2.0, **turned
        ),
        "disc": lambda: shapes.disc(centre, radius=size / 2, thickness_cm=1.0, shape=shape, inner_radius=width / 4),
    }[kind]()
    if raster is None:
        return
    (r0, c0, r1, c1), t = raster
    assert 0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]
    assert t.shape == (r1 - r0, c1 - c0) and t.dtype == np.float32
    assert np.isfinite(t).all() and (t >= 0).all() and (t > 0).any()


# --------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------


def test_threat_annotations_describe_each_group(threat_bags: list[Scene]) -> None:
    for scene in threat_bags[:80]:
        groups = _groups(scene)
        anns = threat_annotations(scene, DENSITY)
        assert len(anns) == len(groups)
        for ann in anns:
            parts = groups[ann["group"]]
            r0, c0, r1, c1 = ann["bbox_rc"]
            assert 0 <= r0 < r1 <= scene.shape[0] and 0 <= c0 < c1 <= scene.shape[1]
            assert ann["mask"].shape == (r1 - r0, c1 - c0) and ann["mask"].dtype == bool and ann["mask"].any()
            assert ann["dicos_category"] == THREAT_CATEGORIES[ann["category"]]
            assert ann["parts"] == len(parts)
            assert ann["materials"] == sorted({p.material for p in parts})
            masses = [object_mass_g(p, p.density_g_cm3 or DENSITY[p.material], scene.pixel_mm) for p in parts]
            assert ann["mass_g"] == pytest.approx(sum(masses))
            assert 0.0 <= ann["occluded_fraction"] <= 1.0


def test_occluded_fraction_counts_clutter_not_the_shell() -> None:
    shape = (100, 100)

    def plate(centre: tuple[float, float], length: float, width: float, thickness: float) -> tuple:
        return shapes.plate(centre, length=length, width=width, thickness_cm=thickness, shape=shape)

    knife = SceneObject("knife", "steel", *plate((50.0, 50.0), 40.0, 10.0, 0.2), group=1)
    shell = SceneObject("bag_shell", "nylon", *plate((50.0, 50.0), 90.0, 90.0, 0.3))
    book = SceneObject("book", "cellulose", *plate((50.0, 40.0), 20.0, 60.0, 2.0))
    alone = threat_annotations(Scene("bag", shape, 1.0, [shell, knife]), DENSITY)
    (half,) = threat_annotations(Scene("bag", shape, 1.0, [shell, knife, book]), DENSITY)
    assert alone[0]["occluded_fraction"] == 0.0
    assert half["occluded_fraction"] == pytest.approx(0.5, abs=0.06)
    assert half["mass_g"] == pytest.approx(7.85 * 4 * 1 * 0.2, rel=0.01)


# --------------------------------------------------------------------------
# Cargo
# --------------------------------------------------------------------------


def _iso6346_ok(number: str) -> bool:
    """Independent ISO 6346 check: letters A=10 upwards skipping 11, 22, 33; weights 2**i."""
    if len(number) != 11 or not (number[:4].isalpha() and number[:4].isupper() and number[4:].isdigit()):
        return False
    values, v = {}, 10
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if v % 11 == 0:
            v += 1
        values[letter] = v
        v += 1
    total = sum((values[ch] if ch.isalpha() else int(ch)) * 2**i for i, ch in enumerate(number[:10]))
    return total % 11 % 10 == int(number[10])


def test_iso6346_reference_number() -> None:
    assert _iso6346_ok("CSQU3054383")  # the standard's worked example
    assert not _iso6346_ok("CSQU3054384")


def test_container_numbers_are_valid(containers: list[Scene]) -> None:
    for scene in containers:
        assert _iso6346_ok(scene.manifest["container_number"]), scene.manifest["container_number"]
        assert scene.manifest["container_number"][3] == "U"


def test_manifests_tell_the_truth_or_the_declared_mismatch(containers: list[Scene]) -> None:
    seen = set()
    for scene in containers:
        declared, truth = scene.manifest, scene.manifest_truth
        kind = truth["mismatch"]
        seen.add(kind)
        true_gross = truth["cargo_kg"] + declared["tare_kg"]
        assert truth["gross_kg"] == pytest.approx(true_gross, rel=1e-3)  # gross = cargo + tare
        off = abs(declared["gross_kg"] - true_gross) / true_gross
        goods = set(truth["goods"])
        if kind == "none":
            assert off <= 0.05
            assert (declared["goods"] == "empty") == (not goods)
            if goods:
                assert goods == {declared["goods"]}
        elif kind == "wrong_weight":
            assert off > 0.20 and goods == {declared["goods"]}
        elif kind == "false_empty":
            assert declared["goods"] == "empty" and goods and truth["cargo_kg"] > 100.0
        else:
            assert declared["goods"] in goods and len(goods) >= 2
        assert goods <= set(GOODS_TYPES) | {"narcotics"}
        has_drugs = any(o.category == "narcotics" for o in scene.objects)
        assert has_drugs == ("narcotics" in goods)
    assert seen == set(MISMATCH_TYPES)


def test_containers_fit_the_view_and_lie_along_the_rows(containers: list[Scene]) -> None:
    for scene in containers:
        assert scene.pixel_mm == CARGO_SMALL["pixel_mm"]  # 12.2 x 3.2 m holds a 40 ft box
        walls = [o for o in scene.objects if o.category == "container_shell"]
        r0, c0 = min(o.box[0] for o in walls), min(o.box[1] for o in walls)
        r1, c1 = max(o.box[2] for o in walls), max(o.box[3] for o in walls)
        length_m, height_m = (r1 - r0) * scene.pixel_mm / 1000, (c1 - c0) * scene.pixel_mm / 1000
        assert height_m == pytest.approx(2.59, abs=0.1)
        expected = 6.06 if scene.manifest["size"] == "20ft" else 12.19
        assert length_m == pytest.approx(expected, abs=0.1)
    assert {s.manifest["size"] for s in containers} == {"20ft", "40ft"}


def test_cargo_mass_is_the_objects_mass(containers: list[Scene]) -> None:
    from nii.simulate.scenes import _NOMINAL_DENSITY_G_CM3 as nominal

    for scene in containers[:20]:
        goods = [o for o in scene.objects if not o.category.endswith("_shell")]
        kg = sum(object_mass_g(o, o.density_g_cm3 or nominal[o.material], scene.pixel_mm) for o in goods) / 1000
        assert scene.manifest_truth["cargo_kg"] == pytest.approx(kg)
        if goods:
            assert 50.0 < kg < 30000.0  # a 20 ft box carries up to ~28 t


def test_rates_are_validated() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        cargo_scene(rng, empty_rate=0.8, mismatch_rate=0.5)
    with pytest.raises(ValueError):
        bag_scene(rng, kind="crate")
    with pytest.raises(ValueError):
        bag_scene(rng, threat_rate=1.5)


# --------------------------------------------------------------------------
# CT
# --------------------------------------------------------------------------


def test_ct_scenes_are_valid_and_hold_threats() -> None:
    for seed in range(6):
        scene = ct_scene(np.random.default_rng(seed), threat_rate=1.0)
        for o in scene.objects:
            z0, y0, x0, z1, y1, x1 = o.box
            assert 0 <= z0 < z1 <= scene.shape[0] and 0 <= y0 < y1 <= scene.shape[1] and 0 <= x0 < x1 <= scene.shape[2]
            assert o.occupancy.dtype == np.float32 and o.occupancy.shape == (z1 - z0, y1 - y0, x1 - x0)
            assert o.occupancy.min() >= 0.0 and o.occupancy.max() <= 1.0 and o.occupancy.max() > 0
            assert o.material in MATERIALS
        anns = volume_threat_annotations(scene, DENSITY)
        assert anns and len(anns) == len(_groups(scene))
        for ann in anns:
            assert ann["dicos_category"] == THREAT_CATEGORIES[ann["category"]] and ann["mass_g"] > 0
            z0, y0, x0, z1, y1, x1 = ann["box_zyx"]
            assert 0 <= z0 < z1 <= scene.shape[0] and 0 <= y0 < y1 <= scene.shape[1] and 0 <= x0 < x1 <= scene.shape[2]
            if ann["category"] == "explosive":
                assert all(1.5 <= o.density_g_cm3 <= 1.9 for o in scene.objects if o.material == "explosive")


def test_ct_threat_rate_zero() -> None:
    for seed in range(10):
        assert not any(o.is_threat for o in ct_scene(np.random.default_rng(seed), threat_rate=0.0).objects)
