"""Physics and scanner models: attenuation, spectra, polychromatic transmission.

References are computed here straight from xraydb (Elam tables) or quoted
from NIST XCOM, never through the code under test.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import xraydb

from nii.simulate import physics
from nii.simulate.physics import (
    MATERIALS,
    Material,
    effective_z,
    linac_spectrum,
    linear_attenuation,
    mass_attenuation,
    transmission_direct,
    tube_spectrum,
)
from nii.simulate.scanner import effective_energy_kev, list_scanners, load_scanner, transmission

BUNDLED = Path(physics.__file__).parent / "scanners"


def xraydb_mu(parts: dict[str, float], density: float, energies_kev) -> np.ndarray:
    """Linear attenuation (1/cm) of a mixture by mass fraction, from xraydb alone."""
    e_ev = np.asarray(energies_kev, dtype=float) * 1e3
    return density * sum(w * xraydb.material_mu(f, e_ev, density=1.0) for f, w in parts.items())


WATER = ({"H2O": 1.0}, 1.0)
STEEL = ({"Fe": 0.98, "C": 0.01, "Mn": 0.01}, 7.85)
# The product issue's check: 1 cm of water, 1 mm of steel.
SLABS = [("water", *WATER, 1.0), ("steel", *STEEL, 0.1)]


@pytest.fixture(scope="module")
def baggage():
    return load_scanner("baggage-dual-kvp")


@pytest.fixture(scope="module")
def baggage_fine(tmp_path_factory):
    """The baggage scanner on a uniform 0.25 keV grid: the accuracy reference."""
    text = (BUNDLED / "baggage-dual-kvp.toml").read_text()
    text = re.sub(r"(?m)^segments_kev = .*$", "segments_kev = [[16, 160, 0.25]]", text)
    path = tmp_path_factory.mktemp("scanner") / "fine.toml"
    path.write_text(text)
    return load_scanner(path)


def r_value(trans: np.ndarray) -> np.ndarray:
    """Dual-energy ratio R = ln T_low / ln T_high."""
    return np.log(trans[0]) / np.log(trans[1])


# -- the product issue's physics check ---------------------------------------------


@pytest.mark.parametrize(("name", "parts", "density", "cm"), SLABS)
def test_monochromatic_60kev_matches_xraydb(name, parts, density, cm):
    expected = np.exp(-xraydb_mu(parts, density, [60.0])[0] * cm)
    ours = np.exp(-linear_attenuation(name, 60.0) * cm)
    direct = transmission_direct({name: density * cm}, energies_kev=[60.0], weights=[1.0])
    assert ours == pytest.approx(expected, rel=0.01)
    assert direct == pytest.approx(expected, rel=0.01)
    # The fast path, on a one-bin 60 keV "scanner".
    mono = dataclasses.replace(
        load_scanner("baggage-dual-kvp"),
        energies_kev=np.array([60.0]),
        channel_weights=np.array([[1.0]]),
        channel_names=("mono",),
    )
    fast = transmission(np.array([[density * cm]], np.float32), [name], mono)
    assert fast.shape == (1, 1)
    assert fast[0, 0] == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(("name", "parts", "density", "cm"), SLABS)
def test_spectrum_transmission_matches_xraydb(baggage, baggage_fine, name, parts, density, cm):
    # Reference: the scanner's channel signal on a 0.25 keV grid, attenuated
    # with xraydb's own coefficients.
    w = baggage_fine.channel_weights
    expected = (w * np.exp(-xraydb_mu(parts, density, baggage_fine.energies_kev) * cm)).sum(1) / w.sum(1)
    areal = np.full((1, 3, 5), density * cm, np.float32)
    fast = transmission(areal, [name], baggage)
    assert fast.shape == (2, 3, 5) and fast.dtype == np.float32
    np.testing.assert_allclose(fast[:, 1, 2], expected, rtol=0.01)
    direct = transmission_direct(
        {name: density * cm}, energies_kev=baggage.energies_kev, weights=baggage.channel_weights
    )
    np.testing.assert_allclose(direct, expected, rtol=0.01)
    # Same energy grid, same weights: the fast path is the direct sum.
    same_grid = (baggage.channel_weights * np.exp(-xraydb_mu(parts, density, baggage.energies_kev) * cm)).sum(1)
    np.testing.assert_allclose(fast[:, 0, 0], same_grid / baggage.channel_weights.sum(1), rtol=1e-4)


def test_coarse_grid_is_accurate_for_thick_stacks(baggage, baggage_fine):
    # The 32-bin grid against 0.25 keV bins, for mixtures and thicker slabs.
    materials = ["water", "aluminium", "steel", "lead"]
    areal = np.array([[20.0, 0, 0, 0], [0, 13.5, 0, 0], [0, 0, 2.4, 0], [0, 0, 0, 0.57], [10.0, 2.7, 0.8, 0.0]],
                     np.float32).T
    coarse = transmission(areal, materials, baggage)
    fine = transmission(areal, materials, baggage_fine)
    np.testing.assert_allclose(coarse, fine, rtol=0.01)


# -- transmission: fast path behaviour ------------------------------------------------


def test_transmission_air_is_one_and_mixed_blocks_agree(baggage):
    rng = np.random.default_rng(3)
    areal = rng.random((3, 40, 200), dtype=np.float32)
    areal[:, rng.random((40, 200)) < 0.7] = 0  # mostly air: the gathered path
    areal[:, :12] = 0  # whole blocks of air
    materials = ["water", "aluminium", "pvc"]
    fast = transmission(areal, materials, baggage)
    assert np.all(fast[:, areal.max(0) == 0] == 1.0)
    direct = transmission_direct(dict(zip(materials, areal)), energies_kev=baggage.energies_kev,
                                 weights=baggage.channel_weights)
    np.testing.assert_allclose(fast, direct, rtol=2e-5)
    assert np.all(transmission(np.zeros((0, 4, 4), np.float32), [], baggage) == 1.0)


@pytest.mark.parametrize("bad", [-0.1, np.nan, np.inf])
def test_transmission_refuses_bad_areal_density(baggage, bad):
    areal = np.ones((1, 4, 4), np.float32)
    areal[0, 2, 2] = bad
    with pytest.raises(ValueError, match="areal_density_g_cm2"):
        transmission(areal, ["water"], baggage)
    with pytest.raises(ValueError, match="len\\(materials\\)"):
        transmission(np.ones((2, 4, 4), np.float32), ["water"], baggage)
    with pytest.raises(ValueError, match="material"):
        transmission(np.ones((1, 4, 4), np.float32), ["kryptonite"], baggage)


# -- beam hardening and dual-energy ratios ----------------------------------------------


def test_beam_hardening_in_aluminium(baggage):
    cm = np.array([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    trans = transmission((cm * MATERIALS["aluminium"].density_g_cm3)[None].astype(np.float32), ["aluminium"], baggage)
    effective_mu = -np.log(trans) / cm  # 1/cm, per channel
    assert np.all(np.diff(effective_mu, axis=1) < 0)
    r = r_value(trans)
    assert np.all(np.diff(r) < 0)
    assert np.all((1.3 <= r) & (r <= 3.5))
    # Tuned to typical dual-kVp values (R ~ 2.3 at 1 cm, ~1.8 at 5 cm).
    assert r[1] == pytest.approx(2.3, abs=0.2)
    assert r[4] == pytest.approx(1.8, abs=0.2)


@pytest.mark.parametrize("areal", [0.5, 1.0, 2.0])
def test_r_orders_materials_on_the_dual_kvp_scanner(baggage, areal):
    names = ["water", "aluminium", "iron", "lead"]
    r = {n: float(r_value(transmission(np.array([[areal]], np.float32), [n], baggage))[0]) for n in names}
    assert r["iron"] > r["aluminium"] > r["water"]
    # Lead's K edge (88 keV) sits inside the 160 kVp channel, so its high
    # channel attenuates strongly and R falls below iron's; it stays above
    # water's only for thin lead.
    assert r["water"] < r["lead"] < r["iron"]


def test_r_orders_materials_on_the_cargo_scanner():
    # At MeV, Compton (per electron) dominates light cargo and pair
    # production (Z^2) heavy cargo, so R falls with Z.
    cargo = load_scanner("cargo-linac")
    for areal in (50.0, 100.0):
        r = {n: float(r_value(transmission(np.array([[areal]], np.float32), [n], cargo))[0])
             for n in ("water", "aluminium", "iron", "lead")}
        assert r["water"] > r["aluminium"] > r["iron"] > r["lead"] > 1.0


# -- materials ---------------------------------------------------------------------------


def test_every_material_has_positive_finite_attenuation():
    energies = np.geomspace(10.0, 6000.0, 200)
    required = {"air", "nylon", "polyester", "cotton", "cellulose", "leather", "rubber", "water", "pet", "abs",
                "pvc", "polyethylene", "pom", "pmma", "wood", "glass", "pcb", "li_ion", "aluminium", "steel",
                "iron", "copper", "brass", "nickel", "lead", "zirconia", "explosive", "narcotic"}
    assert required <= set(MATERIALS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # xraydb's "> 800 keV" warning must not escape
        for name, material in MATERIALS.items():
            mu = mass_attenuation(name, energies)
            assert np.all(np.isfinite(mu)) and np.all(mu > 0), name
            assert material.density_g_cm3 > 0 and material.description


def test_materials_are_read_only_and_refuse_bad_compositions():
    with pytest.raises(TypeError):
        MATERIALS["water"] = MATERIALS["air"]  # type: ignore[index]
    for bad in ("Fe:0.5,C:0.2", "h2o", "Fe:x", "Xx2"):
        with pytest.raises(ValueError, match="composition"):
            mass_attenuation(Material("bad", bad, 1.0, "bad"), 60.0)
    with pytest.raises(ValueError, match="material"):
        mass_attenuation("unobtainium", 60.0)
    with pytest.raises(ValueError, match="energies_kev"):
        mass_attenuation("water", [0.1])


def test_mixture_is_mass_weighted():
    brass = 0.7 * xraydb.material_mu("Cu", 60e3, density=1.0) + 0.3 * xraydb.material_mu("Zn", 60e3, density=1.0)
    assert mass_attenuation("brass", 60.0) == pytest.approx(brass, rel=1e-9)
    assert linear_attenuation("brass", 60.0, density_g_cm3=4.0) == pytest.approx(4.0 * brass, rel=1e-9)


@pytest.mark.parametrize(("name", "zeff"), [("water", 7.4), ("explosive", 7.1), ("aluminium", 13.0), ("iron", 26.0)])
def test_effective_z(name, zeff):
    assert effective_z(name) == pytest.approx(zeff, abs=0.5)


# NIST XCOM total attenuation with coherent scattering, cm^2/g.
XCOM = [
    ("water", 1000, 0.0707), ("water", 4000, 0.0340), ("water", 6000, 0.0277),
    ("lead", 1000, 0.0710), ("lead", 4000, 0.0420), ("lead", 6000, 0.0439),
    ("iron", 4000, 0.0331),
]


@pytest.mark.parametrize(("name", "kev", "xcom"), XCOM)
def test_mev_attenuation_matches_xcom(name, kev, xcom):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mass_attenuation(name, kev) == pytest.approx(xcom, rel=0.05)


def test_mev_model_joins_elam_at_800kev():
    for name in ("water", "iron", "lead"):
        below, at, above = mass_attenuation(name, [799.0, 800.0, 801.0])
        assert above == pytest.approx(at, rel=0.005) and below == pytest.approx(at, rel=0.005)
        elam = xraydb_mu({MATERIALS[name].composition: 1.0}, 1.0, [800.0])[0]
        assert at == pytest.approx(elam, rel=1e-9)


# -- spectra ----------------------------------------------------------------------------


def test_tube_spectrum_ends_at_kvp_and_has_k_lines_only_above_the_edge():
    e = np.arange(10.25, 200, 0.5)
    for kvp in (60.0, 160.0):
        s = tube_spectrum(kvp, energies_kev=e, filtration_mm={"aluminium": 2.5})
        assert np.all(s[e - 0.25 >= kvp] == 0) and np.all(s[e < kvp - 1] > 0)

    def line_contrast(s: np.ndarray, line: float) -> float:
        i = int(np.searchsorted(e + 0.25, line))
        return float(s[i] / np.mean(s[[i - 6, i + 6]]))  # neighbours 3 keV away, clear of other lines

    s160 = tube_spectrum(160.0, energies_kev=e, filtration_mm={"aluminium": 2.5})
    for line in (59.32, 57.98, 67.24):
        assert line_contrast(s160, line) > 1.5
    s60 = tube_spectrum(60.0, energies_kev=e, filtration_mm={"aluminium": 2.5})
    s69 = tube_spectrum(69.0, energies_kev=e, filtration_mm={"aluminium": 2.5})
    for line in (57.98, 59.32):
        assert line_contrast(s60, line) < 1.1 and line_contrast(s69, line) < 1.1


def test_filtration_hardens():
    e = np.arange(10.5, 160, 1.0)

    def mean_energy(filtration):
        s = tube_spectrum(160.0, energies_kev=e, filtration_mm=filtration)
        return float((s * e).sum() / s.sum())

    means = [mean_energy(f) for f in (None, {"aluminium": 2.5}, {"aluminium": 2.5, "copper": 0.5},
                                      {"aluminium": 2.5, "copper": 2.0})]
    assert np.all(np.diff(means) > 0)
    with pytest.raises(ValueError, match="filtration_mm"):
        tube_spectrum(160.0, energies_kev=e, filtration_mm={"copper": -1.0})
    with pytest.raises(ValueError, match="kvp"):
        tube_spectrum(10.0, energies_kev=e)


def test_linac_spectrum_end_point_and_hardness():
    e = np.arange(50.0, 8000.0, 100.0)
    four, six = (linac_spectrum(mv, energies_kev=e, filtration_mm={"tungsten": 1.5}) for mv in (4.0, 6.0))
    assert np.all(four[e - 50 >= 4000] == 0) and np.all(four[(e > 500) & (e < 3800)] > 0)
    assert (six * e).sum() / six.sum() > (four * e).sum() / four.sum()


# -- scanners ----------------------------------------------------------------------------


def test_all_bundled_scanners_load():
    names = list_scanners()
    assert {"baggage-dual-kvp", "parcel-sandwich", "cargo-linac", "ct-baggage"} <= set(names)
    for name in names:
        s = load_scanner(name)
        assert s.name == name
        assert s.channel_weights.shape == (len(s.channel_names), s.energies_kev.size)
        assert np.all(s.channel_weights >= 0) and np.all(np.diff(s.energies_kev) > 0)
        assert len(s.nominal_kv) == len(s.air_counts) == len(s.dark_counts) == len(s.channel_names)
        for c in range(len(s.channel_names)):
            assert s.energies_kev[0] < effective_energy_kev(s, c) < s.energies_kev[-1]
    sandwich = load_scanner("parcel-sandwich")
    assert sandwich.nominal_kv == (160.0, 160.0)
    assert effective_energy_kev(sandwich, "high") > effective_energy_kev(sandwich, "low")
    ct = load_scanner("ct-baggage")
    assert ct.kind == "ct" and len(ct.ct_voxel_mm) == 3


def test_unknown_scanner_lists_valid_names():
    with pytest.raises(ValueError, match="unknown scanner 'nope'.*baggage-dual-kvp.*parcel-sandwich"):
        load_scanner("nope")


@pytest.mark.parametrize(
    ("pattern", "replacement", "key"),
    [
        (r"(?m)^bits = 16$", "bits = 20", "detector.bits"),
        (r"kvp = 80,", "kvp = -80,", "channels[0].source.kvp"),
        (r"copper = 1.0", "kryptonite = 1.0", "channels[1].source.filtration_mm.kryptonite"),
        (r"(?m)^elements = 1024$", "elements = 1024\nsparkle = 1", "detector.sparkle"),
        (r"(?m)^gain_nonuniformity = .*$", "gain_nonuniformity = \"lots\"", "detector.gain_nonuniformity"),
        (r"(?m)^segments_kev = .*$", "segments_kev = [[16, 40, 7]]", "energy_grid.segments_kev[0]"),
        (r"(?m)^air_counts = 42000$", "air_counts = 70000", "channels[1].air_counts"),
        (r'source = \{ type = "tube", kvp = 80,', "source = { kvp = 80,", "channels[0].source.type"),
        (r'(?m)^kind = "line"$', 'kind = "ct"', "ct"),
    ],
)
def test_bad_toml_value_is_refused_naming_the_key(tmp_path, pattern, replacement, key):
    text = (BUNDLED / "baggage-dual-kvp.toml").read_text()
    changed = re.sub(pattern, replacement, text, count=1)
    assert changed != text
    path = tmp_path / "bad.toml"
    path.write_text(changed)
    with pytest.raises(ValueError, match=re.escape(f"'{key}'")) as info:
        load_scanner(path)
    assert "\n" not in str(info.value)


def test_broken_toml_and_missing_file_are_value_errors(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_scanner(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_scanner(tmp_path / "absent.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "Gepäck"\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin}: the scanner file is not valid TOML"):
        load_scanner(latin)
