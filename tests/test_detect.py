"""Detection interface, model registry, metrics, data set readers and training."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nii.detect.datasets import (
    is_image_level,
    load_sample,
    read_box_dataset,
    read_clear,
    read_coco,
    read_image_level,
    read_voc,
    read_yolo,
)
from nii.detect.metrics import box_metrics, pd_pfa_curve, screening_metrics, threshold_at_pfa
from nii.detect.regions import Detector, ModelIdentity, Region, canonical_class, dicos_category
from nii.detect.registry import ModelArtifactError, list_models, load_detector, open_artifact, publish_artifact
from tests.conftest import REPO

IDENTITY = ModelIdentity("m", "1.0", "ab" * 32)


# ---------------------------------------------------------------------------
# Regions and classes
# ---------------------------------------------------------------------------

def test_data_set_labels_map_to_detector_classes_and_dicos_categories():
    assert [canonical_class(n) for n in ("Gun", "handgun", "gun_part", "Knife", "razor_blade", "Wrench")] == [
        "firearm", "firearm", "firearm", "knife", "knife", "wrench"]
    assert canonical_class("pliers") is None
    assert dicos_category("explosive") == "EXPLOSIVE"
    assert dicos_category("narcotics") == "CONTRABAND"
    assert dicos_category("firearm") == "PROHIBITED_ITEM"
    assert dicos_category("something new") == "ANOMALY"


def test_region_carries_model_identity_and_refuses_bad_boxes():
    region = Region("firearm", 0.9, (1, 2, 30, 40), IDENTITY)
    record = region.to_dict()
    assert record["model"] == {"name": "m", "version": "1.0", "sha256": "ab" * 32}
    assert record["dicos_category"] == "PROHIBITED_ITEM"
    with pytest.raises(ValueError, match="ends"):
        Region("knife", 0.5, (10, 10, 5, 20), IDENTITY)
    with pytest.raises(ValueError, match="score"):
        Region("knife", 1.5, (0, 0, 5, 5), IDENTITY)
    with pytest.raises(ValueError, match="4 .2D. or 6"):
        Region("knife", 0.5, (0, 0, 5), IDENTITY)
    assert len(Region("explosive", 0.5, (0, 0, 0, 4, 4, 4), IDENTITY).box) == 6


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

def _publish(root: Path, version: str = "1.0.0") -> ModelIdentity:
    return publish_artifact("toy", version, {"weights.pt": b"weights", "config.toml": b"[model]\n"},
                            {"kind": "toy", "classes": ["firearm"]}, root)


def test_published_artifact_verifies_and_lists(tmp_path):
    identity = _publish(tmp_path)
    artifact = open_artifact("toy", root=tmp_path)
    assert artifact.identity == identity
    assert artifact.read("weights.pt") == b"weights"
    assert list_models(tmp_path) == {"toy": {"1.0.0": identity.sha256}}
    _publish(tmp_path, "1.10.0")
    assert open_artifact("toy", root=tmp_path).identity.version == "1.10.0"  # newest, compared as numbers


def test_a_published_version_is_never_replaced(tmp_path):
    identity = _publish(tmp_path)
    assert _publish(tmp_path) == identity  # the same artifact again: nothing to do
    with pytest.raises(ValueError, match="toy 1.0.0 is already published .* needs a new version"):
        publish_artifact("toy", "1.0.0", {"weights.pt": b"retrained", "config.toml": b"[model]\n"},
                         {"kind": "toy", "classes": ["firearm"]}, tmp_path)
    artifact = open_artifact("toy", root=tmp_path)  # what alerts named is still there, intact
    assert artifact.identity == identity and artifact.read("weights.pt") == b"weights"
    assert not [p for p in (tmp_path / "toy").iterdir() if p.name.startswith(".")]  # no staging left
    (tmp_path / "registry.json").write_text("{}")  # a publish cut off after its folder was renamed in
    assert _publish(tmp_path) == identity and list_models(tmp_path) == {"toy": {"1.0.0": identity.sha256}}


def test_training_into_a_published_version_is_refused_before_training(tiny_registry, tmp_path):
    from nii.detect.train import train

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    models, cache = tiny_registry
    with pytest.raises(ValueError, match="tiny 0.0.1 is already published"):
        train(config, models_root=models, max_steps=1000, cache=cache, progress=False)
    with pytest.raises(ValueError, match="is not a folder: the registry to publish into"):
        train(config, models_root=config, max_steps=1000, cache=cache, progress=False)


@pytest.mark.parametrize("change, message", [
    (lambda folder: (folder / "weights.pt").write_bytes(b"weightz"), "weights.pt: sha256 mismatch"),
    (lambda folder: (folder / "config.toml").unlink(), "config.toml: missing"),
    (lambda folder: (folder / "extra.bin").write_bytes(b"x"), "not covered by SHA256SUMS: extra.bin"),
    (lambda folder: (folder / "SHA256SUMS").write_text((folder / "SHA256SUMS").read_text().replace("weights.pt",
                                                                                                   "weights.pt ")),
     "not the registered"),
])
def test_tampered_artifact_is_refused_naming_the_file(tmp_path, change, message):
    _publish(tmp_path)
    change(tmp_path / "toy" / "1.0.0")
    with pytest.raises(ModelArtifactError, match=message):
        open_artifact("toy", root=tmp_path)


def test_unknown_model_or_version_is_refused(tmp_path):
    _publish(tmp_path)
    with pytest.raises(ModelArtifactError, match="no model 'nope'.*registered: toy"):
        open_artifact("nope", root=tmp_path)
    with pytest.raises(ModelArtifactError, match="no version '9'"):
        open_artifact("toy", "9", root=tmp_path)
    with pytest.raises(ModelArtifactError, match="unknown model kind 'toy'"):
        load_detector("toy", root=tmp_path)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def test_box_metrics_score_hits_misses_and_absent_classes():
    truth = [(np.array([[10, 10, 50, 50.]]), ["firearm"]), (np.array([[0, 0, 20, 20.]]), ["knife"])]
    perfect = [(t[0], np.array([0.9]), t[1]) for t in truth]
    result = box_metrics(perfect, truth, ["firearm", "knife", "wrench"])
    assert result["map50"] == pytest.approx(1.0)
    assert set(result["ap50_per_class"]) == {"firearm", "knife"}  # no wrench in the set: left out
    shifted = [(np.array([[10, 10, 50, 50.]]), np.array([0.9]), ["firearm"]),
               (np.array([[30, 30, 60, 60.]]), np.array([0.9]), ["knife"])]
    result = box_metrics(shifted, truth, ["firearm", "knife"])
    assert result["ap50_per_class"] == pytest.approx({"firearm": 1.0, "knife": 0.0})
    wrong_class = [(t[0], np.array([0.9]), ["wrench"]) for t in truth]
    assert box_metrics(wrong_class, truth, ["firearm", "knife", "wrench"])["map50"] == 0.0
    # IoU 0.8 is a hit at thresholds 0.5 ... 0.8 (7 of the 10), a miss above.
    loose = [(np.array([[10, 10, 50, 60.]]), np.array([0.9]), ["firearm"])]
    result = box_metrics(loose, truth[:1], ["firearm"])
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(0.7)


def test_threshold_at_pfa_allows_only_that_share_of_false_alarms():
    clear = np.linspace(0, 0.99, 100)
    t = threshold_at_pfa(clear, 0.05)
    assert np.mean(clear >= t) == pytest.approx(0.05)
    assert np.mean(clear >= threshold_at_pfa(clear, 0.0)) == 0.0
    with pytest.raises(ValueError, match="no clear scans"):
        threshold_at_pfa([], 0.05)


def test_screening_metrics_by_hand():
    scores = [0.1, 0.2, 0.3, 0.9, 0.8, 0.25]
    threat = [False, False, False, True, True, True]
    result = screening_metrics(scores, threat, threshold=0.27)
    assert result["pd"] == pytest.approx(2 / 3) and result["pfa"] == pytest.approx(1 / 3)
    # AUROC: of the 9 (threat, clear) pairs, the threat wins 8 (0.25 loses to 0.3).
    assert result["auroc"] == pytest.approx(8 / 9)
    assert set(result["pd_at_pfa"]) == {"0.01", "0.02", "0.05"}
    assert result["pd_at_pfa"]["0.05"] == pytest.approx(2 / 3)
    pfa, pd, _ = pd_pfa_curve(scores, threat)
    assert pfa[0] == 0 and pd[0] == 0 and pfa[-1] == 1 and pd[-1] == 1
    assert np.all(np.diff(pfa) >= 0) and np.all(np.diff(pd) >= 0)
    with pytest.raises(ValueError, match="need clear and threat"):
        screening_metrics([0.5], [True])


# ---------------------------------------------------------------------------
# Data set readers
# ---------------------------------------------------------------------------

def _image(path: Path, shape=(60, 80)) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), 200, np.uint8))


def test_voc_reader_maps_classes_and_follows_splits(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    for stem, name in (("a", "Gun"), ("b", "Pliers")):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
        (tmp_path / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>{name}</name>"
            "<bndbox><xmin>1.5</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    samples = read_voc(tmp_path)
    assert [s.classes for s in samples] == [("firearm",), ()]  # pliers: no detector class, dropped
    np.testing.assert_allclose(samples[0].boxes, [[1.5, 2, 30, 40]])
    assert [s.path.name for s in read_box_dataset(tmp_path, "val")] == ["a.jpg"]
    with pytest.raises(ValueError, match="no split 'test'"):
        read_voc(tmp_path, "test")


def test_yolo_and_coco_readers_give_pixel_boxes(tmp_path):
    _image(tmp_path / "yolo" / "images" / "x.png", (100, 200))
    (tmp_path / "yolo" / "labels").mkdir()
    (tmp_path / "yolo" / "labels" / "x.txt").write_text("1 0.5 0.5 0.1 0.2\n")
    (tmp_path / "yolo" / "classes.txt").write_text("Gun\nKnife\n")
    [sample] = read_box_dataset(tmp_path / "yolo")
    assert sample.classes == ("knife",)
    np.testing.assert_allclose(sample.boxes, [[90, 40, 110, 60]])
    assert read_yolo(tmp_path / "yolo")[0].classes == ("knife",)

    _image(tmp_path / "coco" / "img" / "y.png")
    document = {"images": [{"id": 7, "file_name": "img/y.png"}], "categories": [{"id": 3, "name": "handgun"}],
                "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 6, 10, 20]}]}
    (tmp_path / "coco" / "annotations.json").write_text(json.dumps(document))
    [sample] = read_coco(tmp_path / "coco" / "annotations.json")
    assert sample.path == tmp_path / "coco" / "img" / "y.png" and sample.classes == ("firearm",)
    np.testing.assert_allclose(sample.boxes, [[5, 6, 15, 26]])


def test_clear_and_image_level_sets(tmp_path):
    for name in ("clear/c1.png", "clear/c2.png", "threat/t1.png"):
        _image(tmp_path / name)
    assert is_image_level(tmp_path)
    labels = read_image_level(tmp_path)
    assert [(label.path.name, label.threat) for label in labels] == [("c1.png", False), ("c2.png", False),
                                                                     ("t1.png", True)]
    assert [s.path.name for s in read_clear(tmp_path / "clear", 1)] == ["c2.png"]
    with pytest.raises(ValueError, match="not a box data set"):
        read_box_dataset(tmp_path)


def test_load_sample_scales_boxes_with_the_calibrated_image(tmp_path):
    from nii.simulate.engine import simulate_dataset

    annotations = simulate_dataset(tmp_path, n=1, seed=5, threat_rate=1.0, progress=False, workers=1)
    [sample] = read_coco(annotations)
    image, boxes = load_sample(sample.path, sample.boxes, profile_root=REPO / "calibration")
    assert image.dtype == np.uint8 and image.ndim == 3
    assert len(boxes) == len(sample.boxes) >= 1
    assert np.all(boxes[:, 2] <= image.shape[1] + 1) and np.all(boxes[:, 3] <= image.shape[0] + 1)


# ---------------------------------------------------------------------------
# Training, the registry and nii evaluate, end to end with a tiny model
# ---------------------------------------------------------------------------

TINY_CONFIG = """
[model]
name = "tiny"
version = "0.0.1"
widths = [8, 8, 16, 16, 16]
depths = [1, 1, 1, 1, 1]
fpn_channels = 32
head_convs = 1
min_size = 128
max_size = 160
[train]
epochs = 2
batch_size = 2
threads = 2
[[train.data]]
kind = "simulated"
n = 4
seed = 3
threat_rate = 1.0
[[evaluate]]
name = "sim"
boxes = [{ kind = "simulated", n = 6, seed = 4, threat_rate = 0.5 }]
[operating_point]
set = "sim"
pfa = 0.05
"""


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tiny")
    config = folder / "tiny.toml"
    config.write_text(TINY_CONFIG)
    cache = folder / "cache"
    from nii.detect.train import train

    train(config, models_root=folder / "models", max_steps=3, cache=cache, progress=False)
    return folder / "models", cache


def test_training_publishes_a_loadable_detector_with_a_card(tiny_registry):
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.simulate.engine import simulate_scan
    from nii.simulate.scanner import load_scanner

    root, _ = tiny_registry
    artifact = open_artifact("tiny", root=root)
    card = artifact.card
    assert card["training"]["steps"] == 3
    assert len(card["training"]["data_sha256"]) == 64
    assert {"map50", "pd", "pfa", "pd_at_pfa", "auroc", "ms_per_image"} <= set(card["metrics"]["sim"])
    assert card["operating_points"]["default"]["set_on"] == "sim"
    assert b"name = \"tiny\"" in artifact.read("config.toml")
    detector = load_detector("tiny", root=root, device="cpu", min_score=0.0)
    assert isinstance(detector, Detector)
    calibrated = calibrate_with_scanner_profile(simulate_scan(load_scanner("baggage-dual-kvp"), np.random.default_rng(1)).scan, REPO / "calibration")
    regions = detector.detect(calibrated)
    assert regions, "min_score 0 keeps every candidate"
    assert all(r.model == artifact.identity for r in regions)
    assert all(r.class_name in card["classes"] for r in regions)
    assert all(0 <= r.box[0] <= r.box[2] <= calibrated.opaque.shape[1] for r in regions)


def test_same_config_and_seed_give_the_same_weights(tiny_registry, tmp_path):
    from nii.detect.train import train

    root, cache = tiny_registry
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    again = train(config, models_root=tmp_path / "models", max_steps=3, cache=cache, progress=False)
    first = open_artifact("tiny", root=root).read("weights.pt")
    assert open_artifact("tiny", root=tmp_path / "models").read("weights.pt") == first
    assert again.name == "tiny"


def test_nii_evaluate_json_on_simulated_and_image_level_sets(tiny_registry, tmp_path, capsys):
    from nii.cli import main

    root, cache = tiny_registry
    folder = next(cache.glob("simulated-*-n6-*"))
    assert main(["evaluate", str(folder), "--model", "tiny", "--models", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"map50", "map50_95", "ap50_per_class", "pd", "pfa", "threshold", "pd_at_pfa", "auroc",
            "ms_per_image", "model_sha256"} <= set(result)
    assert set(result["pd_at_pfa"]) == {"0.01", "0.02", "0.05"}
    # The same set the card's "sim" figures were measured on, by the same model.
    card = open_artifact("tiny", root=root).card["metrics"]["sim"]
    for key in ("map50", "map50_95", "pd", "pfa", "auroc"):
        assert result[key] == pytest.approx(card[key], abs=1e-3), key

    for sample in read_coco(folder / "annotations.json"):  # threat scans to threat/, the rest to clear/
        target = tmp_path / "set" / ("threat" if sample.classes else "clear")
        target.mkdir(parents=True, exist_ok=True)
        for part in (sample.path, sample.path.with_suffix(".raw")):
            shutil.copy(part, target / part.name)
    assert main(["evaluate", str(tmp_path / "set"), "--model", "tiny", "--models", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"pd", "pfa", "auroc", "pd_at_pfa", "threshold"} <= set(result) and "map50" not in result


def test_nii_evaluate_and_models_refuse_bad_input_in_one_line(tiny_registry, tmp_path, capsys):
    from nii.cli import main

    root, cache = tiny_registry
    assert main(["evaluate", str(tmp_path / "missing"), "--models", str(root)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["evaluate", str(tmp_path), "--model", "nope", "--models", str(root)]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    broken = tmp_path / "models"
    shutil.copytree(root, broken)
    weights = broken / "tiny" / "0.0.1" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one parameter
    weights.write_bytes(bytes(data))
    assert main(["models", "--models", str(broken)]) == 1
    assert "weights.pt: sha256 mismatch" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path), "--model", "tiny", "--models", str(broken)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    coco = next(cache.glob("simulated-*/annotations.json")).parent  # a COCO set the fixture simulated
    assert main(["evaluate", str(coco), "--split", "val", "--model", "tiny", "--models", str(root)]) == 2
    assert "applies to Pascal VOC sets only" in capsys.readouterr().err


def test_bad_training_config_is_one_line(tmp_path, capsys):
    from nii.cli import main

    (tmp_path / "bad.toml").write_text("[model]\nname = 'x'\n")
    assert main(["train", str(tmp_path / "bad.toml")]) == 2
    assert "needs a [train] table" in capsys.readouterr().err
    (tmp_path / "worse.toml").write_text("[model\n")
    assert main(["train", str(tmp_path / "worse.toml")]) == 2


def test_for_inference_folds_batchnorm_and_keeps_the_outputs():
    """The shipped form of a detector answers as the trained network does."""
    import torch

    from nii.detect.fcos import fcos_plain, for_inference

    torch.manual_seed(0)
    trained = fcos_plain(2, widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), fpn_channels=32, min_size=256,
                         max_size=320, score_thresh=0.0)
    trained.train()
    with torch.no_grad():  # running statistics far from (0, 1), so a wrong fold shows
        for _ in range(3):
            trained.backbone.body(torch.rand(2, 3, 256, 320) * 3)
    trained.eval()
    shipped = fcos_plain(2, widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), fpn_channels=32, min_size=256,
                         max_size=320, score_thresh=0.0)
    shipped.load_state_dict(trained.state_dict())
    shipped = for_inference(shipped)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in shipped.modules())
    conv = next(m for m in shipped.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    image = [torch.rand(3, 256, 320)]
    with torch.inference_mode():
        expected, got = trained(image)[0], shipped(image)[0]
    assert len(expected["scores"]) > 0
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-2, rtol=1e-4)


def test_inference_shrinks_a_large_scan_by_area_averaging_as_training_does():
    """A bag four times the model's size, with texture finer than a model pixel,
    is seen as the bag at the model's size: the texture averages out, as in
    training, rather than aliasing through the model's bilinear resize."""
    from nii.calibrate.correct import calibrate_with_scanner_profile
    from nii.detect.contraband import fit_image
    from nii.detect.inputs import detector_image
    from nii.simulate.engine import simulate_scan
    from nii.simulate.scanner import load_scanner

    scan = simulate_scan(load_scanner("baggage-dual-kvp"), np.random.default_rng(7), threat_rate=1.0).scan
    small, scale = fit_image(detector_image(calibrate_with_scanner_profile(scan)), 320, 448)
    assert scale < 1 and min(small.shape[:2]) == 320
    small = np.clip(small, 30, 225)
    # Each model pixel becomes a 4x4 block whose centre 2x2 is brighter and
    # whose rim is darker by the same total: the block's mean is the pixel.
    texture = np.full((4, 4), -10, np.int16)
    texture[1:3, 1:3] = 30
    big = (np.kron(small.astype(np.int16), np.ones((4, 4, 1), np.int16))
           + np.tile(texture, small.shape[:2])[..., None]).astype(np.uint8)
    np.testing.assert_array_equal(fit_image(big, 320, 448)[0], small)

    detector = load_detector("contraband-fcos", device="cpu", min_score=0.05)
    at_size, large = detector.detect_images([small, big])
    assert at_size, "the bag holds threats the detector sees"
    assert [(r.class_name, round(r.score, 4)) for r in large] == [(r.class_name, round(r.score, 4)) for r in at_size]
    np.testing.assert_allclose([r.box for r in large], [np.multiply(r.box, 4) for r in at_size], atol=0.5)


