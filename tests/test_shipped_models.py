"""The shipped models, evaluated on small fixed sets, against floors.

Floors sit below the figures measured when the model was published (its
card holds those), with room for the smaller sets here; a retrained model
that falls under them is a regression.
"""

from __future__ import annotations

import numpy as np
import pytest

from nii.detect.datasets import read_clear, read_coco, read_voc
from nii.detect.evaluate import evaluate_samples
from nii.detect.regions import THREAT_CLASSES
from nii.detect.registry import MODELS_ROOT, list_models, load_detector, open_artifact
from tests.conftest import shared_data

SHIPPED = "contraband-fcos"

# contraband-fcos 1.0.0 measured (card): SIXray val mAP@0.5 0.174, Pd 0.58 at
# Pfa 0.047, AUROC 0.86; held-out synthetic mAP@0.5 0.033, AUROC 0.61. These
# floors are far under the targets (0.85 / 0.95): they catch a broken
# or swapped model, not a good one. Raise them with the model.
SIXRAY_MAP50_FLOOR = 0.10
SIXRAY_PD_FLOOR = 0.40
SIXRAY_PFA_CEILING = 0.15
SYNTHETIC_MAP50_FLOOR = 0.005
SYNTHETIC_AUROC_FLOOR = 0.50


@pytest.fixture(scope="module")
def detector():
    return load_detector(SHIPPED, device="cpu")


def test_shipped_contraband_detector_is_registered_with_a_full_card():
    assert SHIPPED in list_models(MODELS_ROOT)
    card = open_artifact(SHIPPED).card
    assert set(THREAT_CLASSES) <= set(card["classes"])
    assert card["dicos_categories"]["explosive"] == "EXPLOSIVE"
    assert len(card["training"]["data_sha256"]) == 64
    assert card["training"]["threads"] == 2 and card["training"]["device"] == "cpu"
    assert card["training"]["minutes"] <= 60
    assert 0 < card["operating_points"]["default"]["threshold"] < 1
    assert {"sixray-val", "synthetic-heldout"} <= set(card["metrics"])


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


def test_shipped_detector_finds_the_sample_threat(detector):
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.ingest import read_scan
    from tests.conftest import REPO

    regions = detector.detect(calibrate_with_scanner_profile(read_scan(REPO / "sample_scans" / "bag-threat.json"),
                                                             REPO / "calibration"))
    assert regions and regions[0].model == detector.identity
    assert np.isfinite(regions[0].score)


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
