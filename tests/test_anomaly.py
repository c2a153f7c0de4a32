"""The anomaly model: its parts on hand-made arrays, a tiny model that must learn
to find a made-up object, the training recipe through ``nii train`` and
``nii evaluate``, and the shipped model against its floors."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
import torch

from nii.cli import main
from nii.detect.anomaly import (
    ANOMALY_CLASS,
    AnomalyDetector,
    AnomalyNet,
    anomaly_loss,
    dense_palette,
    heat_map_overlay,
    heat_map_regions,
    synthetic_object,
    training_crop,
)
from nii.detect.metrics import box_overlap, localisation_metrics
from nii.detect.regions import ModelIdentity
from nii.detect.registry import MODELS_ROOT, list_models, load_detector, open_artifact
from nii.detect.train_anomaly import check_clear_only
from tests.conftest import REPO, sample_truth_box, shared_data

IDENTITY = ModelIdentity("anomaly-test", "0", "0" * 64)
SHIPPED = "anomaly"


def _bag(seed: int = 0, shape=(160, 200)) -> np.ndarray:
    """A grey 'bag' with soft texture on a white belt."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), 255, np.uint8)
    inner = 170 + 20 * rng.random((shape[0] - 40, shape[1] - 40, 1))
    image[20:-20, 20:-20] = (inner * np.array([1.0, 0.9, 0.7])).astype(np.uint8)
    return image


def test_dense_palette_takes_transmissions_from_dense_pixels_only():
    image = np.full((20, 20, 3), 255, np.uint8)
    image[5:10, 5:10] = (40, 80, 160)  # a blue (metal) patch
    palette = dense_palette([image])
    assert palette.shape[1] == 3
    np.testing.assert_allclose(palette, np.tile(np.array([40, 80, 160]) / 255, (len(palette), 1)), atol=1e-6)
    with pytest.raises(ValueError, match="no dense pixels"):
        dense_palette([np.full((8, 8, 3), 255, np.uint8)])


def test_synthetic_object_darkens_inside_its_mask_only():
    image = _bag()
    palette = np.array([[0.3, 0.5, 0.9]])
    out, mask = synthetic_object(image, palette, np.random.default_rng(1), min_px=30, max_px=60)
    assert 50 < mask.sum() < mask.size / 2
    np.testing.assert_array_equal(out[~mask], image[~mask])
    # Transmission multiplies: never brighter, and the red channel (t = 0.3) drops most.
    assert (out[mask].astype(int) <= image[mask].astype(int)).all()
    drop = (image[mask].astype(float) - out[mask]).mean(axis=0)
    assert drop[0] > drop[1] > drop[2] > 0


def test_training_crop_pads_small_bags_with_air_and_keeps_mask_aligned():
    small = _bag(shape=(50, 70))
    palette = np.array([[0.2, 0.2, 0.2]])
    rng = np.random.default_rng(3)
    crop, mask = training_crop(small, palette, rng, size=96, object_rate=0.0)
    assert crop.shape == (96, 96, 3) and not mask.any()
    assert (crop == 255).all(axis=2).sum() >= 96 * 96 - 50 * 70  # the padding is white
    crops = [training_crop(_bag(), palette, np.random.default_rng(s), size=96, object_rate=1.0, object_px=(20, 40))
             for s in range(5)]
    for crop, mask in crops:
        assert mask.any()
        assert crop[mask].mean() < 0.8 * crop[~mask].mean()


def test_heat_map_regions_outline_hot_areas_and_always_give_the_peak():
    heat = np.zeros((40, 50), np.float32)
    heat[5:10, 5:15] = 0.9
    heat[30:35, 40:45] = 0.6
    heat[20, 20] = 0.3
    regions = heat_map_regions(heat, 0.5)
    assert [(round(s, 2), b) for s, b in regions] == [(0.9, (5, 5, 15, 10)), (0.6, (40, 30, 45, 35))]
    cool = heat * 0.4  # nothing reaches 0.5: the area around the peak stands for the scan
    regions = heat_map_regions(cool, 0.5)
    assert len(regions) == 1 and regions[0][0] == pytest.approx(0.36) and regions[0][1] == (5, 5, 15, 10)


def test_anomaly_loss_is_lower_for_the_right_outline():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:32, 16:32] = 1
    right = torch.full((1, 1, 8, 8), -6.0)
    right[..., 2:4, 2:4] = 6.0
    wrong = torch.full((1, 1, 8, 8), -6.0)
    wrong[..., 5:7, 5:7] = 6.0
    assert anomaly_loss(right, mask) < 0.2 < anomaly_loss(wrong, mask)


