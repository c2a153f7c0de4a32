"""Batch re-analysis (issue #9): sources, Parquet tables, resume after a kill, flat memory, diff, engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nii.annotate.result import OUTPUT_FILES
from nii.batch import diff_runs, match_alerts, run_batch
from nii.batch.engines import ActorPlan, actor_plan
from nii.batch.results import MANIFEST, ResultsError, _differences, read_manifest
from nii.batch.run import pipeline_identity
from nii.batch.sources import ArchiveItem, iter_archive
from nii.cli import main
from nii.ingest import ScanSource, write_scan
from nii.scan import ScanKind
from nii.serve.intake import accept_scan, uploads_of
from nii.serve.store import Store
from tests.conftest import REPO, make_scan

# Rules only, and a small dual-energy scan: a scan costs milliseconds, so a
# thousand of them show what the batch machinery itself costs.
CHEAP_CONFIG = f"""
models_root = "{REPO / 'models'}"
calibration_root = "{REPO / 'calibration'}"
[models.rule-manifest]
[models.rule-opaque]
"""


def write_tiny_scans(folder: Path, n: int, *, start: int = 0) -> list[Path]:
    """``n`` distinct small dual-energy scans (distinct content, so distinct ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"bag-{i:05d}.npz"
        write_scan(make_scan(ScanKind.DUAL_ENERGY, seed=i), path)
        paths.append(path)
    return paths


def cheap_config(folder: Path, extra: str = "") -> Path:
    path = folder / "pipeline.toml"
    path.write_text(CHEAP_CONFIG + extra)
    return path


def scans_table(results: Path) -> list[dict]:
    return pq.read_table(results / "scans.parquet").to_pylist()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """One run over all three kinds of archive: a folder, a list file and a service store."""
    root = tmp_path_factory.mktemp("batch")
    folder = root / "archive"
    write_tiny_scans(folder, 3)
    for name in ("container.json", "container.raw"):  # the declared-empty container: it alarms
        shutil.copy(REPO / "sample_scans" / name, folder / name)
    (folder / "truncated.dcm").write_bytes(b"DICM" * 10)
    listed = write_tiny_scans(root / "elsewhere", 2, start=100)
    list_file = root / "scans.txt"
    # Relative to the list's folder, absolute, a comment, a blank line, and a file that is gone.
    list_file.write_text(f"# scans pulled for the audit\nelsewhere/{listed[0].name}\n\n{listed[1]}\n"
                         "elsewhere/missing.npz\n")
    data = root / "service-data"
    store = Store.open(data)
    stored_ids = [accept_scan(store, uploads_of(ScanSource(p)), source="http", username=None).scan_id
                  for p in write_tiny_scans(root / "uploads", 2, start=200)]
    store.engine.dispose()
    config = cheap_config(root)
    results = root / "results"
    summary = run_batch([folder, list_file, data], results, config=config, workers=1, outputs=True,
                        chunk_size=4, progress=False)
    return {"root": root, "folder": folder, "list_file": list_file, "data": data, "stored_ids": stored_ids,
            "config": config, "results": results, "summary": summary}


def test_archive_items_come_from_folders_list_files_and_the_store(finished):
    items = list(iter_archive([finished["folder"], finished["list_file"], finished["data"]]))
    names = [Path(i.path).name for i in items]
    # The container's raw data file is its sidecar's, not a second scan.
    assert names[:5] == ["bag-00000.npz", "bag-00001.npz", "bag-00002.npz", "container.json", "truncated.dcm"]
    assert names[5:8] == ["bag-00100.npz", "bag-00101.npz", "missing.npz"]
    stored = items[8:]
    assert [i.scan_id for i in stored] == sorted(finished["stored_ids"], key=finished["stored_ids"].index)
    assert all(i.key.startswith("store:") and i.store for i in stored)
    assert len({i.key for i in items}) == len(items) == 10
    assert ArchiveItem.from_json(items[0].to_json()) == items[0]


def test_every_scan_gets_one_row_with_models_profile_and_decision(finished):
    rows = {Path(r["path"]).name if not r["key"].startswith("store:") else r["scan_id"]: r
            for r in scans_table(finished["results"])}
    assert len(rows) == 10 and finished["summary"].analysed == 10
    container = rows["container.json"]
    assert container["decision"] == "ALARM" and container["alarm_count"] >= 1
    assert container["models"] == "rule-manifest 1.1.0, rule-opaque 1.0.0"
    assert container["profile_id"].startswith("cargo-linac/v1/")
    assert container["error"] is None
    for scan_id in finished["stored_ids"]:
        assert rows[scan_id]["decision"] == "CLEAR" and rows[scan_id]["kind"] == "dual_energy"
    alerts = pq.read_table(finished["results"] / "alerts.parquet").to_pylist()
    assert {a["scan_id"] for a in alerts} == {container["scan_id"]}
    assert len(alerts) == container["alert_count"]
    assert {"manifest_mismatch", "opaque"} <= {a["class"] for a in alerts}
    assert all(len(a["box"]) == 4 and a["severity"] in ("alarm", "advisory") for a in alerts)


def test_bad_files_are_rows_with_their_reason_and_the_run_goes_on(finished):
    rows = {Path(r["path"]).name: r for r in scans_table(finished["results"])}
    assert "DICOM" in rows["truncated.dcm"]["error"] and rows["truncated.dcm"]["decision"] is None
    assert "no such file" in rows["missing.npz"]["error"]
    summary = finished["summary"]
    assert summary.errors == 2 and sum(summary.reasons.values()) == 2
    assert "2 errors" in summary.text() and "scans/s" in summary.text()


def test_outputs_on_request_are_the_analyze_files(finished):
    rows = [r for r in scans_table(finished["results"]) if r["error"] is None]
    assert len(rows) == 8
    for row in rows:
        folder = finished["results"] / row["outputs"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES.values())
    container = next(r for r in rows if r["path"].endswith("container.json"))
    record = json.loads((finished["results"] / container["outputs"] / "result.json").read_text())
    assert record["decision"] == "ALARM" and record["scan"]["id"] == container["scan_id"]


def test_the_manifest_records_what_was_done_with_which_models_and_profiles(finished):
    records = list(read_manifest(finished["results"]))
    header = records[0]["pipeline"]
    assert [(m["name"], m["version"]) for m in header["models"]] == [("rule-manifest", "1.1.0"),
                                                                    ("rule-opaque", "1.0.0")]
    assert all(len(m["sha256"]) == 64 for m in header["models"])
    assert header["profiles"]["cargo-linac"].startswith("cargo-linac/v1/")
    parts = [r for r in records if r["event"] == "part"]
    assert [p["part"] for p in parts] == [1, 2, 3]  # chunks of 4
    done = [entry for p in parts for entry in p["scans"]]
    assert sorted(e[0] for e in done) == sorted(r["key"] for r in scans_table(finished["results"]))
    assert records[-1]["event"] == "merged"


def test_running_again_on_finished_results_does_nothing(finished):
    results = finished["results"]
    before = {p: p.stat().st_mtime_ns for p in [results / MANIFEST, results / "scans.parquet",
                                               results / "alerts.parquet"]}
    summary = run_batch([finished["folder"], finished["list_file"], finished["data"]], results,
                        config=finished["config"], workers=1, outputs=True, progress=False)
    assert summary.analysed == 0 and summary.already_done == 10 and summary.total == 10
    assert "nothing to do" in summary.text()
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_another_pipeline_into_the_same_results_is_refused_in_one_line(finished, tmp_path, capsys):
    other = cheap_config(tmp_path, 'options = { min_area_cm2 = 5.0 }\n')
    code = main(["batch", "run", str(finished["folder"]), "--out", str(finished["results"]),
                 "--config", str(other), "--outputs", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "made with another pipeline" in err and "options" in err
    no_outputs = main(["batch", "run", str(finished["folder"]), "--out", str(finished["results"]),
                       "--config", str(finished["config"]), "--quiet"])
    assert no_outputs == 2 and "outputs" in capsys.readouterr().err


def test_a_refusal_names_only_the_setting_that_changed(tmp_path):
    config = cheap_config(tmp_path, "scan_kinds = ['dual_energy']\n")  # a tuple in the config, a list once stored
    identity = pipeline_identity(config)
    assert identity == json.loads(json.dumps(identity))  # as the manifest reads it back
    assert _differences(identity, pipeline_identity(config, outputs=True)) == "the same models, but outputs differ"


def test_the_walk_follows_links_reports_broken_ones_and_leaves_other_runs_results_out(tmp_path):
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    write_tiny_scans(archive, 1)
    write_tiny_scans(elsewhere, 2, start=10)
    (archive / "linked").symlink_to(elsewhere, target_is_directory=True)
    (archive / "loop").symlink_to(archive, target_is_directory=True)  # walked once, not for ever
    (archive / "gone.npz").symlink_to(tmp_path / "deleted.npz")
    old_run = archive / "old-results"
    write_tiny_scans(old_run / "outputs", 1, start=20)
    (old_run / MANIFEST).write_text("")
    for name in ("container.json", "container.raw"):
        shutil.copy(REPO / "sample_scans" / name, archive / name)
    listed = tmp_path / "scans.txt"  # saved with a byte-order mark, naming the raw half of a pair
    listed.write_bytes("\ufeffarchive/container.raw\n".encode("utf-8"))
    items = list(iter_archive([archive, listed]))
    names = sorted(Path(i.path).name for i in items)
    assert names == ["bag-00000.npz", "bag-00010.npz", "bag-00011.npz", "container.json", "container.json",
                     "gone.npz"]
    assert len({i.key for i in items}) == 5  # the listed raw file is its sidecar's scan
    results = tmp_path / "results"
    summary = run_batch([archive, listed], results, config=cheap_config(tmp_path), workers=1, progress=False)
    assert summary.analysed == 5 and summary.listed_twice == 1
    assert "no such file" in next(r["error"] for r in scans_table(results) if r["path"].endswith("gone.npz"))


def test_an_archive_without_scans_or_with_a_list_that_is_not_utf8_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("scans from lane 3")
    assert main(["batch", "run", str(tmp_path / "empty"), "--out", str(tmp_path / "r1"), "--quiet"]) == 2
    assert "no scans found in" in capsys.readouterr().err
    latin = tmp_path / "scans.txt"
    latin.write_bytes(b"# lane 3\nGep\xe4ck/bag.npz\n")
    assert main(["batch", "run", str(latin), "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert f"list file {latin}: line 2 is not UTF-8" in capsys.readouterr().err


def test_local_workers_are_at_most_the_cores():
    from nii.batch.engines import LocalEngine, available_cores

    assert LocalEngine({}, workers=64).workers == available_cores()


def test_a_missing_archive_is_refused_before_anything_runs(tmp_path, capsys):
    code = main(["batch", "run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "results")])
    assert code == 2 and "nowhere: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_killed_run_carries_on_and_every_scan_is_in_the_tables_once(tmp_path):
    archive = tmp_path / "archive"
    paths = write_tiny_scans(archive, 300)
    config = cheap_config(tmp_path)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "nii.cli", "batch", "run", str(archive), "--out", str(results),
               "--config", str(config), "--workers", "1", "--chunk-size", "10", "--quiet"]
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and run.poll() is None:
            manifest = results / MANIFEST
            if manifest.exists() and manifest.read_text().count('"event":"part"') >= 3:
                break
            time.sleep(0.02)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run and its workers, mid-flight
        run.wait()
    parts = [r for r in read_manifest(results) if r["event"] == "part"]
    done_before = sum(len(p["scans"]) for p in parts)
    assert 30 <= done_before < 300, "the kill should land mid-run"
    # A kill between a part's rename and its manifest line leaves an orphan
    # part and a torn line; the next run must drop both.
    shutil.copy(results / "parts" / "scans-000001.parquet", results / "parts" / f"scans-{len(parts) + 1:06d}.parquet")
    with (results / MANIFEST).open("a") as manifest:
        manifest.write('{"event":"part","part":')
    summary = run_batch([archive], results, config=config, workers=1, chunk_size=50, progress=False)
    assert summary.already_done == done_before and summary.analysed == 300 - done_before
    keys = [r["key"] for r in scans_table(results)]
    assert sorted(keys) == sorted(str(p.resolve()) for p in paths)  # each exactly once


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:  # a zombie (dead, waiting for its reaper) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_run_stopped_by_a_signal_leaves_no_workers_behind(tmp_path, how):
    archive = tmp_path / "archive"
    write_tiny_scans(archive, 200)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "nii.cli", "batch", "run", str(archive), "--out", str(results),
               "--config", str(cheap_config(tmp_path)), "--workers", "1", "--chunk-size", "5", "--quiet"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while run.poll() is None and time.monotonic() < deadline:
            manifest = results / MANIFEST
            if manifest.exists() and '"event":"part"' in manifest.read_text():
                break
            time.sleep(0.05)
        workers = _children(run.pid)
        assert run.poll() is None and workers, "the signal should land mid-run"
        run.send_signal(getattr(signal, how))  # the parent only, as a scheduler or the OOM killer does
        code = run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 15
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, workers))
    parts = [r for r in read_manifest(results) if r["event"] == "part"]
    kept = sum(len(p["scans"]) for p in parts)
    assert parts and len({key for p in parts for key, *_ in p["scans"]}) == kept
    if how == "SIGTERM":  # stopped as Ctrl-C stops it: what was analysed is committed, and said
        assert code == 130 and f"interrupted: {results} keeps {kept} scans" in run.stderr.read()


def test_a_worker_whose_parent_died_while_it_was_starting_ends_itself():
    # The parent is killed before the worker's initializer runs: the worker
    # is init's child by then, and must still know it was orphaned.
    dead = subprocess.Popen(["true"])
    dead.wait()
    worker = subprocess.run(
        [sys.executable, "-c", "import sys, time; from nii.batch.engines import _start_worker; "
         f"_start_worker({{'no_such_setting': 1}}, {dead.pid}); time.sleep(60); sys.exit(0)"],
        timeout=50, capture_output=True)
    assert (worker.returncode, worker.stderr) == (1, b"")  # ended by its orphan watch, not after its 60 s


def _pool_workers() -> list[int]:
    """Pids of this process's spawned pool workers."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def test_a_worker_killed_mid_scan_costs_a_fresh_pool_not_the_run(tmp_path, monkeypatch):
    from nii.batch.engines import LocalEngine

    suspects: list[str] = []
    one_at_a_time = LocalEngine._one_at_a_time
    monkeypatch.setattr(LocalEngine, "_one_at_a_time",
                        lambda self, lines: (suspects.extend(lines), one_at_a_time(self, lines))[1])
    archive = tmp_path / "archive"
    paths = write_tiny_scans(archive, 150)
    results = tmp_path / "results"
    run = threading.Thread(target=run_batch, args=([archive], results),
                           kwargs={"config": cheap_config(tmp_path), "workers": 1, "chunk_size": 10,
                                   "progress": False})
    run.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (results / "parts" / "scans-000002.parquet").exists():
        time.sleep(0.02)
    workers = _pool_workers()
    assert workers, "the run should have a worker by now"
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
    run.join(timeout=120)
    assert not run.is_alive()
    rows = scans_table(results)
    assert sorted(r["key"] for r in rows) == sorted(str(p.resolve()) for p in paths)
    # The scans in flight were analysed again, one at a time; none of them was to blame.
    assert 1 <= len(suspects) <= 8 and all(r["error"] is None for r in rows)


def _peak_rss_mb(command: list[str]) -> float:
    """Peak resident memory of the largest process ``command`` starts (it or a worker), in MB."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024.0


def test_memory_stays_flat_as_the_archive_grows(tmp_path):
    config = cheap_config(tmp_path)
    write_tiny_scans(tmp_path / "small", 100)
    write_tiny_scans(tmp_path / "large", 1000)
    peaks = {}
    for name in ("small", "large"):
        peaks[name] = _peak_rss_mb([sys.executable, "-m", "nii.cli", "batch", "run", str(tmp_path / name),
                                    "--out", str(tmp_path / f"results-{name}"), "--config", str(config),
                                    "--workers", "1", "--quiet"])
    assert len(scans_table(tmp_path / "results-large")) == 1000
    assert len(scans_table(tmp_path / "results-small")) == 100
    assert abs(peaks["large"] - peaks["small"]) <= 0.10 * peaks["small"], peaks


# -- diff ---------------------------------------------------------------------

def test_alerts_match_by_class_and_box_overlap():
    a = [{"class": "knife", "box": [0, 0, 10, 10]}, {"class": "gun", "box": [50, 50, 60, 60]}]
    b = [{"class": "gun", "box": [51, 50, 61, 60]}, {"class": "knife", "box": [30, 30, 40, 40]},
         {"class": "gun", "box": [0, 0, 10, 10]}]
    pairs, removed, new = match_alerts(a, b, min_iou=0.5)
    assert [(i, j) for i, j, _ in pairs] == [(1, 0)]
    assert removed == [0] and new == [1, 2]


def _edited_copy(results: Path, into: Path) -> Path:
    """``results`` as a second run would leave it: one alert gone, one rescored, one new, one decision flipped."""
    shutil.copytree(results, into)
    alerts = pq.read_table(into / "alerts.parquet").to_pylist()
    manifest_alert = next(a for a in alerts if a["class"] == "manifest_mismatch")
    opaque = [a for a in alerts if a["class"] == "opaque"]
    alerts.remove(opaque[0])  # removed
    manifest_alert["score"] -= 0.2  # changed
    scans = pq.read_table(into / "scans.parquet").to_pylist()
    clear = next(s for s in scans if s["path"].endswith("bag-00001.npz"))
    clear["decision"], clear["alert_count"], clear["alarm_count"] = "ALARM", 1, 1
    alerts.append({**opaque[0], "key": clear["key"], "scan_id": clear["scan_id"], "path": clear["path"],
                   "alert_id": 1, "class": "knife"})  # new
    pq.write_table(pa.Table.from_pylist(alerts, schema=pq.read_schema(results / "alerts.parquet")),
                   into / "alerts.parquet")
    pq.write_table(pa.Table.from_pylist(scans, schema=pq.read_schema(results / "scans.parquet")),
                   into / "scans.parquet")
    return into


def test_diff_lists_new_removed_and_changed_alerts_per_scan(finished, tmp_path, capsys):
    b = _edited_copy(finished["results"], tmp_path / "v2")
    diff = diff_runs(finished["results"], b)
    s = diff.summary
    assert s["scans_in_both"] == 10 and s["only_in_a"] == s["only_in_b"] == 0
    assert s["alerts"]["new"] == 1 and s["alerts"]["removed"] == 1 and s["alerts"]["changed"] == 1
    assert s["decisions"] == {"CLEAR->ALARM": 1} and s["scans_with_changes"] == 2
    by_path = {Path(d.path).name: d for d in diff.scans}
    assert by_path["container.json"].changed[0]["what"] == ["score"]
    assert by_path["bag-00001.npz"].new[0]["class"] == "knife"

    assert main(["batch", "diff", str(finished["results"]), str(b)]) == 0
    text = capsys.readouterr().out
    assert "CLEAR -> ALARM" in text and "+ new      knife" in text and "- removed  opaque" in text
    assert "rule-opaque 1.0.0" in text.splitlines()[0]
    assert main(["batch", "diff", str(finished["results"]), str(b), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == s and len(report["scans"]) == 2


def test_diff_of_a_run_with_itself_is_empty_and_a_partial_run_shows_what_it_lacks(finished, tmp_path):
    same = diff_runs(finished["results"], finished["results"])
    assert same.scans == [] and same.summary["alerts"]["unchanged"] == 3
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("scans", "alerts"):
        table = pq.read_table(finished["results"] / f"{name}.parquet")
        keep = [not p.endswith("container.json") for p in table["path"].to_pylist()]
        pq.write_table(table.filter(pa.array(keep)), partial / f"{name}.parquet")
    diff = diff_runs(finished["results"], partial)
    assert diff.summary["only_in_a"] == 1 and diff.scans[0].only_in == "A"
    with pytest.raises(ValueError, match="no scans.parquet"):
        diff_runs(finished["results"], tmp_path)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished["results"], unfinished)
    with (unfinished / MANIFEST).open("a") as manifest:  # a part committed by a run that was then killed
        manifest.write(json.dumps({"event": "part", "part": 99, "scans": []}) + "\n")
    with pytest.raises(ValueError, match="run the same nii batch run again to finish it"):
        diff_runs(finished["results"], unfinished)


def test_diff_pairs_a_scan_that_failed_in_one_run_with_its_analysis_in_the_other(finished, tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    shutil.copy(finished["results"] / "alerts.parquet", failed / "alerts.parquet")
    rows = scans_table(finished["results"])
    for row in rows:  # as a truncated copy of the file read in run A: no id, no decision, a reason
        if row["path"].endswith("bag-00000.npz"):
            row.update(scan_id=None, decision=None, error="NPZ: truncated")
    pq.write_table(pa.Table.from_pylist(rows, pq.read_schema(finished["results"] / "scans.parquet")),
                   failed / "scans.parquet")
    for a, b, change in [(failed, finished["results"], "ERROR->CLEAR"), (finished["results"], failed, "CLEAR->ERROR")]:
        s = diff_runs(a, b).summary
        assert s["scans_in_both"] == 10 and s["only_in_a"] == s["only_in_b"] == 0
        assert s["decisions"] == {change: 1} and s["errors_a"] + s["errors_b"] == 2 + 2 + 1


# -- engines ------------------------------------------------------------------

def test_ray_engine_gives_the_local_engines_tables(finished, tmp_path, capfd, monkeypatch):
    import logging

    import ray.data  # noqa: F401  (importing it sets up its logging)

    results = tmp_path / "ray"  # ray[data] is a test dependency: missing, this fails
    logging.getLogger("ray.data").setLevel(logging.INFO)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # unset, a new local Ray says which it chose
    summary = run_batch([finished["folder"]], results, config=finished["config"], engine="ray", workers=1,
                        progress=False)
    assert logging.getLogger("ray.data").level == logging.INFO  # the caller's logging is put back
    assert "Token authentication" not in capfd.readouterr().err  # nor past --quiet
    assert summary.engine == "ray" and summary.analysed == 5
    local = {r["key"]: (r["decision"], r["alert_count"], r["error"]) for r in scans_table(finished["results"])}
    for row in scans_table(results):
        assert (row["decision"], row["alert_count"], row["error"]) == local[row["key"]]


@pytest.mark.parametrize("resources, workers, plan", [
    ({"CPU": 16.0, "GPU": 2.0}, None, ActorPlan(actors=2, threads=8, num_cpus=7.5, num_gpus=1.0)),
    ({"CPU": 8.0, "GPU": 1.0}, 4, ActorPlan(actors=4, threads=2, num_cpus=1.75, num_gpus=0.25)),
    ({"CPU": 2.0}, 1, ActorPlan(actors=1, threads=2, num_cpus=1.0, num_gpus=0.0)),
    ({"CPU": 2.0}, None, ActorPlan(actors=2, threads=1, num_cpus=0.5, num_gpus=0.0)),
    ({"CPU": 1.0}, None, ActorPlan(actors=1, threads=1, num_cpus=0.5, num_gpus=0.0)),
])
def test_ray_actors_take_one_gpu_each_and_leave_a_core_for_ray_data(resources, workers, plan):
    assert actor_plan(resources, workers) == plan


def test_ray_engine_on_a_cluster_with_a_gpu_runs_the_learned_models_there(finished, tmp_path):
    import ray
    import torch

    # Ray takes a node's GPU count on trust: on a machine without one, this
    # cluster has a GPU in name only, and an actor told to use it must say so.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    config = cheap_config(tmp_path, "[models.anomaly]\n")
    try:
        if torch.cuda.is_available():
            summary = run_batch([finished["folder"]], tmp_path / "gpu", config=config, engine="ray", progress=False)
            assert summary.analysed == 5 and summary.errors == 1  # the truncated DICOM
        else:
            with pytest.raises(ValueError, match=r"the ray engine stopped \(RuntimeError: .*(CUDA|NVIDIA)") as err:
                run_batch([finished["folder"]], tmp_path / "gpu", config=config, engine="ray", progress=False)
            assert "\n" not in str(err.value) and "\x1b" not in str(err.value)  # one plain line
    finally:
        ray.shutdown()


def test_unknown_engine_and_locked_results_are_refused(finished, tmp_path):
    with pytest.raises(ValueError, match="unknown engine 'spark'; engines: local, ray"):
        run_batch([finished["folder"]], tmp_path / "r", config=finished["config"], engine="spark", progress=False)
    from nii.batch.results import Manifest
    from nii.batch.run import pipeline_identity

    held = Manifest.open(tmp_path / "r2", pipeline_identity(finished["config"]))
    try:
        with pytest.raises(ResultsError, match="another nii batch run is writing it"):
            run_batch([finished["folder"]], tmp_path / "r2", config=finished["config"], progress=False)
    finally:
        held.close()


def test_a_folder_that_is_not_a_results_folder_is_left_alone(finished, tmp_path):
    """--out pointed at someone's folder: refused, nothing in it overwritten or deleted."""
    mine = tmp_path / "notes"
    (mine / "parts").mkdir(parents=True)
    (mine / "parts" / "draft.txt").write_text("mine")
    (mine / "scans.parquet").write_text("not a table")
    with pytest.raises(ResultsError, match="not a batch run's RESULTS"):
        run_batch([finished["folder"]], mine, config=finished["config"], progress=False)
    assert (mine / "parts" / "draft.txt").read_text() == "mine"
    assert (mine / "scans.parquet").read_text() == "not a table"


@pytest.mark.parametrize("line", ['[1, 2]', '{"event": "part"}', '{"event": "part", "part": "x", "scans": 3}'])
def test_a_manifest_line_that_is_no_record_is_refused_in_one_line(finished, tmp_path, line):
    results = tmp_path / "r"
    shutil.copytree(finished["results"], results)
    with (results / MANIFEST).open("a") as manifest:
        manifest.write(line + "\n")
    with pytest.raises(ResultsError, match=r"line \d+ is not a manifest record"):
        run_batch([finished["folder"]], results, config=finished["config"], progress=False)
