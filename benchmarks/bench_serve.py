"""The operator service under load, on loopback: the issue's targets, measured.

Targets (product issue #8), on 2 cores:

- 20 concurrent lanes uploading baggage scans, sustained for 60 s: no scan
  lost or duplicated, and p95 ingest-to-result at most 1 s;
- ``kill -9`` of the server in the middle of the load, then a restart:
  every accepted scan ends with a result.

Each run starts ``nii serve`` as its own process on a fresh data folder
(SQLite, 2 workers) and drives it with :func:`nii.serve.loadtest.run_load`:
20 lanes, each uploading a distinct 1024 x 400 dual-energy bag every
``--interval`` seconds (a belt's pace, not waiting for results). Printed:

1. the target run at ``--interval``;
2. capacity: the same 20 lanes in a closed loop (each waits for its
   result), which gives the most results per second the service can give;
3. the crash run: the target load, ``kill -9`` half-way, a restart, and a
   count of accepted scans without a result (must be 0).

Run: ``make bench-serve`` (``--seconds`` shortens it for a quick look).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx

from nii.serve.loadtest import add_user, free_port, run_load, start_server, stop_server, token_for


def serve_and_load(folder: Path, *, lanes: int, seconds: float, interval_s: float, workers: int,
                   kill_after_s: float | None = None) -> dict:
    """One fresh server, one load run; with ``kill_after_s``, the crash-and-restart run."""
    data, port = folder / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    add_user(data, "lane", "lane-password")
    server = start_server(data, port=port, workers=workers, log=folder / "server.log")
    stop = threading.Event()
    reports = []
    try:
        token = token_for(url, "lane", "lane-password")
        load = threading.Thread(target=lambda: reports.append(run_load(
            url, token, lanes=lanes, seconds=seconds, interval_s=interval_s, stop=stop)))
        load.start()
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            stop_server(server, hard=True)
            stop.set()
        load.join()
    finally:
        if server.poll() is None:
            stop_server(server)
    summary = reports[0].summary()
    if kill_after_s is None:
        return summary
    server = start_server(data, port=port, workers=workers, log=folder / "server.log")
    try:
        while (health := httpx.get(f"{url}/api/health").json())["queued"] + health["running"]:
            time.sleep(0.5)
        token = token_for(url, "lane", "lane-password")
        headers = {"Authorization": f"Bearer {token}"}
        statuses = {}
        for scan_id in reports[0].accepted_ids:
            statuses[scan_id] = httpx.get(f"{url}/api/scans/{scan_id}", headers=headers).json()["scan"]["status"]
        total = httpx.get(f"{url}/api/scans", params={"limit": 1}, headers=headers).json()["total"]
    finally:
        stop_server(server)
    return {**summary, "killed_after_s": kill_after_s, "stored_scans": total,
            "accepted_without_result": sum(s != "done" for s in statuses.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lanes", type=int, default=20, help="concurrent uploaders (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load lasts (default %(default)s)")
    parser.add_argument("--interval", type=float, default=4.0,
                        help="seconds between one lane's bags (default %(default)s: 900 bags/hour/lane)")
    parser.add_argument("--workers", type=int, default=2, help="analysis workers (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        runs = [("target", dict(interval_s=args.interval)),
                ("capacity", dict(interval_s=0.0, seconds=min(args.seconds, 30.0))),
                ("kill -9", dict(interval_s=args.interval, kill_after_s=args.seconds / 2))]
        for name, options in runs:
            here = Path(folder) / name.replace(" ", "")
            here.mkdir()
            options = {"lanes": args.lanes, "seconds": args.seconds, "workers": args.workers, **options}
            figures[name] = serve_and_load(here, **options)
            if not args.json:
                print(f"{name:>9}: {json.dumps(figures[name])}", flush=True)
    if args.json:
        print(json.dumps(figures))
        return
    target = figures["target"]
    print(f"\n{args.lanes} lanes x 1 bag / {args.interval:g} s for {args.seconds:g} s: "
          f"{target['accepted']} accepted, {target['lost']} lost, {target['duplicates']} duplicated; "
          f"ingest-to-result p50 {target['p50_s']} s, p95 {target['p95_s']} s (target <= 1 s)")
    print(f"capacity (closed loop): {figures['capacity']['results_per_s']} results/s")
    crash = figures["kill -9"]
    print(f"kill -9 after {crash['killed_after_s']:g} s: {crash['accepted']} accepted before the kill, "
          f"{crash['accepted_without_result']} without a result after the restart (target 0)")


if __name__ == "__main__":
    main()