def test_localisation_counts_alarming_regions_on_the_threat():
    truth = [np.array([[10, 10, 30, 30]], np.float32)] * 3
    predictions = [
        (np.array([[12, 12, 28, 28], [60, 60, 70, 70]], np.float32), np.array([0.9, 0.2]), ["anomaly"] * 2),
        (np.array([[60, 60, 70, 70], [10, 10, 30, 30]], np.float32), np.array([0.95, 0.8]), ["anomaly"] * 2),
        (np.array([[10, 10, 30, 30]], np.float32), np.array([0.1]), ["anomaly"]),  # does not alarm
    ]
    result = localisation_metrics(predictions, truth, threshold=0.5)
    assert result == {"localised": 1.0, "top_region_on_threat": pytest.approx(2 / 3)}
    result = localisation_metrics(predictions, truth, threshold=0.85)
    assert result["localised"] == 0.5  # the second scan alarms only off the threat


def test_the_recipe_refuses_data_that_may_hold_threats():
    config = {"train": {"data": [{"kind": "clear", "path": "x"}, {"kind": "voc", "path": "y"}]}}
    with pytest.raises(ValueError, match="clear scans only"):
        check_clear_only(config)
    check_clear_only({"train": {"data": [{"kind": "simulated", "threat_rate": 0.0}]}})
    with pytest.raises(ValueError, match="clear scans only"):
        check_clear_only({"train": {"data": [{"kind": "simulated", "threat_rate": 0.1}]}})


def test_a_tiny_model_learns_to_find_made_up_objects():
    """The training task can be learned: after 150 steps on clear 'bags', the
    heat map is hotter on a new object than on the bag around it."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    bags = [_bag(seed) for seed in range(4)]
    palette = np.array([[0.25, 0.45, 0.85], [0.8, 0.5, 0.2]])
    model = AnomalyNet((8, 16, 16, 32), (1, 1, 1, 1))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        crops, masks = zip(*(training_crop(bags[int(rng.integers(4))], palette, rng, size=96, object_px=(20, 50))
                             for _ in range(8)))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
        loss = anomaly_loss(model(x), torch.from_numpy(np.stack(masks))[:, None])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    detector = AnomalyDetector(model.eval(), IDENTITY, pixel_scale=1.0, device="cpu")
    test_bag, mask = synthetic_object(_bag(99), palette, np.random.default_rng(7), min_px=40, max_px=50)
    heat = detector.heat_map(test_bag)
    assert heat.shape == test_bag.shape[:2]
    assert heat[mask].mean() > 2 * heat[~mask].mean()
    regions = detector.detect_images([test_bag])[0]
    top = regions[0]
    assert top.class_name == ANOMALY_CLASS and top.model == IDENTITY
    rows, cols = np.nonzero(mask)
    assert top.box[0] <= cols.mean() <= top.box[2] and top.box[1] <= rows.mean() <= top.box[3]
    assert "anomaly score" in top.explanation and top.measurements["anomaly_score"] == pytest.approx(top.score, abs=1e-4)


SMOKE_CONFIG = """
[model]
name = "anomaly-smoke"
version = "0.0.1"
kind = "anomaly"
widths = [8, 8, 16, 16]
depths = [1, 1, 1, 1]

[train]
steps = 3
batch_size = 2
crop = 64
object_px = [8, 30]
threads = 2

[[train.data]]
kind = "simulated"
scanner = "baggage-dual-kvp"
n = 4
seed = 3
threat_rate = 0.0

[[evaluate]]
name = "sim"
boxes = [{ kind = "simulated", scanner = "baggage-dual-kvp", n = 4, seed = 3, threat_rate = 0.5 }]

