"""Physics rules: each on hand-made arrays with known answers, then against the
simulator's exact truth with the issue's floors, and through the registry and CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nii.calibrate.calibrated import CalibratedScan, classify_zeff
from nii.cli import main
from nii.detect.metrics import box_overlap
from nii.detect.regions import ModelIdentity
from nii.detect.registry import MODELS_ROOT, list_models, load_detector, open_artifact
from nii.detect.rule_registry import publish_rules
from nii.detect.rules import (
    CTDensityRule,
    ExplosiveMassRule,
    ManifestRule,
    OpaqueRule,
    RuleDetector,
    ShieldingRule,
    build_rule,
)
from nii.detect.train import simulated_set
from nii.detect.truth import evaluate_against_truth, read_truth
from nii.scan import Scan, ScanKind

PIXEL_MM = 1.0  # 1 mm pixels: 100 pixels are 1 cm^2
IDENTITY = ModelIdentity("rule-test", "0", "0" * 64)


def _projection(zeff: np.ndarray, areal: np.ndarray, opaque: np.ndarray | None = None,
                metadata: dict | None = None) -> CalibratedScan:
    opaque = np.zeros(zeff.shape, bool) if opaque is None else opaque
    attenuation = np.stack([areal * 0.3, areal * 0.2]).astype(np.float32)
    scan = Scan(np.ones((2, *zeff.shape), np.uint16), kind="dual_energy", metadata=metadata or {})
    return CalibratedScan(scan, attenuation, opaque, (PIXEL_MM, PIXEL_MM), "test/1/abc", zeff=zeff.astype(np.float32),
                          areal_density_g_cm2=areal.astype(np.float32), material_class=classify_zeff(zeff, opaque))


def _bag(shape=(300, 400)) -> tuple[np.ndarray, np.ndarray]:
    """Clothes all over: Zeff 6.5 at 1 g/cm^2."""
    return np.full(shape, 6.5, np.float32), np.full(shape, 1.0, np.float32)


def test_opaque_rule_flags_large_opaque_regions_only():
    zeff, areal = _bag()
    opaque = np.zeros(zeff.shape, bool)
    opaque[50:110, 50:150] = True  # 60 cm^2
    opaque[200:220, 300:320] = True  # 4 cm^2: a battery end, not alarmed
    findings = OpaqueRule(min_area_cm2=20.0).find(_projection(zeff, areal, opaque))
    assert len(findings) == 1
    assert findings[0].box == (50.0, 50.0, 150.0, 110.0)
    assert findings[0].measurements["area_cm2"] == pytest.approx(60.0)
    assert "opaque region 60 cm2" in findings[0].explanation


def test_explosive_rule_measures_net_mass_zeff_and_says_why():
    zeff, areal = _bag()
    zeff[100:200, 100:200] = 7.2  # a 100 cm^2 sheet, 4 g/cm^2 over the clothes: 400 g
    areal[100:200, 100:200] += 4.0
    rule = ExplosiveMassRule(zeff_min=6.9, zeff_max=7.6, min_areal_density_g_cm2=3.0, min_mass_g=100.0)
    (finding,) = rule.find(_projection(zeff, areal))
    assert finding.measurements["mass_g"] == pytest.approx(400.0, rel=0.05)
    assert finding.measurements["zeff"] == pytest.approx(7.2, abs=0.01)
    assert re.match(r"organic mass (39\d|40\d) g, Zeff 7\.2, areal density 4\.0 g/cm2", finding.explanation)
    # Same mass at a metal's Zeff, or too light a mass: nothing.
    assert ExplosiveMassRule(min_mass_g=500.0).find(_projection(zeff, areal)) == []
    zeff[100:200, 100:200] = 14.0
    assert rule.find(_projection(zeff, areal)) == []


def test_shielding_rule_needs_dense_metal_and_mass():
    zeff, areal = _bag()
    opaque = np.zeros(zeff.shape, bool)
    opaque[50:110, 50:110] = True  # 36 cm^2 of lead: areal at the cap, 23 g/cm^2
    areal[opaque] = 23.0
    zeff[opaque] = 82.0
    zeff[150:250, 200:300] = 13.0  # aluminium tray: light metal, does not count
    areal[150:250, 200:300] = 12.0
    (finding,) = ShieldingRule().find(_projection(zeff, areal, opaque))
    assert finding.box == (50.0, 50.0, 110.0, 110.0)
    assert finding.measurements["mass_g"] == pytest.approx(36 * 23.0, rel=0.01)
    assert finding.measurements["opaque_fraction"] == pytest.approx(1.0)
    assert "consistent with shielding" in finding.explanation


def _container(cargo_g_cm2: float, *, manifest: dict | None, steel_g_cm2: float = 0.0) -> CalibratedScan:
    """A 10 m x 2.5 m container at 5 mm pixels: walls 2 g/cm^2, organic goods
    (Zeff 7) in the middle and, where asked, a block of steel beside them."""
    areal = np.zeros((2400, 640), np.float32)
    zeff = np.full(areal.shape, 7.0, np.float32)
    areal[200:2200, 60:560] = 2.0  # both side walls, everywhere inside
    areal[1000:1400, 300:500] += cargo_g_cm2  # 2 m x 1 m of goods
    areal[1400:1600, 300:500] += steel_g_cm2  # 1 m x 1 m of steel
    zeff[1400:1600, 300:500] = 26.0 if steel_g_cm2 else 7.0
    scan = _projection(zeff, areal, metadata={"manifest": manifest} if manifest else {})
    return CalibratedScan(scan.scan, scan.attenuation, scan.opaque, (5.0, 5.0), scan.profile_id, scan.zeff,
                          scan.areal_density_g_cm2, scan.material_class)


def test_manifest_rule_flags_wrong_weight_and_false_empty():
    # 200 x 100 cm of goods at 50 g/cm^2 = 1000 kg of cargo.
    honest = {"goods": "textiles", "gross_kg": 3200.0, "tare_kg": 2200.0}
    assert ManifestRule().find(_container(50.0, manifest=honest)) == []
    (light,) = ManifestRule().find(_container(50.0, manifest={**honest, "gross_kg": 2500.0}))
    assert light.measurements["estimated_cargo_kg"] == pytest.approx(1000.0, rel=0.02)
    assert light.measurements["weight_difference"] == pytest.approx(2500 / 3200 - 1, abs=0.01)
    assert "declared gross 2500 kg" in light.explanation
    (empty,) = ManifestRule().find(_container(50.0, manifest={"goods": "empty", "gross_kg": 2200.0,
                                                              "tare_kg": 2200.0}))
    assert "declared empty" in empty.explanation
    assert ManifestRule().find(_container(50.0, manifest=None)) == []  # no declaration, nothing to check


def test_manifest_rule_flags_a_material_mix_the_declared_goods_cannot_have():
    # 1000 kg of organic goods and 500 kg of steel behind a declaration whose
    # weight is right: only the material mix gives it away.
    declared = {"goods": "textiles", "gross_kg": 3700.0, "tare_kg": 2200.0}
    (mixed,) = ManifestRule().find(_container(50.0, steel_g_cm2=50.0, manifest=declared))
    assert mixed.measurements["inorganic_share"] == pytest.approx(1 / 3, abs=0.01)
    assert "declared textiles, but 33% of the cargo mass is at Zeff 13 or above (expected 0-31%)" in mixed.explanation
    assert "declared gross" not in mixed.explanation  # the weight is not what fired
    # Machinery is mostly steel: the same scan is in its band at a wider setting,
    # and all-organic cargo declared as machinery is out of it.
    assert ManifestRule(inorganic_share={"machinery": (0.2, 1.0)}).find(
        _container(50.0, steel_g_cm2=50.0, manifest={**declared, "goods": "machinery"})) == []
    (organic,) = ManifestRule().find(_container(75.0, manifest={**declared, "goods": "machinery"}))
    assert "declared machinery, but 0% of the cargo mass" in organic.explanation
    # Goods types without a band are not checked for mix.
    assert ManifestRule(inorganic_share={}).find(_container(50.0, steel_g_cm2=50.0, manifest=declared)) == []


def test_manifest_material_bands_come_from_the_config():
    rule = build_rule("manifest", {"inorganic_share": {"textiles": [0, 0.5]}})
    assert rule.inorganic_share == {"textiles": [0.0, 0.5]}
    with pytest.raises(ValueError, match="inorganic_share for 'textiles' must be"):
        build_rule("manifest", {"inorganic_share": {"textiles": [0.6, 0.5]}})
    with pytest.raises(ValueError, match="threshold weight_tolerance must be a number"):
        build_rule("manifest", {"weight_tolerance": "lots"})


def test_ct_density_rule_segments_in_3d_and_weighs():
    hu = np.full((40, 64, 64), -1000.0, np.float32)
    hu[10:30, 20:40, 20:50] = 700.0  # 1.7 g/cm^3 block
    hu[5:15, 5:15, 5:15] = 0.0  # water bottle: outside the window
    scan = Scan(np.zeros(hu.shape, np.uint16), kind=ScanKind.CT_VOLUME)
    calibrated = CalibratedScan(scan, hu, np.zeros(hu.shape, bool), (2.0, 2.0, 2.0), "test/1/abc")
    (finding,) = CTDensityRule().find(calibrated)
    volume_cm3 = 20 * 20 * 30 * 0.008
    assert finding.box == (20.0, 20.0, 10.0, 50.0, 40.0, 30.0)
    assert finding.measurements["mass_g"] == pytest.approx(1.7 * volume_cm3, rel=0.15)  # the opening trims edges
    assert finding.measurements["density_g_cm3"] == pytest.approx(1.7, abs=0.01)


def test_rules_refuse_scans_they_cannot_judge_in_one_line():
    zeff, areal = _bag()
    single = CalibratedScan(Scan(np.ones(zeff.shape, np.uint16), kind="single_energy"),
                            areal[None], np.zeros(zeff.shape, bool), (1.0, 1.0), "t")
    with pytest.raises(ValueError, match="dual-energy"):
        ExplosiveMassRule().find(single)
    with pytest.raises(ValueError, match="CT volumes"):
        CTDensityRule().find(_projection(zeff, areal))
    with pytest.raises(ValueError, match="unknown rule"):
        build_rule("tarot")
    with pytest.raises(ValueError, match="has no threshold min_mas"):
        build_rule("explosive", {"min_mas": 1})


def test_rule_detector_regions_carry_identity_explanation_and_measurements():
    zeff, areal = _bag()
    zeff[100:200, 100:200] = 7.2
    areal[100:200, 100:200] += 4.0
    (region,) = RuleDetector(ExplosiveMassRule(), IDENTITY).detect(_projection(zeff, areal))
    record = region.to_dict()
    assert record["class"] == "explosive" and record["dicos_category"] == "EXPLOSIVE"
    assert record["model"]["name"] == "rule-test"
    assert record["explanation"].startswith("organic mass")
    assert record["measurements"]["mass_g"] == pytest.approx(400.0, rel=0.05)
    assert region.mask.sum() == pytest.approx(100 * 100, rel=0.01)  # the opening rounds the corners


def test_box_overlap_is_over_the_smaller_box():
    assert box_overlap((0, 0, 10, 10), (0, 0, 5, 5)) == 1.0
    assert box_overlap((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_overlap((0, 0, 0, 2, 2, 2), (1, 1, 1, 3, 3, 3)) == pytest.approx(1 / 8)


# -- floors on simulated scans with exact truth --------------------------------
# Fresh seeds, not the ones the thresholds were set on (configs/rules.toml).
# Floors from the issue: opaque regions and shielding Pd >= 0.95; explosive-
# like masses >= 100 g Pd >= 0.9 at Pfa <= 0.05; manifest weight mismatches
# over 20% Pd >= 0.9.

@pytest.fixture(scope="module")
def floor_sets(tmp_path_factory) -> dict[str, list]:
    cache = tmp_path_factory.mktemp("rule-sets")
    specs = {
        "bags": {"scanner": "baggage-dual-kvp", "n": 80, "seed": 3101, "threat_rate": 0.7},
        "cargo": {"scanner": "cargo-linac", "n": 100, "seed": 3102},
        "ct": {"scanner": "ct-baggage", "n": 100, "seed": 3103, "threat_rate": 0.6},
    }
    return {name: read_truth(simulated_set(spec, cache=cache, progress=False)) for name, spec in specs.items()}


def _shipped(name: str) -> RuleDetector:
    return load_detector(name)


@pytest.mark.parametrize("rule", ["rule-opaque", "rule-shielding"])
def test_opaque_and_shielding_rules_meet_their_pd_floor(floor_sets, rule):
    result = evaluate_against_truth(_shipped(rule), floor_sets["bags"], targets=["shielding"], progress=False)
    assert result["n_target"] >= 8
    assert result["pd"] >= 0.95, result
    assert result["pfa"] <= 0.10, result


def test_ct_explosive_rule_meets_the_explosive_floor(floor_sets):
    result = evaluate_against_truth(_shipped("rule-ct-density"), floor_sets["ct"], targets=["explosive"],
                                    min_mass_g=100.0, progress=False)
    assert result["n_target"] >= 10 and result["n_clear"] >= 20
    assert result["pd"] >= 0.9, result
    assert result["pfa"] <= 0.05, result


@pytest.mark.xfail(strict=True, reason="not met: 2D dual-energy cannot tell a charge from water bottles and gels "
                                        "(Zeff 7.2 against 7.4) under clutter; measured Pd 0.40 at Pfa 0.44 on "
                                        "bags-heldout (models/rule-explosive/1.0.0/card.json)")
def test_2d_explosive_rule_meets_the_explosive_floor(floor_sets):
    result = evaluate_against_truth(_shipped("rule-explosive"), floor_sets["bags"], targets=["explosive"],
                                    min_mass_g=100.0, progress=False)
    assert result["pd"] >= 0.9 and result["pfa"] <= 0.05, result


def test_manifest_rule_meets_the_weight_floor(floor_sets):
    result = evaluate_against_truth(_shipped("rule-manifest"), floor_sets["cargo"],
                                    targets=["manifest:wrong_weight", "manifest:false_empty",
                                             "manifest:undeclared_goods"], progress=False)
    assert result["pd_by_target"]["manifest:wrong_weight"] >= 0.9, result
    assert result["pd_by_target"]["manifest:false_empty"] >= 0.9, result
    assert result["pfa"] <= 0.05, result


# -- registry and CLI -------------------------------------------------------------

@pytest.mark.parametrize("rule", ["opaque", "shielding", "explosive", "manifest", "ct-density"])
def test_each_rule_is_registered_with_thresholds_and_metrics(rule):
    name = f"rule-{rule}"
    assert name in list_models(MODELS_ROOT)
    card = open_artifact(name).card
    assert card["kind"] == "physics-rule" and card["rule"] == rule
    assert card["parameters"] == {k: v for k, v in vars(build_rule(rule, card["parameters"])).items()}
    assert all("pd" in m and "pfa" in m for m in card["metrics"].values())
    assert any(set_name.endswith("heldout") for set_name in card["metrics"])


def test_pipeline_thresholds_override_the_card():
    detector = load_detector("rule-explosive", min_mass_g=750.0)
    assert detector.rule.min_mass_g == 750.0
    assert detector.identity.name == "rule-explosive"


def test_nii_train_publishes_rules_and_nii_evaluate_judges_them(tmp_path, capsys, monkeypatch):
    # Away from the repository: simulated sets are cached under runs/cache of
    # the working folder, and the scanner profiles must still be found.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "rules.toml"
    config.write_text(
        'version = "0.1.0"\n'
        # Seed 1: two of the six bags hold shielding, so Pd is measured, not None.
        '[sets.tiny]\nscanner = "baggage-dual-kvp"\nn = 6\nseed = 1\nthreat_rate = 1.0\n'
        '[rules.shielding]\ntargets = ["shielding"]\nsets = ["tiny"]\nparameters = { min_mass_g = 400.0 }\n'
        '[rules.opaque]\ntargets = ["shielding"]\nsets = ["tiny"]\n')
    models = tmp_path / "models"
    assert main(["train", str(config), "--models", str(models), "--only", "shielding", "--quiet"]) == 0
    assert "published rule-shielding 0.1.0" in capsys.readouterr().out
    assert set(list_models(models)) == {"rule-shielding"}
    card = open_artifact("rule-shielding", root=models).card
    assert card["parameters"]["min_mass_g"] == 400.0 and card["metrics"]["tiny"]["n_target"] > 0

    data = tmp_path / "runs" / "cache" / "simulated-baggage-dual-kvp-n6-seed1-threat1.0"
    assert main(["evaluate", str(data), "--model", "rule-shielding", "--models", str(models), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "rule-shielding 0.1.0" and result["targets"] == ["shielding"]
    assert result == {**result, "pd": card["metrics"]["tiny"]["pd"]}


def test_nii_evaluate_rule_on_a_non_simulated_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    assert main(["evaluate", str(tmp_path), "--model", "rule-opaque"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nii evaluate: error:") and "truth file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("shape", [(5, 6, 7), (20, 30, 40), (1, 5, 5), (3, 1, 9)])
def test_fast_3d_opening_is_scipys_opening(shape):
    from scipy import ndimage

    from nii.detect.rules import open_6_connected

    mask = np.random.default_rng(sum(shape)).random(shape) < 0.6
    expected = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 1))
    np.testing.assert_array_equal(open_6_connected(mask), expected)


def test_2d_components_match_ndimage_labelling():
    """The OpenCV labelling of 2D masks finds what ndimage.label does, in its order."""
    from scipy import ndimage

    from nii.detect.rules import _components

    rng = np.random.default_rng(0)
    for trial in range(30):
        mask = ndimage.binary_dilation(rng.random((120, 160)) < 0.01, iterations=int(rng.integers(1, 5)))
        if trial % 5 == 0:
            mask = rng.random((120, 160)) < 0.5  # many touching, oddly shaped components
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
        expected = [(box, labels[box] == i) for i, box in enumerate(ndimage.find_objects(labels), 1)
                    if (labels[box] == i).sum() >= 6]
        found = _components(mask, 6)
        assert len(found) == len(expected) > 0
        for (box, inside), (box_expected, inside_expected) in zip(found, expected):
            assert box == box_expected
            np.testing.assert_array_equal(inside, inside_expected)
    assert _components(np.zeros((50, 50), bool), 1) == []