def test_attenuation_jitter_scales_attenuation_and_keeps_white_and_black():
    import random

    from nii.detect.train import attenuation_jitter

    image = np.tile(np.arange(256, dtype=np.uint8), (4, 1))[..., None].repeat(3, axis=2)
    assert attenuation_jitter(image, 0.0, random.Random(0)) is image
    rng, darker, lighter = random.Random(1), 0, 0
    for _ in range(20):
        out = attenuation_jitter(image, 0.5, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out[0, 0, 0] == 0 and out[0, 255, 0] == 255  # no photons and open beam stay so
        assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # brighter stays brighter
        middle = int(out[0, 128, 0])
        darker, lighter = darker + (middle < 128), lighter + (middle > 128)
        # transmission^k with k in [1/1.5, 1.5]
        assert 255 * (128 / 255) ** 1.5 - 1 <= middle <= 255 * (128 / 255) ** (1 / 1.5) + 1
    assert darker and lighter


@pytest.mark.parametrize(("old", "new", "message"), [
    ("epochs = 2", "epochs = 0", "[train] epochs must be a whole number at least 1"),
    ("batch_size = 2", "batch_size = -4", "[train] batch_size must be a whole number at least 1"),
    ("threads = 2", "threads = 0", "[train] threads must be a whole number at least 1"),
    ("threads = 2", "threads = 2\nlearning_rate = 0.1", "[train] has unknown settings learning_rate"),
    ("min_size = 128", "min_size = 0", "[model] min_size must be a whole number at least 32"),
    ("head_convs = 1", "head_convs = 1\nheads = 2", "[model] has unknown settings heads"),
    ('set = "sim"', 'set = "val"', "[operating_point] set must name an [[evaluate]] set (sim)"),
    ("pfa = 0.05", "pfa = 1.5", "[operating_point] pfa must lie in (0, 1)"),
])
def test_a_training_config_that_cannot_train_is_refused_before_training(tmp_path, old, new, message):
    from nii.detect.train import load_config

    config = tmp_path / "bad.toml"
    config.write_text(TINY_CONFIG.replace(old, new))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(config)


def test_a_batch_larger_than_the_training_set_is_refused_not_looped_on(tmp_path):
    from nii.detect.train import train

    config = tmp_path / "big-batch.toml"
    config.write_text(TINY_CONFIG.replace("batch_size = 2", "batch_size = 10"))  # 4 training scans
    with pytest.raises(ValueError, match="batch_size 10 is more than the 4 training samples"):
        train(config, models_root=tmp_path / "models", max_steps=2, cache=tmp_path / "cache", progress=False)


def test_moving_average_of_the_weights_is_what_gets_published(tmp_path):
    from nii.detect.train import train

    def trained(extra: str, folder: str) -> bytes:
        config = tmp_path / f"{folder}.toml"
        config.write_text(TINY_CONFIG.replace("[train]", "[train]\n" + extra))
        train(config, models_root=tmp_path / folder, max_steps=3, cache=tmp_path / "cache", progress=False)
        return open_artifact("tiny", root=tmp_path / folder).read("weights.pt")

    plain, averaged = trained("", "plain"), trained("ema_decay = 0.5", "ema")
    assert averaged != plain
    assert trained("ema_decay = 0.5", "again") == averaged  # still reproducible


def _parameters(root: Path, version: str) -> dict[str, torch.Tensor]:
    state = torch.load(io.BytesIO(open_artifact("tiny", version, root=root).read("weights.pt")), weights_only=True)
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


def test_fine_tuning_starts_from_the_published_weights_and_names_them(tiny_registry, tmp_path):
    from nii.detect.train import train

    root, cache = tiny_registry
    shutil.copytree(root, tmp_path / "models")

    def tuned(version: str, init: str) -> None:
        config = tmp_path / f"{version}.toml"
        # A learning rate so small that one step leaves the weights where they began.
        config.write_text(TINY_CONFIG.replace('version = "0.0.1"', f'version = "{version}"')
                          .replace("[train]", f"[train]\n{init}seed = 7\nlr = 1e-9"))
        train(config, models_root=tmp_path / "models", max_steps=1, cache=cache, progress=False)

    tuned("0.0.2", 'init = "tiny/0.0.1"\n')
    tuned("0.0.3", "")
    start, fine, fresh = (_parameters(tmp_path / "models", v) for v in ("0.0.1", "0.0.2", "0.0.3"))
    assert max((fine[k] - start[k]).abs().max().item() for k in start) < 1e-6
    assert max((fresh[k] - start[k]).abs().max().item() for k in start) > 1e-2  # another seed, random start
    card = open_artifact("tiny", "0.0.2", root=tmp_path / "models").card
    assert card["training"]["init"] == {"name": "tiny", "version": "0.0.1",
                                        "sha256": open_artifact("tiny", "0.0.1", root=root).identity.sha256}
    assert "init" not in open_artifact("tiny", "0.0.3", root=tmp_path / "models").card["training"]
    assert "Fine-tuned from tiny 0.0.1" in (tmp_path / "models" / "tiny" / "0.0.2" / "card.md").read_text()


@pytest.mark.parametrize(("init", "extra", "message"), [
    ("tiny", "", "init must be NAME/VERSION of a published model"),
    ("tiny/9.9.9", "", "init tiny/9.9.9: model 'tiny' has no version '9.9.9'"),
    ("tiny/0.0.1", "widths = [8, 8, 16, 16, 32]", "init tiny/0.0.1: its network differs from this config's [model]"),
])
def test_fine_tuning_from_a_model_that_cannot_start_it_is_refused_before_training(tiny_registry, tmp_path, init,
                                                                                  extra, message):
    from nii.detect.train import train

    root, _ = tiny_registry
    config = tmp_path / "bad-init.toml"
    text = TINY_CONFIG.replace('version = "0.0.1"', 'version = "0.0.9"').replace("[train]", f'[train]\ninit = "{init}"')
    config.write_text(text.replace("widths = [8, 8, 16, 16, 16]", extra) if extra else text)
    with pytest.raises(ValueError, match=re.escape(message)):
        # The cache folder does not exist: refused before any data is made.
        train(config, models_root=root, max_steps=1, cache=tmp_path / "no-cache", progress=False)
    assert not (tmp_path / "no-cache").exists()


@pytest.mark.parametrize(("files", "layout"), [
    ({"annotations.json": '{"categories": []}'}, "COCO"),  # no images
    ({"annotations.json": '{"images": [{"id": 1}], "annotations": []}'}, "COCO"),  # no file_name
    ({"Annotations/a.xml": "<annotation><object><name>Gun</name></object>"}, "Pascal VOC"),  # cut short
    ({"Annotations/a.xml": "<annotation><object><name>Gun</name></object></annotation>"}, "Pascal VOC"),  # no box
])
def test_a_malformed_data_set_is_refused_in_one_line_naming_it(tmp_path, files, layout):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"a malformed {layout} data set") as refused:
        read_box_dataset(tmp_path)
    assert "\n" not in str(refused.value)