[operating_point]
set = "sim"
pfa = 0.05
"""


def test_nii_train_publishes_an_anomaly_model_and_nii_evaluate_scores_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # simulated sets are cached under runs/cache of the working folder
    config = tmp_path / "anomaly.toml"
    config.write_text(SMOKE_CONFIG)
    models = tmp_path / "models"
    assert main(["train", str(config), "--models", str(models), "--quiet"]) == 0
    assert "published anomaly-smoke 0.0.1" in capsys.readouterr().out
    card = open_artifact("anomaly-smoke", root=models).card
    assert card["kind"] == "anomaly" and card["classes"] == [ANOMALY_CLASS]
    assert card["dicos_categories"] == {ANOMALY_CLASS: "ANOMALY"}
    assert card["training"]["steps"] == 3 and "localisation" in card["metrics"]["sim"]
    detector = load_detector("anomaly-smoke", root=models, device="cpu", region_threshold=0.7)
    assert isinstance(detector, AnomalyDetector) and detector.region_threshold == 0.7
    dataset = next((tmp_path / "runs" / "cache").glob("simulated-*threat0.5"))
    assert main(["evaluate", str(dataset), "--model", "anomaly-smoke", "--models", str(models), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "anomaly-smoke 0.0.1"
    # The same set the card's "sim" figures were measured on, by the same model.
    for key in ("auroc", "pd", "pfa"):
        assert result[key] == pytest.approx(card["metrics"]["sim"][key], abs=1e-3), key
    assert set(result["localisation"]) == {"localised", "top_region_on_threat"}
    assert "map50" not in result  # a class-agnostic model has no per-class mAP


def test_nii_train_refuses_threat_data_for_the_anomaly_model_in_one_line(tmp_path, capsys):
    config = tmp_path / "anomaly.toml"
    config.write_text(SMOKE_CONFIG.replace("threat_rate = 0.0", "threat_rate = 0.5", 1))
    assert main(["train", str(config), "--models", str(tmp_path / "models"), "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert "clear scans only" in err and len(err.splitlines()) == 1


# The shipped model. Its card holds the figures measured at publication; the
# floors below are the target (AUROC 0.90 on SIXray val against
# clear bags training never saw) and a localisation floor under the measured one.
SIXRAY_AUROC_TARGET = 0.90
SIXRAY_LOCALISED_FLOOR = 0.6


@pytest.fixture(scope="module")
def shipped():
    return load_detector(SHIPPED, device="cpu")


def test_shipped_anomaly_model_is_registered_trained_on_clear_scans_only():
    assert SHIPPED in list_models(MODELS_ROOT)
    card = open_artifact(SHIPPED).card
    check_clear_only({"train": {"data": card["training"]["data"]}})
    assert card["training"]["device"] == "cpu" and card["training"]["minutes"] <= 60
    assert 0 < card["operating_points"]["default"]["threshold"] < 1
    assert {"sixray-val", "synthetic-heldout"} <= set(card["metrics"])


def test_shipped_anomaly_model_meets_the_auroc_target_on_sixray_val(shipped):
    from nii.detect.datasets import read_clear, read_voc
    from nii.detect.evaluate import evaluate_samples

    boxed = read_voc(shared_data("sixray-subset"), "val")
    clear = read_clear(shared_data("sixray-negatives"), 150, 300)  # never trained on
    result = evaluate_samples(shipped, boxed, clear, threshold=shipped.operating_points["default"]["threshold"],
                              progress=False)
    assert result["auroc"] >= SIXRAY_AUROC_TARGET, result
    assert result["localisation"]["localised"] >= SIXRAY_LOCALISED_FLOOR, result
    # The card's figures are what its operating point gives (1.0.0's threshold,
    # rounded down under a clear bag's score, alarmed on one bag more).
    card = open_artifact(SHIPPED).card["metrics"]["sixray-val"]
    assert (result["pd"], result["pfa"]) == (pytest.approx(card["pd"], abs=1e-4), pytest.approx(card["pfa"], abs=1e-4))


def test_shipped_anomaly_model_runs_on_a_calibrated_scan(shipped):
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.ingest import read_scan

    calibrated = calibrate_with_scanner_profile(read_scan(REPO / "sample_scans" / "bag-threat.json"),
                                                REPO / "calibration")
    regions = shipped.detect(calibrated)
    assert regions and regions[0].model == shipped.identity
    assert regions[0].class_name == ANOMALY_CLASS and 0.0 <= regions[0].score <= 1.0
    assert all(r.score <= regions[0].score for r in regions)
    # A region always comes back (the peak's, at least): it must lie on the
    # bag's brick of narcotics, which the model never saw.
    assert box_overlap(regions[0].box, sample_truth_box("bag-threat.json", "narcotics")) >= 0.5


def test_eight_views_make_the_heat_map_follow_the_bag_when_it_is_turned():
    torch.manual_seed(0)
    detector = AnomalyDetector(AnomalyNet((8, 8, 16, 16), (1, 1, 1, 1)).eval(), IDENTITY, pixel_scale=0.5,
                               views=8, device="cpu")
    # 96 x 160 at pixel_scale 0.5 is a multiple of 16: no air padding that a flip would move.
    bag = np.random.default_rng(1).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    heat = detector.heat_map(bag)
    np.testing.assert_allclose(detector.heat_map(np.ascontiguousarray(bag[:, ::-1]))[:, ::-1], heat, atol=1e-5)
    np.testing.assert_allclose(detector.heat_map(np.ascontiguousarray(bag.transpose(1, 0, 2))).T, heat, atol=1e-5)
    with pytest.raises(ValueError, match="views"):
        AnomalyDetector(AnomalyNet(), IDENTITY, views=3, device="cpu")


def test_heat_map_overlay_keeps_cool_pixels_and_colours_hot_ones():
    image = np.full((10, 12, 3), 50, np.uint8)  # a dense, dark region: the hot colour must stand out
    heat = np.zeros((10, 12), np.float32)
    heat[2:4, 2:4] = 1.0
    picture = heat_map_overlay(image, heat)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture[heat == 0], image[heat == 0])
    top = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1]  # pale yellow, RGB
    np.testing.assert_allclose(picture[2, 2], 0.4 * 50 + 0.6 * top, atol=1)  # 60 % opacity at full heat
    with pytest.raises(ValueError, match="does not match"):
        heat_map_overlay(image, heat[:5])
