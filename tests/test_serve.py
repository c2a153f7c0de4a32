"""The operator service through its API, hot folder and commands, as its users use them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import cv2
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from nii.cli import main
from nii.pipeline import AnalysisError, Pipeline
from nii.serve.app import create_app
from nii.serve.hotfolder import HotFolder
from nii.serve.service import Service, ServiceConfig, load_service_config
from nii.serve.store import Store, scans
from tests.serve_support import BACKENDS, PASSWORDS, REPO, SAMPLES, add_users, open_store, sample_uploads


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    store = Store.open(tmp_path_factory.mktemp("data"))
    add_users(store)
    service = Service(store, ServiceConfig(workers=1, dicom_port=0))
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


def login(client: TestClient, user: str) -> dict[str, str]:
    reply = client.post("/api/token", data={"username": user, "password": PASSWORDS[user]})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def upload(client: TestClient, stem: str, headers: dict[str, str]):
    return client.post("/api/scans", files=[("files", (u.name, u.data)) for u in sample_uploads(stem)], headers=headers)


@pytest.fixture(scope="module")
def analysed(client, service):
    """The threat bag and the DICOS CT, submitted over HTTP and analysed."""
    op = login(client, "op")
    ids = {stem: upload(client, stem, op).json()["scan_id"] for stem in ("bag-threat", "bag-dicos-ct")}
    assert service.wait_until_idle(180)
    return ids


def test_nobody_gets_in_without_credentials(client):
    for method, path in [("get", "/api/scans"), ("post", "/api/scans"), ("get", "/api/scans/x/result.json"),
                         ("put", "/api/config/thresholds"), ("get", "/api/audit"), ("get", "/api/me")]:
        reply = getattr(client, method)(path)
        assert reply.status_code == 401, (method, path)
    assert client.get("/api/scans", headers={"Authorization": "Bearer forged"}).status_code == 401
    bad = client.post("/api/token", data={"username": "op", "password": "nope-nope"})
    assert bad.status_code == 401 and bad.json()["detail"] == "wrong user name or password"
    assert client.get("/api/health").status_code == 200  # health and metrics are for probes
    assert client.get("/metrics").status_code == 200


def test_an_upload_is_analysed_and_its_outputs_served(client, analysed):
    op = login(client, "op")
    scan_id = analysed["bag-threat"]
    body = client.get(f"/api/scans/{scan_id}", headers=op).json()
    assert body["scan"]["status"] == "done" and body["scan"]["source"] == "http"
    record = body["result"]
    assert record["scan"]["id"] == scan_id and record["decision"] == body["scan"]["decision"]
    assert record["models"] and all(m["sha256"] for m in record["models"])
    assert record["calibration_profile"] and record["scan"]["path"] == "bag-threat.json"
    assert body["scan"]["alert_count"] == len(record["alerts"])
    png = client.get(f"/api/scans/{scan_id}/annotated.png", headers=op)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    tdr = client.get(f"/api/scans/{scan_id}/tdr.dcm", headers=op)
    assert tdr.content[128:132] == b"DICM"
    assert client.get(f"/api/scans/{scan_id}/result.json", headers=op).json() == record
    assert client.get("/api/scans/nope/result.json", headers=op).status_code == 404


def test_image_files_are_accepted_over_http(client):
    reply = upload(client, "bag-threat-console", login(client, "op"))  # DICOM and raw: the tests around
    assert reply.status_code == 202 and reply.json()["scan_id"]


def test_the_same_scan_twice_is_one_scan(client, analysed):
    op = login(client, "op")
    again = upload(client, "bag-threat", op)
    assert again.status_code == 200 and again.json() == {"scan_id": analysed["bag-threat"], "status": "done",
                                                          "duplicate": True}
    sidecar, raw = sample_uploads("bag-threat")
    other = client.post("/api/scans", headers=op, files=[("files", (sidecar.name, sidecar.data)),
                                                         ("files", (raw.name, raw.data[::-1]))])
    assert other.status_code == 409 and "already held" in other.json()["detail"]


def test_bad_uploads_get_one_line_and_nothing_stored(client, service):
    op = login(client, "op")
    with service.store.transaction() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(scans)).scalar()
    garbage = client.post("/api/scans", files=[("files", ("../../etc/x.dcm", b"DICM garbage"))], headers=op)
    assert garbage.status_code == 422 and "\n" not in garbage.json()["detail"]
    huge = client.post("/api/scans", content=b"x" * 10, headers={**op, "content-length": str(1 << 40),
                                                                  "content-type": "multipart/form-data; boundary=x"})
    assert huge.status_code == 413
    nothing = client.post("/api/scans", headers=op)
    assert nothing.status_code == 422
    with service.store.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scans)).scalar() == before
    assert not list((REPO.parent / "etc").glob("x.dcm"))


def test_numbers_no_database_holds_are_refused_in_one_line(client, analysed):
    op, sup, boss = login(client, "op"), login(client, "sup"), login(client, "boss")
    huge = str(2**31)  # past PostgreSQL's INTEGER; SQLite overflowed at 2**63
    scan_id = analysed["bag-threat"]
    for method, path, headers, body in [
        ("get", f"/api/scans/{scan_id}/decisions/{huge}/tdr.dcm", op, None),
        ("get", f"/api/cases/{huge}", op, None),
        ("patch", f"/api/cases/{huge}", sup, {"status": "closed"}),
        ("post", f"/api/cases/{huge}/notes", op, {"text": "x"}),
        ("get", f"/api/audit?after={huge}", boss, None),
        ("get", f"/api/scans?offset={huge}", op, None),
        ("get", f"/api/cases?offset={huge}", op, None),
        ("get", f"/api/scans/{scan_id}/image?tool=window&window=.,.", op, None),
        ("get", f"/api/scans/{scan_id}/image?tool=window&window=1.2.3,4", op, None),
    ]:
        reply = client.request(method, path, headers=headers, json=body)
        assert reply.status_code == 422, (path, reply.status_code, reply.text)


def test_requests_that_fail_validation_get_one_line_without_the_input(client, analysed):
    op = login(client, "op")
    note = "wire " * 2000
    reply = client.post(f"/api/scans/{analysed['bag-threat']}/decisions", json={"outcome": "search", "note": note},
                        headers=op)
    detail = reply.json()["detail"]
    assert reply.status_code == 422 and isinstance(detail, str), reply.text
    assert detail.startswith("note: ") and "\n" not in detail and "wire wire" not in detail
    reply = client.post("/api/cases", json={"scan_ids": "x", "seized": "maybe"}, headers=op)
    assert reply.status_code == 422 and reply.json()["detail"].endswith("(and 1 more)"), reply.text


def test_rendering_tools_and_ct_views(client, analysed):
    op = login(client, "op")
    bag, ct = analysed["bag-threat"], analysed["bag-dicos-ct"]

    def image(scan_id, **params):
        reply = client.get(f"/api/scans/{scan_id}/image", params=params, headers=op)
        assert reply.status_code == 200, reply.text
        return cv2.imdecode(np.frombuffer(reply.content, np.uint8), cv2.IMREAD_COLOR)

    colour, inverse = image(bag, tool="colour"), image(bag, tool="inverse")
    grey = image(bag, tool="grey")
    assert colour.shape == grey.shape and np.array_equal(255 - grey, inverse)
    assert not np.array_equal(image(bag, tool="organic_only"), colour)
    assert image(bag, tool="window", window="0,2").mean() != grey.mean()
    slice_10, slice_20, mip = image(ct, index=10), image(ct, index=20), image(ct)
    assert slice_10.shape == mip.shape and not np.array_equal(slice_10, slice_20)
    assert mip.astype(int).sum() >= slice_10.astype(int).sum()  # a MIP is at least as bright as any slice
    slices, rows, cols = client.get(f"/api/scans/{ct}", headers=op).json()["result"]["image_shape"]
    assert mip.shape[:2] == (rows, cols) and image(ct, axis="coronal").shape[:2] == (slices, cols)
    assert image(ct, axis="sagittal", index=3).shape[:2] == (slices, rows)
    for params in [{"tool": "paint"}, {"tool": "window"}, {"axis": "oblique"}, {"index": 5}]:
        target = ct if "index" not in params else bag
        assert client.get(f"/api/scans/{target}/image", params=params, headers=op).status_code == 422, params
    assert client.get(f"/api/scans/{ct}/image", params={"index": 100000}, headers=op).status_code == 422


def test_list_filters_by_decision_scanner_and_date(client, analysed):
    op = login(client, "op")
    everything = client.get("/api/scans", headers=op).json()
    received = [s["received_at"] for s in everything["scans"]]
    assert received == sorted(received, reverse=True) and everything["total"] >= 2
    assert len(everything["scans"]) == everything["total"]  # one page holds them all
    for decision in ("ALARM", "CLEAR"):
        expected = {s["scan_id"] for s in everything["scans"] if s["decision"] == decision}
        listed = client.get("/api/scans", params={"decision": decision}, headers=op).json()["scans"]
        assert expected and {s["scan_id"] for s in listed} == expected, decision
    ct = client.get("/api/scans", params={"scanner": "ct-baggage"}, headers=op).json()
    assert {s["scan_id"] for s in ct["scans"]} == {analysed["bag-dicos-ct"]}
    assert client.get("/api/scans", params={"since": "2999-01-01"}, headers=op).json()["total"] == 0
    assert client.get("/api/scans", params={"until": "2999-01-01"}, headers=op).json()["total"] == everything["total"]
    assert client.get("/api/scans", params={"since": "yesterday"}, headers=op).status_code == 422
    no_day = client.get("/api/scans", params={"since": "2026-99-99"}, headers=op)
    assert no_day.status_code == 422 and "no such date" in no_day.json()["detail"]


def test_decisions_roles_and_audit(client, analysed, service):
    scan_id = analysed["bag-dicos-ct"]
    op, sup, dev = login(client, "op"), login(client, "sup"), login(client, "dev")
    assert client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "clear"}, headers=dev).status_code == 403
    first = client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "search", "note": "dense block"},
                        headers=op)
    assert first.status_code == 201
    second = client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "clear"}, headers=op)
    assert second.status_code == 403 and "supervisor" in second.json()["detail"]
    reversal = client.post(f"/api/scans/{scan_id}/decisions",
                           json={"outcome": "threat", "category": "EXPLOSIVE", "note": "confirmed"}, headers=sup)
    assert reversal.status_code == 201 and reversal.json()["supersedes"] == first.json()["id"]
    listed = client.get("/api/scans", headers=op).json()["scans"]
    assert next(s for s in listed if s["scan_id"] == scan_id)["officer_decision"] == "threat"
    assert client.get("/api/audit", headers=op).status_code == 403
    entries = client.get("/api/audit", params={"target": scan_id}, headers=sup).json()["entries"]
    actions = [(e["username"], e["action"]) for e in entries]
    assert ("op", "submit") in actions and (None, "analyse") in actions
    assert actions.index(("op", "decide")) < actions.index(("sup", "reverse_decision"))
    client.get(f"/api/scans/{scan_id}", headers=dev)
    latest = client.get("/api/audit", params={"target": scan_id}, headers=sup).json()["entries"][-1]
    assert (latest["username"], latest["action"]) == ("dev", "view")
    client.get(f"/api/scans/{scan_id}/tdr.dcm", headers=dev)
    latest = client.get("/api/audit", params={"target": scan_id}, headers=sup).json()["entries"][-1]
    assert (latest["username"], latest["action"], latest["detail"]) == ("dev", "download", {"file": "tdr.dcm"})


def test_only_model_developers_and_admins_change_thresholds(client, service):
    op, dev = login(client, "op"), login(client, "dev")
    change = {"rule-opaque": {"*": 0.5}}
    assert client.put("/api/config/thresholds", json=change, headers=op).status_code == 403
    assert client.put("/api/config/thresholds", json={"no-model": {"*": 0.5}}, headers=dev).status_code == 422
    assert client.put("/api/config/thresholds", json={"rule-opaque": {"*": 7}}, headers=dev).status_code == 422
    typo = client.put("/api/config/thresholds", json={"contraband-fcos": {"knfe": 0.5}}, headers=dev)
    assert typo.status_code == 422 and "no class 'knfe'" in typo.json()["detail"]
    reply = client.put("/api/config/thresholds", json=change, headers=dev)
    assert reply.status_code == 200 and reply.json()["changed"]["rule-opaque"] == {"*": 0.5}
    current = client.get("/api/config/thresholds", headers=op).json()
    assert current["changed"]["rule-opaque"] == {"*": 0.5}
    opaque = next(m for m in service.pipeline_config().models if m.name == "rule-opaque")
    assert opaque.alarm_thresholds["*"] == 0.5
    entries = client.get("/api/audit", headers=login(client, "boss")).json()["entries"]
    assert any(e["action"] == "change_thresholds" and e["username"] == "dev" for e in entries)


def test_a_stored_threshold_for_a_class_the_model_no_longer_detects_is_left_out_not_fatal(tmp_path, caplog):
    store = Store.open(tmp_path)
    service = Service(store, ServiceConfig(workers=1))
    service.set_thresholds({"contraband-fcos": {"knife": 0.4}}, username="dev")
    with store.transaction() as conn:  # as a version that also detected scissors left it
        conn.execute(sa.text("UPDATE settings SET value = :v WHERE key = 'alarm_thresholds'"),
                     {"v": json.dumps({"contraband-fcos": {"knife": 0.4, "scissors": 0.2}})})
    fresh = Service(store, ServiceConfig(workers=1))  # the service started again after the upgrade
    assert fresh.stale_thresholds() == {"contraband-fcos": ["scissors"]}
    detector = next(m for m in fresh.pipeline_config().models if m.name == "contraband-fcos")
    assert detector.alarm_thresholds["knife"] == 0.4 and "scissors" not in detector.alarm_thresholds
    fresh.start()
    try:
        assert fresh.workers_alive == 1
    finally:
        fresh.stop()
    assert "stored alarm thresholds for contraband-fcos class scissors are not applied" in caplog.text


def test_a_threshold_change_changes_the_next_verdict(tmp_path):
    """Lowering the detector's alarm threshold turns the threat bag's advisories into alarms."""
    store = Store.open(tmp_path)
    service = Service(store, ServiceConfig(workers=1))
    service.start()
    try:
        first = service.submit(sample_uploads("bag-threat"), source="http", username=None).scan_id
        assert service.wait_until_idle(120)
        service.set_thresholds({"contraband-fcos": {"*": 0.05}}, username="dev")
        with store.transaction() as conn:
            before = conn.execute(sa.select(scans.c.decision, scans.c.alarm_count).where(scans.c.scan_id == first)).one()
            conn.execute(sa.text("DELETE FROM results"))
            conn.execute(scans.update().values(status="queued"))
        assert service.wait_until_idle(120)
        with store.transaction() as conn:
            after = conn.execute(sa.select(scans.c.decision, scans.c.alarm_count).where(scans.c.scan_id == first)).one()
    finally:
        service.stop()
    assert after.alarm_count > before.alarm_count and after.decision == "ALARM"


def test_health_metrics_and_openapi(client, analysed):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["workers"] == 1 and health["done"] >= 2
    metrics = client.get("/metrics").text
    assert 'nii_scans{status="done"}' in metrics and 'nii_events_total{event="scans_analysed"}' in metrics
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/api/scans", "/api/scans/{scan_id}", "/api/scans/{scan_id}/{output}",
                 "/api/scans/{scan_id}/decisions", "/api/token", "/api/health"]:
        assert path in paths


def test_live_events_report_new_and_analysed_scans(client, service):
    op = login(client, "op")
    with client.stream("GET", "/api/scans/events", headers=op) as events:
        lines = events.iter_lines()
        assert next(lines).startswith("retry:")
        reply = upload(client, "parcel-dicos-dx", op)
        assert reply.status_code == 202, "the scan must be new to this service for this test"
        scan_id = reply.json()["scan_id"]
        seen = []
        deadline = time.monotonic() + 60
        for line in lines:
            if line.startswith("data:"):
                row = json.loads(line[5:])
                if row["scan_id"] == scan_id:
                    seen.append(row["status"])
                    if row["status"] in ("done", "failed"):
                        break
            assert time.monotonic() < deadline
    assert seen[0] in ("queued", "running") and seen[-1] == "done"


def test_a_live_stream_ends_when_its_session_is_revoked(client):
    token = client.post("/api/token", data={"username": "op", "password": PASSWORDS["op"]}).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    with client.stream("GET", "/api/scans/events", headers=headers) as events:
        lines = events.iter_lines()
        assert next(lines).startswith("retry:")
        assert client.delete("/api/session", headers=headers).status_code == 204  # logged out elsewhere
        for _ in lines:  # the stream must end on its own, not run on for ever
            assert time.monotonic() - started < 30
    assert client.get("/api/scans/events", headers=headers).status_code == 401


def test_me_lists_what_the_role_may_do_and_a_bag_is_not_cleared_before_it_is_judged(tmp_path):
    store = Store.open(tmp_path / "data")
    add_users(store)
    service = Service(store, ServiceConfig(workers=1, dicom_port=0))  # not started: scans stay queued
    client = TestClient(create_app(service))
    op, dev = login(client, "op"), login(client, "dev")
    assert client.get("/api/me", headers=op).json()["permissions"] == ["decide", "submit", "view"]
    assert "decide" not in client.get("/api/me", headers=dev).json()["permissions"]
    scan_id = upload(client, "bag-threat", op).json()["scan_id"]
    cleared = client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "clear"}, headers=op)
    assert cleared.status_code == 409 and "still being analysed" in cleared.json()["detail"]
    search = client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "search"}, headers=op)
    assert search.status_code == 201  # escalating needs no result


@pytest.mark.parametrize("error, expected", [
    (AnalysisError("no calibration profile for scanner x"), "no calibration profile for scanner x"),
    (KeyError("a bug"), "internal error: KeyError: 'a bug'"),
])
def test_failed_analysis_keeps_its_reason_and_the_worker_goes_on(tmp_path, monkeypatch, error, expected):
    def refuse(self, source):
        raise error

    monkeypatch.setattr(Pipeline, "analyze", refuse)
    store = Store.open(tmp_path / "data")
    service = Service(store, ServiceConfig(workers=1))
    service.start()
    try:
        ids = [service.submit(sample_uploads(s), source="http", username=None).scan_id
               for s in ("bag-clear", "parcel-dicos-dx")]
        assert service.wait_until_idle(60)
        assert service.workers_alive == 1
    finally:
        service.stop()
    with store.transaction() as conn:
        rows = conn.execute(sa.select(scans.c.status, scans.c.error).where(scans.c.scan_id.in_(ids))).all()
    assert [(r.status, r.error) for r in rows] == [("failed", expected)] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_restart_finishes_what_a_crash_left(tmp_path, backend):
    store = open_store(tmp_path / "data", backend)
    ids = [Service(store, ServiceConfig(workers=1)).submit(sample_uploads(s), source="http", username=None).scan_id
           for s in ("bag-clear", "parcel-dicos-dx")]
    with store.transaction() as conn:  # what a kill -9 mid-analysis leaves behind
        conn.execute(scans.update().where(scans.c.scan_id == ids[0]).values(status="running", attempts=1))
    restarted = Service(store, ServiceConfig(workers=1))
    assert restarted.start() == [ids[0]]
    try:
        assert restarted.wait_until_idle(120)
    finally:
        restarted.stop()
    with store.transaction() as conn:
        states = dict(conn.execute(sa.select(scans.c.scan_id, scans.c.status)).all())
    assert states == {ids[0]: "done", ids[1]: "done"}


def test_hot_folder_picks_each_file_up_once(tmp_path):
    store = Store.open(tmp_path / "data")
    service = Service(store, ServiceConfig(workers=1))
    hot = HotFolder(service, tmp_path / "in", settle_seconds=0.0)
    inbox = tmp_path / "in"
    # A raw scan arrives data first; the sidecar is what makes it complete.
    (inbox / "bag-clear.raw").write_bytes((SAMPLES / "bag-clear.raw").read_bytes())
    hot.poll()
    (inbox / "bag-clear.json").write_bytes((SAMPLES / "bag-clear.json").read_bytes())
    (inbox / "junk.dcm").write_bytes(b"not dicom at all")
    (inbox / "parcel.dcm").write_bytes((SAMPLES / "parcel-dicos-dx.dcm").read_bytes())
    assert hot.poll() == 0  # first sight: nothing has settled yet
    assert hot.poll() == 3
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "quarantine"]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["bag-clear.json", "bag-clear.raw", "parcel.dcm"]
    reason = (inbox / "quarantine" / "junk.dcm.reason.txt").read_text()
    assert "junk.dcm" in [p.name for p in (inbox / "quarantine").iterdir()] and reason.strip()
    # The same scan dropped again is known: moved aside, not queued twice.
    (inbox / "parcel.dcm").write_bytes((SAMPLES / "parcel-dicos-dx.dcm").read_bytes())
    hot.poll(), hot.poll()
    assert (inbox / "done" / "parcel-2.dcm").exists()
    with store.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scans)).scalar() == 2


def test_hot_folder_leaves_nothing_behind_and_retries_what_was_still_being_written(tmp_path):
    store = Store.open(tmp_path / "data")
    service = Service(store, ServiceConfig(workers=1))
    hot = HotFolder(service, tmp_path / "in", settle_seconds=0.0, pair_timeout_s=0.3)
    inbox, quarantine, done = tmp_path / "in", tmp_path / "in" / "quarantine", tmp_path / "in" / "done"
    raw, dx = (SAMPLES / "bag-clear.raw").read_bytes(), (SAMPLES / "parcel-dicos-dx.dcm").read_bytes()
    (inbox / "late.raw").write_bytes(raw)  # its sidecar comes later than the settle time
    (inbox / "notes.json").write_text('{"shift": "night"}')  # JSON that is no sidecar
    (inbox / "parcel.txt").write_bytes(dx)  # a DICOS under a name the walk leaves out
    hot.poll(), hot.poll()
    assert (inbox / "late.raw").exists()  # waiting for its sidecar, not quarantined
    sidecar = json.loads((SAMPLES / "bag-clear.json").read_text())
    (inbox / "late.json").write_text(json.dumps({**sidecar, "data_file": "late.raw"}))
    (inbox / "orphan.json").write_text(json.dumps({**sidecar, "data_file": "never.raw", "scan_id": "orphan"}))
    (inbox / "slow.dcm").write_bytes(dx[:2000])  # a writer that paused mid-file
    hot.poll(), hot.poll()
    time.sleep(0.35)
    hot.poll()
    assert sorted(p.name for p in inbox.iterdir()) == ["done", "quarantine"]  # nothing left waiting
    assert sorted(p.name for p in done.iterdir()) == ["late.json", "late.raw", "parcel.txt"]
    reasons = {p.name.removesuffix(".reason.txt"): p.read_text() for p in quarantine.glob("*.reason.txt")}
    assert set(reasons) == {"notes.json", "orphan.json", "slow.dcm"}
    assert "not a raw sidecar" in reasons["notes.json"] and reasons["orphan.json"].startswith("never.raw: No such file")
    with open(quarantine / "slow.dcm", "ab") as writer:  # the writer goes on, into the moved file
        writer.write(dx[2000:])
    hot.poll(), hot.poll()
    assert (done / "slow.dcm").exists() and not (quarantine / "slow.dcm.reason.txt").exists()
    with store.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scans)).scalar() == 2  # bag, parcel


def test_hot_folder_thread_runs_until_stopped(tmp_path):
    store = Store.open(tmp_path / "data")
    service = Service(store, ServiceConfig(workers=1))
    stop = HotFolder(service, tmp_path / "in", settle_seconds=0.05, poll_seconds=0.05).start()
    try:
        (tmp_path / "in" / "parcel.dcm").write_bytes((SAMPLES / "parcel-dicos-dx.dcm").read_bytes())
        deadline = time.monotonic() + 20
        while not (tmp_path / "in" / "done" / "parcel.dcm").exists():
            assert time.monotonic() < deadline, "the hot folder never picked the file up"
            time.sleep(0.05)
    finally:
        stop()


def test_users_add_reads_the_password_from_stdin(tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("a-long-password\n"))
    assert main(["users", "add", "alice", "--role", "supervisor", "--data", str(tmp_path)]) == 0
    assert "alice (supervisor)" in capsys.readouterr().out
    store = Store.open(tmp_path)
    from nii.serve.auth import authenticate

    with store.transaction() as conn:
        assert authenticate(conn, "alice", "a-long-password").role == "supervisor"
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["users", "add", "bob", "--role", "operator", "--data", str(tmp_path)]) == 2
    assert "at least 8 characters" in capsys.readouterr().err


def test_audit_verify_names_the_first_broken_link(tmp_path):
    store = Store.open(tmp_path)
    add_users(store)
    from nii.serve import audit

    with store.transaction() as conn:
        for i in range(3):
            audit.append(store, conn, username="op", action="view", target=f"scan-{i}")
    command = [sys.executable, "-m", "nii.cli", "audit", "verify", "--data", str(tmp_path)]
    ok = subprocess.run(command, capture_output=True, text=True)
    assert ok.returncode == 0 and "intact: 3 entries" in ok.stdout
    with store.engine.begin() as conn:  # someone with the database file edits history
        conn.exec_driver_sql("DROP TRIGGER audit_no_update")
        conn.exec_driver_sql("UPDATE audit SET target = 'scan-X' WHERE seq = 2")
    broken = subprocess.run(command, capture_output=True, text=True)
    assert broken.returncode == 1 and "BROKEN at entry 2" in broken.stdout and not broken.stderr


def test_service_config_defaults_work_and_bad_ones_are_named(tmp_path):
    config = load_service_config()
    assert config.workers >= 1 and config.pipeline.is_file() and config.tdr_destination is None
    bad = tmp_path / "service.toml"
    bad.write_text("[processing]\nworkers = 0\n")
    with pytest.raises(ValueError, match="service.toml"):
        load_service_config(bad)
    bad.write_text("[proccessing]\n")
    with pytest.raises(ValueError, match="unknown sections proccessing"):
        load_service_config(bad)
    for text, message in (("[processing]\nwokers = 3\n", r"\[processing\] has unknown settings wokers"),
                          ('http = "x"\n', r"\[http\] must be a table"),
                          ('[dicom]\ntdr_destination = { hots = "pacs" }\n',
                           r"\[dicom.tdr_destination\] has unknown settings hots")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_service_config(bad)


def test_a_new_data_folder_gets_an_admin_whose_password_only_its_owner_reads(tmp_path):
    from nii.serve.auth import authenticate
    from nii.serve.run import ADMIN_PASSWORD_FILE, first_admin

    store = Store.open(tmp_path)
    how = first_admin(store, tmp_path)
    password_file = tmp_path / ADMIN_PASSWORD_FILE
    password = password_file.read_text().strip()
    assert password in how and "admin" in how and oct(password_file.stat().st_mode & 0o777) == "0o600"
    with store.transaction() as conn:
        assert authenticate(conn, "admin", password).role == "admin"
    assert first_admin(store, tmp_path) == how  # a restart keeps the same admin
    password_file.unlink()
    assert "nii users add" in first_admin(store, tmp_path)
