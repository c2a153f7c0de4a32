"""A real server under upload load, killed with SIGKILL mid-load, then restarted: nothing accepted is lost."""

from __future__ import annotations

import threading
import time

import httpx

from nii.serve.loadtest import add_user, free_port, run_load, start_server, stop_server, token_for


def _all_scans(base_url: str, token: str) -> list[dict]:
    reply = httpx.get(f"{base_url}/api/scans", params={"limit": 500}, headers={"Authorization": f"Bearer {token}"})
    reply.raise_for_status()
    return reply.json()["scans"]


def test_kill_9_mid_load_then_restart_loses_nothing(tmp_path):
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    add_user(data, "lane", "lane-password")
    server = start_server(data, port=port, workers=2, log=tmp_path / "server.log")
    stop = threading.Event()
    reports = []
    try:
        token = token_for(url, "lane", "lane-password")
        load = threading.Thread(target=lambda: reports.append(run_load(
            url, token, lanes=6, seconds=30, interval_s=0.5, tag="crash", stop=stop)))
        load.start()
        time.sleep(5)
        stop_server(server, hard=True)  # kill -9: no chance to finish or clean up
        stop.set()
        load.join(60)
    finally:
        if server.poll() is None:
            server.kill()
    report = reports[0]
    assert report.accepted >= 5, report.summary()  # the load really ran before the kill
    server = start_server(data, port=port, workers=2, log=tmp_path / "server.log")
    try:
        token = token_for(url, "lane", "lane-password")
        deadline = time.monotonic() + 120
        while True:
            health = httpx.get(f"{url}/api/health").json()
            if health["queued"] == 0 and health["running"] == 0:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        scans = _all_scans(url, token)
    finally:
        stop_server(server)
    by_id = {s["scan_id"]: s for s in scans}
    assert len(by_id) == len(scans)  # no scan stored twice
    assert set(report.accepted_ids) <= set(by_id)  # every scan the senders were told was accepted is there
    assert {s["status"] for s in scans} == {"done"}, [s for s in scans if s["status"] != "done"]
    assert len(report.accepted_ids) == len(set(report.accepted_ids))
