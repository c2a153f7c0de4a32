"""The shipped models, evaluated on small fixed sets, against floors.

Floors sit below the figures measured when the model was published (its
card holds those), with room for the smaller sets here; a retrained model
that falls under them is a regression.
"""

from __future__ import annotations

import tomllib

import numpy as np
import pytest

from nii.detect.datasets import read_clear, read_coco, read_voc
from nii.detect.evaluate import evaluate_samples
from nii.detect.regions import THREAT_CLASSES
from nii.detect.registry import MODELS_ROOT, list_models, load_detector, open_artifact
from tests.conftest import REPO, shared_data

SHIPPED = "contraband-fcos"
# Each shipped version's config, committed; the newest is what the pipeline runs.
CPU_CONFIG = REPO / "configs" / "contraband-fcos.toml"
GPU_CONFIG = REPO / "configs" / "contraband-fcos-gpu.toml"
FINETUNE_CONFIG = REPO / "configs" / "contraband-fcos-finetune.toml"  # the GPU model trained further on 2 CPU cores
NEWEST_CONFIG = FINETUNE_CONFIG

# The newest, contraband-fcos 1.3.0, measured (card): SIXray val mAP@0.5 0.74,
# Pd 0.85 at Pfa 0.047, AUROC 0.96; held-out synthetic mAP@0.5 0.64, AUROC 0.94.
# The targets (0.85, and Pd 0.95 at Pfa 0.05) are not met. The
# floors sit under those figures with room for the smaller sets here; they
# catch a broken, swapped or older model (1.0.0: mAP 0.17, Pd 0.58).
SIXRAY_MAP50_FLOOR = 0.55
SIXRAY_PD_FLOOR = 0.65
SIXRAY_PFA_CEILING = 0.12
SYNTHETIC_MAP50_FLOOR = 0.35
SYNTHETIC_AUROC_FLOOR = 0.80


@pytest.fixture(scope="module")
def detector():
    return load_detector(SHIPPED, device="cpu")


@pytest.mark.parametrize("config", [CPU_CONFIG, GPU_CONFIG, FINETUNE_CONFIG], ids=["cpu", "gpu", "finetune"])
def test_each_shipped_config_has_its_artifact_with_a_full_card(config):
    version = tomllib.loads(config.read_text())["model"]["version"]
    assert version in list_models(MODELS_ROOT)[SHIPPED]
    artifact = open_artifact(SHIPPED, version)
    assert artifact.read("config.toml") == config.read_bytes(), "the committed config retrains what is shipped"
    card = artifact.card
    assert set(THREAT_CLASSES) <= set(card["classes"])
    assert card["dicos_categories"]["explosive"] == "EXPLOSIVE"
    assert len(card["training"]["data_sha256"]) == 64
    assert 0 < card["operating_points"]["default"]["threshold"] < 1
    assert {"sixray-val", "synthetic-heldout"} <= set(card["metrics"])
    if config == GPU_CONFIG:
        assert card["training"]["device"] == "cuda"
    else:  # 2 CPU cores, at most an hour
        assert card["training"]["threads"] == 2 and card["training"]["device"] == "cpu"
        assert card["training"]["minutes"] <= 60
    if config == FINETUNE_CONFIG:  # it names, by hash, the GPU model it started from
        start = open_artifact(SHIPPED, tomllib.loads(GPU_CONFIG.read_text())["model"]["version"]).identity
        assert card["training"]["init"] == {"name": start.name, "version": start.version, "sha256": start.sha256}


def test_the_pipeline_runs_the_newest_detector():
    versions = list_models(MODELS_ROOT)[SHIPPED]
    newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
    assert open_artifact(SHIPPED).identity.version == newest == tomllib.loads(NEWEST_CONFIG.read_text())["model"]["version"]


def test_shipped_detector_on_fresh_simulated_bags(detector, tmp_path):
    from nii.simulate.engine import simulate_dataset

    # Seed 4242 is in no training or card set.
    samples = read_coco(simulate_dataset(tmp_path, n=40, seed=4242, threat_rate=0.5, progress=False))
    result = evaluate_samples(detector, samples, threshold=detector.operating_points["default"]["threshold"],
                              progress=False)
    assert result["map50"] >= SYNTHETIC_MAP50_FLOOR, result
    assert result["auroc"] >= SYNTHETIC_AUROC_FLOOR, result


def test_shipped_detector_on_real_sixray_val(detector):
    root = shared_data("sixray-subset")
    negatives = shared_data("sixray-negatives")
    boxed = read_voc(root, "val")[:80]
    clear = read_clear(negatives, 150, 230)  # the half of the clear bags training never saw
    result = evaluate_samples(detector, boxed, clear, threshold=detector.operating_points["default"]["threshold"],
                              progress=False)
    assert result["map50"] >= SIXRAY_MAP50_FLOOR, result
    assert result["pd"] >= SIXRAY_PD_FLOOR and result["pfa"] <= SIXRAY_PFA_CEILING, result


def test_shipped_operating_point_gives_the_cards_false_alarm_rate(detector):
    """At the card's threshold, SIXray val alarms exactly as the card says.

    Catches a threshold stored rounded below a clear bag's score, and
    inference that changed after the card was measured.
    """
    boxed = read_voc(shared_data("sixray-subset"), "val")
    clear = read_clear(shared_data("sixray-negatives"), 150, 300)
    card = open_artifact(SHIPPED).card["metrics"]["sixray-val"]
    result = evaluate_samples(detector, boxed, clear, threshold=detector.operating_points["default"]["threshold"],
                              progress=False)
    assert (result["pd"], result["pfa"]) == (pytest.approx(card["pd"], abs=1e-4), pytest.approx(card["pfa"], abs=1e-4))


def test_shipped_detector_finds_the_sample_threat(detector):
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.ingest import read_scan
    from nii.detect.metrics import box_overlap
    from tests.conftest import REPO, sample_truth_box

    regions = detector.detect(calibrate_with_scanner_profile(read_scan(REPO / "sample_scans" / "bag-threat.json"),
                                                             REPO / "calibration"))
    assert regions and regions[0].model == detector.identity
    # Its strongest region is the bag's brick of narcotics (0.43 with 1.2.0,
    # an advisory under the alarm threshold), where the simulator put it.
    top = regions[0]
    assert top.class_name == "narcotics" and 0.3 <= top.score <= 1.0
    assert box_overlap(top.box, sample_truth_box("bag-threat.json", "narcotics")) >= 0.5


def test_a_higher_min_score_only_drops_regions_below_it():
    """min_score is applied before the model's NMS; what is left above it must not change."""
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.detect.inputs import detector_image
    from nii.simulate.engine import simulate_scan
    from nii.simulate.scanner import load_scanner

    low, high = load_detector("contraband-fcos", min_score=0.05), load_detector("contraband-fcos", min_score=0.3)
    rng = np.random.default_rng(5)
    kept = 0
    for index in range(3):
        scan = simulate_scan(load_scanner("baggage-dual-kvp"), rng, threat_rate=1.0, index=index).scan
        image = detector_image(calibrate_with_scanner_profile(scan))
        everything = [(r.class_name, r.score, r.box) for r in low.detect_images([image])[0]]
        above = [(r.class_name, r.score, r.box) for r in high.detect_images([image])[0]]
        assert above == [region for region in everything if region[1] >= 0.3]
        kept += len(above)
    assert kept > 0
