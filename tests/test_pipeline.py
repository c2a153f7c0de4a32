"""The pipeline end to end: config, fusion, decision, outputs and nii analyze."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from nii.annotate.image import SEVERITY_RGB, ct_sheet, draw_alerts
from nii.annotate.result import OUTPUT_FILES, RESULT_SCHEMA, alerts_in_scan_pixels, result_record
from nii.cli import main
from nii.detect.fuse import ALARM, CLEAR, decide, fuse_regions, threshold_test
from nii.detect.metrics import box_overlap
from nii.detect.regions import ModelIdentity, Region
from nii.pipeline import STAGES, AnalysisError, Pipeline, load_pipeline_config

SAMPLES = Path(__file__).resolve().parents[1] / "sample_scans"
DETECTOR = ModelIdentity("contraband-fcos", "1.0.0", "a" * 64)
ANOMALY = ModelIdentity("anomaly", "1.0.0", "b" * 64)
RULE = ModelIdentity("rule-explosive", "1.0.0", "c" * 64)


# -- fusion and decision ------------------------------------------------------------

def test_fusion_merges_one_object_seen_by_two_models_and_keeps_both():
    learned = Region("explosive", 0.7, (10, 10, 50, 50), DETECTOR)
    rule = Region("explosive", 0.9, (12, 12, 48, 52), RULE, explanation="organic mass 420 g, Zeff 7.2",
                  measurements={"mass_g": 420.0, "zeff": 7.2})
    elsewhere = Region("explosive", 0.6, (200, 200, 240, 240), DETECTOR)
    first, second = fuse_regions([learned, elsewhere, rule])
    assert first.sources == (rule, learned) and first.score == 0.9 and first.box == rule.box
    assert first.models == (RULE, DETECTOR)
    assert first.to_dict()["mass_g"] == 420.0 and first.to_dict()["zeff"] == 7.2
    assert "organic mass 420 g" in first.to_dict()["explanation"]
    assert second.sources == (elsewhere,) and (first.id, second.id) == (1, 2)


def test_fusion_is_class_aware_but_anomaly_supports_a_specific_alert():
    knife = Region("knife", 0.8, (10, 10, 50, 50), DETECTOR)
    gun = Region("firearm", 0.7, (12, 12, 50, 50), DETECTOR)
    unusual = Region("anomaly", 0.99, (15, 15, 45, 45), ANOMALY, explanation="anomaly score 0.99 over 30 x 30 px")
    alerts = fuse_regions([knife, gun, unusual])
    assert [a.class_name for a in alerts] == ["knife", "firearm"]  # two classes on one spot stay two
    assert unusual in alerts[0].sources and alerts[0].score == 0.8  # support does not raise the knife's score
    assert alerts[0].label == "1 knife 0.80 +anomaly"
    # Evidence: the alert names the model that found a knife, not the
    # higher-scoring anomaly model that supports it.
    assert alerts[0].to_dict()["model"]["name"] == "contraband-fcos"
    assert alerts[0].explanation == "supported by anomaly: anomaly score 0.99 over 30 x 30 px"  # not the knife's reason
    # A small anomaly in a loose, large box is not the same object.
    loose = Region("firearm", 0.35, (0, 0, 1000, 400), DETECTOR)
    small = Region("anomaly", 0.99, (100, 100, 130, 130), ANOMALY)
    assert len(fuse_regions([loose, small])) == 2


def test_decision_at_the_operating_point_and_alarms_first():
    passes = threshold_test({"contraband-fcos": {"*": 0.5, "knife": 0.9}})
    weak_gun = Region("firearm", 0.45, (0, 0, 10, 10), DETECTOR)
    knife = Region("knife", 0.85, (100, 100, 110, 110), DETECTOR)
    assert decide(fuse_regions([weak_gun, knife], passes=passes)) == CLEAR
    strong_gun = Region("firearm", 0.55, (300, 300, 310, 310), DETECTOR)
    alerts = fuse_regions([weak_gun, knife, strong_gun], passes=passes)
    assert decide(alerts) == ALARM
    assert [(a.class_name, a.severity) for a in alerts] == [("firearm", "alarm"), ("knife", "advisory"),
                                                            ("firearm", "advisory")]
    rule_region = Region("explosive", 0.5, (0, 0, 5, 5), RULE)  # a model with no threshold alarms on what it reports
    assert decide(fuse_regions([rule_region], passes=passes)) == ALARM
    assert decide([]) == CLEAR


# -- config -----------------------------------------------------------------------------

def test_shipped_config_loads_with_no_arguments():
    config = load_pipeline_config()
    names = [m.name for m in config.models]
    assert {"contraband-fcos", "anomaly", "rule-manifest", "rule-ct-density"} <= set(names)
    assert "rule-explosive" not in names  # Pfa 0.44: documented in the config
    assert config.models_root.is_dir() and config.calibration_root.is_dir()


@pytest.mark.parametrize("text, message", [
    ("[models.anomaly]\nscan_kinds = ['x-ray']\n", "scan_kinds has x-ray"),
    ("[models.anomaly]\nthreshold = 3\n", "models.anomaly has unknown settings threshold"),
    ("colour = 'blue'\n[models.anomaly]\n", "unknown settings colour"),
    ("[fusion]\nmin_overlap = 2\n[models.anomaly]\n", "min_overlap must lie in"),
    ("[decision]\n", "names no [models.<name>]"),
    ("[models\n", "not valid TOML"),
    ("[models.anomaly.alarm_thresholds]\nanomaly = nan\n", "alarm_thresholds must lie in [0, 1]; got anomaly = nan"),
    ("[models.anomaly.alarm_thresholds]\nanomaly = 2.0\n", "alarm_thresholds must lie in [0, 1]; got anomaly = 2.0"),
    ("calibration_root = 'nowhere'\n[models.anomaly]\n", "calibration_root 'nowhere': no such folder"),
])
def test_bad_configs_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_pipeline_config(path)
    assert "\n" not in str(err.value)


def test_an_alarm_threshold_for_a_class_the_model_does_not_detect_is_refused(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(f"models_root = '{SAMPLES.parent / 'models'}'\n"
                    "[models.rule-opaque.alarm_thresholds]\nopaque = 0.4\nopaqe = 0.5\n")
    with pytest.raises(ValueError, match="pipeline model rule-opaque: no class 'opaqe'.*it detects opaque") as err:
        Pipeline.from_config(path)
    assert "\n" not in str(err.value)


def test_a_min_score_that_would_drop_every_region_is_refused(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(f"models_root = '{SAMPLES.parent / 'models'}'\n[models.contraband-fcos]\noptions = {{ min_score = nan }}\n")
    with pytest.raises(ValueError, match=r"pipeline model contraband-fcos: min_score must be a number in \[0, 1\], got nan"):
        Pipeline.from_config(path)


def test_a_missing_model_is_refused_by_name(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(f"models_root = '{SAMPLES.parent / 'models'}'\n[models.no-such-model]\n")
    with pytest.raises(ValueError, match="pipeline model no-such-model"):
        Pipeline.from_config(path)


# -- the shipped pipeline on the sample scans ------------------------------------------

@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline.from_config()


def test_container_declared_empty_alarms_with_the_reason(pipeline):
    result = pipeline.analyze(SAMPLES / "container.json")
    assert result.decision == ALARM
    (alert,) = result.alerts
    assert alert.class_name == "manifest_mismatch" and alert.dicos_category == "ANOMALY"
    assert alert.explanation.startswith("manifest mismatch: declared empty")
    assert "contraband-fcos" in result.skipped  # bag models do not judge containers
    assert result.profile_id.startswith("cargo-linac/")


def test_ct_volume_alarms_on_the_explosive_with_a_3d_box(pipeline):
    truth = json.loads((SAMPLES / "ground_truth.json").read_text())
    result = pipeline.analyze(SAMPLES / "bag-dicos-ct.dcm")
    assert result.decision == ALARM
    explosive = next(a for a in result.alerts if a.class_name == "explosive")
    assert len(explosive.box) == 6 and explosive.dicos_category == "EXPLOSIVE"
    assert [m.name for m in result.models] == ["rule-ct-density"]
    z0, y0, x0, z1, y1, x1 = next(t["box_zyx"] for t in truth["bag-dicos-ct.dcm"] if t["category"] == "explosive")
    assert box_overlap(explosive.box, (x0, y0, z0, x1, y1, z1)) >= 0.5
    assert result.annotated.ndim == 3 and result.annotated.shape[2] == 3


def test_a_bag_is_rendered_once_for_the_detector_and_the_annotated_image(pipeline, monkeypatch):
    import nii.calibrate.render as rendering

    calls = []
    colour_image = rendering._colour_image  # what every colour rendering runs
    monkeypatch.setattr(rendering, "_colour_image", lambda *a, **k: calls.append(1) or colour_image(*a, **k))
    result = pipeline.analyze(SAMPLES / "bag-threat.json")
    assert len(calls) == 1
    image = result.calibrated.colour_rendering
    assert not image.flags.writeable  # shared by every model: nobody may draw on it
    np.testing.assert_array_equal(image, rendering.render(result.calibrated))
    assert result.annotated.shape == image.shape and not np.array_equal(result.annotated, image)  # boxes drawn


def test_every_result_records_models_profile_and_stage_timings(pipeline):
    result = pipeline.analyze(SAMPLES / "bag-clear.json")
    assert set(STAGES) <= set(result.timings_ms) and all(v >= 0 for v in result.timings_ms.values())
    assert "detect:contraband-fcos" in result.timings_ms
    assert all(len(m.sha256) == 64 for m in result.models)
    record = result_record(result)
    assert record["calibration_profile"] == result.profile_id
    assert record["scan"]["scanner_id"] == "baggage-dual-kvp"
    # Evidence: the threshold an alarm is read against, as it was for this scan.
    card = json.loads((SAMPLES.parent / "models" / "contraband-fcos" / next(
        m.version for m in result.models if m.name == "contraband-fcos") / "card.json").read_text())
    assert record["alarm_thresholds"]["contraband-fcos"] == {"*": card["operating_points"]["default"]["threshold"]}
    assert set(record["alarm_thresholds"]) <= {m.name for m in result.models}


@pytest.mark.parametrize("name", ["bag-clear.json", "bag-dicos-ct.dcm", "container.json", "parcel-dicos-dx.dcm",
                                  "bag-threat-console.png"])
def test_result_json_follows_its_published_schema(pipeline, name):
    schema = json.loads(RESULT_SCHEMA.read_text())
    record = json.loads(json.dumps(result_record(pipeline.analyze(SAMPLES / name))))
    jsonschema.validate(record, schema)
    broken = {**record, "decision": "MAYBE"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_unreadable_input_is_an_analysis_error(pipeline, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a scan")
    with pytest.raises(AnalysisError) as err:
        pipeline.analyze(junk)
    assert "\n" not in str(err.value)


def test_tdr_boxes_go_back_to_the_scan_as_acquired(pipeline):
    # The parcel scanner's lines are 1.25 mm apart at a 1.2 mm pitch: calibration
    # stretches 346 lines to 360, so a TDR box must shrink back.
    result = pipeline.analyze(SAMPLES / "parcel-dicos-dx.dcm")
    assert result.scan.spatial_shape == (346, 896) and result.calibrated.opaque.shape == (360, 896)
    for alert, mapped in zip(result.alerts, alerts_in_scan_pixels(result)):
        assert mapped.box[0] == alert.box[0] and mapped.box[2] == alert.box[2]
        assert mapped.box[1] == pytest.approx(alert.box[1] * 346 / 360)
        if mapped.mask is not None:
            assert mapped.mask.shape == (346, 896)


# -- annotated images ----------------------------------------------------------------------

def test_alerts_are_drawn_in_their_severity_colour():
    passes = threshold_test({"contraband-fcos": {"*": 0.5}})
    alerts = fuse_regions([Region("knife", 0.9, (20, 20, 80, 60), DETECTOR),
                           Region("firearm", 0.3, (120, 20, 180, 60), DETECTOR)], passes=passes)
    image = draw_alerts(np.full((100, 200, 3), 128, np.uint8), alerts)
    assert tuple(image[40, 20]) == SEVERITY_RGB["alarm"]  # left edge of the knife's box
    assert tuple(image[40, 120]) == SEVERITY_RGB["advisory"]
    assert tuple(image[40, 50]) == (128, 128, 128)  # inside is left alone


def test_ct_sheet_shows_slices_and_projections_with_the_box():
    volume = np.full((20, 40, 40), -1000.0, np.float32)
    volume[5:10, 10:20, 25:35] = 800.0
    alerts = fuse_regions([Region("explosive", 0.9, (25, 10, 5, 35, 20, 10), RULE)])
    sheet = ct_sheet(volume, alerts, spacing_mm=(2.0, 1.0, 1.0))
    assert sheet.shape[0] > sheet.shape[1] / 3  # two rows of three views
    red = np.all(sheet == SEVERITY_RGB["alarm"], axis=-1)
    assert red.sum() > 6 * 4 * 30  # the box on all six views
    with pytest.raises(ValueError, match="slices, rows, cols"):
        ct_sheet(volume[0], alerts)


# -- nii analyze -------------------------------------------------------------------------------

def test_nii_analyze_writes_outputs_and_goes_on_past_bad_input(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["analyze", str(SAMPLES / "container.json"), str(SAMPLES / "bag-clear.json"), str(bad),
                 "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1  # one input refused
    assert lines[0].startswith(f"{SAMPLES / 'container.json'}  ALARM: manifest_mismatch")
    assert lines[1].startswith(f"{SAMPLES / 'bag-clear.json'}  CLEAR")
    assert lines[2].startswith(f"{bad}  REFUSED: ")
    for folder in ("container-json", "bag-clear-json"):
        assert sorted(p.name for p in (tmp_path / "out" / folder).iterdir()) == sorted(OUTPUT_FILES.values())


def test_nii_analyze_and_render_write_outputs_for_a_file_name_that_is_not_utf8(tmp_path):
    # Archives from old consoles carry Latin-1 names; cv2.imwrite crashed
    # the whole process on them. A child process, so a crash fails the test
    # instead of ending the test run.
    inbox = tmp_path / "in"
    inbox.mkdir()
    name = os.fsdecode(b"Gep\xe4ck.dcm")
    shutil.copy(SAMPLES / "parcel-dicos-dx.dcm", inbox / name)
    for command in ("analyze", "render"):
        done = subprocess.run([sys.executable, "-m", "nii.cli", command, str(inbox), "--out", str(tmp_path / command)],
                              capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr[-500:]
    assert (tmp_path / "analyze" / name.replace(".", "-") / "annotated.png").stat().st_size > 0
    assert len(list((tmp_path / "render").glob("*.png"))) == 1


def test_nii_analyze_json_prints_one_result_per_line(tmp_path, capsys):
    code = main(["analyze", str(SAMPLES / "container.json"), "--out", str(tmp_path), "--json"])
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert code == 0 and record["decision"] == "ALARM"
    assert Path(record["outputs"]["tdr"]).is_file()
    assert json.loads(Path(record["outputs"]["result"]).read_text())["alerts"] == record["alerts"]


def test_nii_analyze_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    config = tmp_path / "pipeline.toml"
    config.write_text("[models.anomaly]\nscan_kinds = ['x-ray']\n")
    code = main(["analyze", str(SAMPLES / "container.json"), "--out", str(tmp_path), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "scan_kinds has x-ray" in err


def test_nii_evaluate_judges_the_pipelines_decision_on_an_image_level_set(tmp_path, capsys):
    for name, files in {"clear": ["bag-clear.json", "bag-clear.raw"],
                        "threat": ["container.json", "container.raw", "bag-dicos-ct.dcm"]}.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes((SAMPLES / file).read_bytes())
    (tmp_path / "threat" / "bad.png").write_bytes(b"junk")
    assert main(["evaluate", str(tmp_path), "--pipeline", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["pd"], result["pfa"], result["n_threat"], result["n_clear"]) == (1.0, 0.0, 2, 1)
    assert list(result["refused"]) == [str(tmp_path / "threat" / "bad.png")]
    assert "rule-manifest 1.1.0" in result["models"]
    assert main(["evaluate", str(SAMPLES), "--pipeline"]) == 2  # not an image-level set
    assert "image-level set" in capsys.readouterr().err
