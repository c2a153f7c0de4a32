"""``nii info`` as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nii import write_scan
from nii.cli import main
from nii.scan import ScanKind
from tests.conftest import REPO, make_scan


def run_nii(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": ""}
    return subprocess.run([sys.executable, "-m", "nii.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    """A folder like an archive: scans of each kind, a CT series, a sidecar, junk."""
    write_scan(make_scan(ScanKind.DUAL_ENERGY), tmp_path / "a-dual.dcm")
    write_scan(make_scan(ScanKind.PSEUDO_COLOUR), tmp_path / "b-console.png")
    (tmp_path / "nested").mkdir()
    write_scan(make_scan(ScanKind.SINGLE_ENERGY), tmp_path / "nested" / "c-single.raw")
    write_scan(make_scan(ScanKind.CT_VOLUME, dtype="int16"), tmp_path / "nested" / "series", format="dicom_series")
    (tmp_path / "README.md").write_text("not a scan")
    (tmp_path / "annotations.json").write_text('{"images": []}')
    (tmp_path / ".hidden.png").write_bytes(b"\x89PNG junk")
    return tmp_path


def test_info_walks_folders_one_line_per_scan(archive: Path) -> None:
    result = run_nii("info", str(archive))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4, lines  # the raw pair and the 5 CT slices each count once
    assert any("dual_energy 2x12x17 uint16" in line and "80/160 kV" in line for line in lines)
    assert any("ct_volume 5x12x17 int16" in line and "dicom_series" in line for line in lines)
    assert any(line.startswith(str(archive / "nested" / "c-single.json")) for line in lines)
    assert result.stderr == ""


def test_info_json_has_the_documented_keys(archive: Path) -> None:
    result = run_nii("info", "--json", str(archive))
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert {"path", "format", "modality", "shape", "scan_id"} <= row.keys()
    by_format = {row["format"]: row for row in rows}
    assert by_format["dicos"]["modality"] == "DX" and by_format["dicos"]["shape"] == [2, 12, 17]
    assert by_format["png"]["scan_id"].startswith("sha256:")


def test_refusals_are_one_line_and_exit_one(archive: Path) -> None:
    bad = archive / "z-truncated.dcm"
    bad.write_bytes((archive / "a-dual.dcm").read_bytes()[:300])
    (archive / "y-header.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}")
    result = run_nii("info", str(archive), str(archive / "does-not-exist.tiff"))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    refusals = [line for line in result.stdout.splitlines() if "REFUSED" in line]
    assert len(refusals) == 3, result.stdout
    assert len(result.stdout.strip().splitlines()) == 7  # the four good scans still listed
    as_json = run_nii("info", "--json", str(bad))
    row = json.loads(as_json.stdout)
    assert row["path"] == str(bad) and row["error"] and as_json.returncode == 1


def test_bad_arguments_get_usage_not_traceback() -> None:
    result = run_nii("info", "--max-pixels", "-5", "x")
    assert result.returncode == 2 and "must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_nii().returncode == 2


def test_max_pixels_flag_refuses_large_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_scan(make_scan(ScanKind.SINGLE_ENERGY), tmp_path / "s.tiff")
    assert main(["info", "--max-pixels", "100", str(tmp_path)]) == 1
    assert "pixel budget" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "s.tiff")]) == 0


def test_sample_scans_are_all_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json", str(REPO / "sample_scans")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {Path(row["path"]).name: row for row in rows}
    assert set(by_name) == {"bag-threat.json", "bag-clear.json", "parcel-dicos-dx.dcm", "bag-dicos-ct.dcm",
                            "container.json", "bag-threat-console.png", "bag-threat-console.jpg"}
    assert {row["kind"] for row in rows} == {"dual_energy", "pseudo_colour", "ct_volume"}
    assert {row["format"] for row in rows} == {"raw", "dicos", "png", "jpeg"}
    assert by_name["bag-threat.json"]["energies_kv"] == [80.0, 160.0]
    assert min(by_name["container.json"]["energies_kv"]) >= 1000  # a MeV cargo linac


def test_walking_calibration_folders_lists_only_scans(capsys: pytest.CaptureFixture[str]) -> None:
    # profile.npz files sit beside the acquisitions; they are not scans.
    assert main(["info", str(REPO / "calibration" / "baggage-dual-kvp")]) == 0
    out = capsys.readouterr().out
    assert "REFUSED" not in out and "profile.npz" not in out and "air.json" in out


# -- what a user gets wrong, beyond the scans themselves -----------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(text in err for text in expected), err
    return err


@pytest.mark.parametrize(("config", "expected"), [
    ('decision = "x"\n[models.anomaly]\n', "decision must be a table"),
    ("[models]\nanomaly = 1\n", "models.anomaly must be a table"),
    ('[models.anomaly]\nscan_kinds = "pseudo_colour"\n', "scan_kinds must be a list of names"),
    ("[models.anomaly]\nskip_scanners = 5\n", "skip_scanners must be a list of names"),
    ("[models.anomaly]\noptions = 5\n", "options must be a table"),
    ("models_root = 5\n[models.anomaly]\n", "models_root must be a path"),
    ('[decision]\noperating_point = "nope"\n[models.anomaly]\n', "no operating point 'nope'"),
])
def test_a_pipeline_config_of_the_wrong_shape_is_one_line(tmp_path, capsys, config, expected):
    path = REPO / "configs" / f".test-{os.getpid()}.toml"  # beside the shipped one, for its relative roots
    path.write_text(config)
    try:
        assert main(["analyze", str(REPO / "sample_scans" / "bag-clear.json"), "--out", str(tmp_path),
                     "--config", str(path)]) == 2
    finally:
        path.unlink()
    _one_error_line(capsys, expected)
    assert not any(tmp_path.iterdir())  # refused before analysing anything


@pytest.mark.parametrize("version", ["../..", "1.0", "1.0.0/x"])
def test_a_model_version_that_is_not_a_folder_name_is_refused_before_training(tmp_path, capsys, version):
    (tmp_path / "precious.txt").write_text("keep me")
    config = tmp_path / "rules.toml"
    config.write_text(f'version = "{version}"\n[sets.tiny]\nscanner = "baggage-dual-kvp"\nn = 1\nseed = 1\n'
                      '[rules.opaque]\ntargets = ["shielding"]\nsets = ["tiny"]\n')
    assert main(["train", str(config), "--models", str(tmp_path / "models"), "--quiet"]) == 2
    _one_error_line(capsys, "must be MAJOR.MINOR.PATCH")
    assert (tmp_path / "precious.txt").read_text() == "keep me" and not (tmp_path / "models").exists()


def test_render_into_an_unwritable_folder_fails_instead_of_claiming_the_file(tmp_path, capsys):
    blocker = tmp_path / "bag-clear-json-colour.png"
    blocker.mkdir()  # the file's name is taken by a folder
    assert main(["render", str(REPO / "sample_scans" / "bag-clear.json"), "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "bag-clear-json-colour.png")


def test_render_gives_two_bags_of_one_name_two_files_and_refuses_an_empty_window(tmp_path, capsys):
    for lane in ("lane-1", "lane-2"):
        (tmp_path / lane).mkdir()
        for suffix in (".json", ".raw"):
            shutil.copy(REPO / "sample_scans" / f"bag-clear{suffix}", tmp_path / lane / f"bag-clear{suffix}")
    assert main(["render", str(tmp_path / "lane-1"), str(tmp_path / "lane-2"), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bag-clear-json-2-colour.png",
                                                                   "bag-clear-json-colour.png"]
    capsys.readouterr()
    assert main(["render", str(tmp_path / "lane-1"), "--out", str(tmp_path / "w"), "--tool", "window",
                 "--window", "5", "1"]) == 2
    _one_error_line(capsys, "LOW must be below HIGH")
    with pytest.raises(SystemExit):  # argparse: one usage line, before anything runs
        main(["evaluate", str(tmp_path), "--threshold", "nan"])
    assert "must be within 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["audit", "verify"], ["report", "--from", "2026-01-01", "--to", "2026-01-02"],
                                     ["evidence", "key"]])
def test_reading_commands_refuse_a_mistyped_data_folder(tmp_path, capsys, command):
    typo = tmp_path / "dta"
    assert main([*command, "--data", str(typo)]) == 2
    _one_error_line(capsys, "not an nii data folder")
    assert not typo.exists()  # no new, empty store (or site key) was made there
    if command == ["evidence", "key"]:  # reads the site key only, not the store
        return
    emptied = tmp_path / "emptied"
    emptied.mkdir()
    (emptied / "nii.sqlite3").write_bytes(b"")  # a database file with no store in it
    assert main([*command, "--data", str(emptied)]) == 2
    _one_error_line(capsys, "holds no nii store")
    assert not (emptied / "blobs").exists()  # and no store was made there (SQLite's own side files aside)
    with sqlite3.connect(emptied / "nii.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_an_unforeseen_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import nii.cli

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(nii.cli, "cmd_models", broken)  # build_parser binds it when main runs
    assert main(["models"]) == 1
    _one_error_line(capsys, "unexpected KeyError", "NII_DEBUG=1")
    monkeypatch.setenv("NII_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["models"])


def test_a_closed_pipe_ends_quietly():
    process = subprocess.run(f"{sys.executable} -m nii.cli info sample_scans sample_scans sample_scans | head -1",
                             shell=True, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert process.stdout.count("\n") == 1 and process.stderr == ""


@pytest.mark.parametrize("option", ["--port", "--dicom-port"])
@pytest.mark.parametrize("value", ["-1", "70000", "http"])
def test_serve_refuses_a_port_that_cannot_be_before_starting(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as stop:
        main(["serve", "--data", str(tmp_path / "data"), option, value])
    assert stop.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing made: no store, no first admin password


def test_training_on_cuda_without_a_gpu_is_one_line_before_any_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", str(REPO / "configs" / "anomaly.toml"), "--device", "cuda",
                 "--models", str(tmp_path)]) == 2
    _one_error_line(capsys, "no CUDA GPU")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["info"], ["analyze", "--out", "OUT"], ["render", "--out", "OUT"]])
def test_a_folder_with_no_scans_is_said_not_passed_silently(tmp_path, capsys, command):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    assert main([args[0], str(tmp_path / "empty"), *args[1:]]) == 2
    _one_error_line(capsys, "no scans found under")


def test_an_empty_registry_or_image_level_set_is_said(tmp_path, capsys):
    assert main(["models", "--models", str(tmp_path / "none")]) == 2
    _one_error_line(capsys, "no models registered")
    for part in ("clear", "threat"):
        (tmp_path / "set" / part).mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "set"), "--pipeline"]) == 2
    _one_error_line(capsys, "hold no scans")
