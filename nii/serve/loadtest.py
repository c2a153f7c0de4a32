"""Load-testing a running service on loopback: many lanes uploading baggage scans at once.

A *lane* is one scanner sending its bags over HTTP. Each lane uploads a
distinct baggage scan (a sample bag under a new scan id) every
``interval_s`` seconds, without waiting for earlier results, as a belt
does; ``interval_s=0`` makes it wait for each result instead (a closed
loop, which measures capacity). One server-sent-event stream records when
each result is stored, so ingest-to-result runs from the moment the upload
starts to the moment the result is there.

Used by ``benchmarks/bench_serve.py`` (the figures) and by the crash test
(``kill -9`` in the middle of the load, then a restart).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["LoadReport", "add_user", "baggage_submissions", "free_port", "run_load", "start_server", "stop_server"]

SAMPLES = Path(__file__).resolve().parents[2] / "sample_scans"
_BAGS = ("bag-clear", "bag-threat")


def baggage_submissions(tag: str) -> Iterator[list[tuple[str, bytes]]]:
    """Endless distinct baggage scans: the sample bags in turn, each under a new scan id."""
    bags = [(json.loads((SAMPLES / f"{b}.json").read_text()), (SAMPLES / f"{b}.raw").read_bytes()) for b in _BAGS]
    i = 0
    while True:
        sidecar, data = bags[i % len(bags)]
        name = f"{tag}-{i:06d}"
        doc = {**sidecar, "scan_id": f"load-{name}", "data_file": f"{name}.raw"}
        yield [(f"{name}.json", json.dumps(doc).encode()), (f"{name}.raw", data)]
        i += 1


@dataclasses.dataclass
class LoadReport:
    """What a load run sent, what the service accepted, and how long results took."""

    lanes: int
    seconds: float
    interval_s: float
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    errors: int = 0
    results: int = 0
    accepted_ids: list[str] = dataclasses.field(default_factory=list)
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def lost(self) -> int:
        """Accepted scans with no result at the end."""
        return self.accepted - self.results

    def summary(self) -> dict[str, float | int]:
        lat = sorted(self.latencies_s)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
        return {"lanes": self.lanes, "seconds": self.seconds, "interval_s": self.interval_s, "sent": self.sent,
                "accepted": self.accepted, "duplicates": self.duplicates, "refused": self.refused,
                "errors": self.errors, "results": self.results, "lost": self.lost,
                "p50_s": round(statistics.median(lat), 3) if lat else float("nan"),
                "p95_s": round(pick(0.95), 3), "max_s": round(lat[-1], 3) if lat else float("nan"),
                "results_per_s": round(self.results / self.elapsed_s, 2) if self.elapsed_s else 0.0}


def run_load(base_url: str, token: str, *, lanes: int = 20, seconds: float = 60.0, interval_s: float = 4.0,
             tag: str = "run", drain_s: float = 120.0, stop: threading.Event | None = None) -> LoadReport:
    """Run ``lanes`` uploaders for ``seconds``, then wait up to ``drain_s`` for the last results.

    ``stop`` ends the uploads early (the crash test sets it when it kills
    the server); results are then not awaited.
    """
    report = LoadReport(lanes, seconds, interval_s)
    headers = {"Authorization": f"Bearer {token}"}
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    lock = threading.Lock()
    result_seen = threading.Condition(lock)
    stop = stop or threading.Event()
    source = baggage_submissions(tag)
    watching = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=None) as client:
            try:
                with client.stream("GET", "/api/scans/events") as events:
                    watching.set()
                    for line in events.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        row = json.loads(line[5:])
                        if row["status"] in ("done", "failed"):
                            with result_seen:
                                finished.setdefault(row["scan_id"], time.monotonic())
                                result_seen.notify_all()
            except httpx.HTTPError:
                watching.set()

    def lane(index: int, t_start: float) -> None:
        next_at = t_start + interval_s * index / max(lanes, 1)  # lanes out of phase, as real belts are
        with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client:
            while not stop.is_set() and time.monotonic() < t_start + seconds:
                time.sleep(max(0.0, next_at - time.monotonic()))
                with lock:
                    files = next(source)
                t0 = time.monotonic()
                try:
                    reply = client.post("/api/scans", files=[("files", f) for f in files])
                except httpx.HTTPError:
                    with lock:
                        report.sent += 1
                        report.errors += 1
                    next_at = max(next_at + interval_s, time.monotonic())
                    continue
                with lock:
                    report.sent += 1
                    if reply.status_code in (200, 202):
                        scan_id = reply.json()["scan_id"]
                        report.accepted += reply.status_code == 202
                        report.duplicates += reply.status_code == 200
                        if reply.status_code == 202:
                            started[scan_id] = t0
                            report.accepted_ids.append(scan_id)
                    else:
                        report.refused += 1
                        scan_id = None
                if interval_s <= 0 and scan_id:  # closed loop: wait for this scan's result
                    with result_seen:
                        result_seen.wait_for(lambda: scan_id in finished or stop.is_set(), timeout=120)
                next_at = max(next_at + interval_s, time.monotonic())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watching.wait(10)
    t_start = time.monotonic()
    threads = [threading.Thread(target=lane, args=(i, t_start), daemon=True) for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not stop.is_set():
        with result_seen:
            result_seen.wait_for(lambda: all(s in finished for s in started), timeout=drain_s)
    report.elapsed_s = max((finished[s] for s in started if s in finished), default=t_start) - t_start
    with lock:
        done = [s for s in started if s in finished]
        report.results = len(done)
        report.latencies_s = [finished[s] - started[s] for s in done]
    return report


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_user(data_dir: Path, name: str, password: str, role: str = "operator") -> None:
    """``nii users add`` with the password on stdin, as a site would script it."""
    subprocess.run([sys.executable, "-m", "nii.cli", "users", "add", name, "--role", role, "--data", str(data_dir)],
                   input=password + "\n", text=True, check=True, capture_output=True)


def start_server(data_dir: Path, *, port: int, workers: int = 2, timeout_s: float = 120.0,
                 log: Path | None = None) -> subprocess.Popen:
    """``nii serve`` in its own process on loopback; returns once it answers /api/health."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "nii.cli", "serve", "--data", str(data_dir), "--port", str(port),
         "--dicom-port", "0", "--workers", str(workers)],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"nii serve exited with {server.returncode} before answering")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"nii serve did not answer on port {port} within {timeout_s:.0f} s")


def stop_server(server: subprocess.Popen, *, hard: bool = False) -> None:
    """Stop the server: SIGTERM and wait, or ``kill -9`` (``hard``) as a crash would."""
    server.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def token_for(base_url: str, name: str, password: str) -> str:
    reply = httpx.post(f"{base_url}/api/token", data={"username": name, "password": password})
    reply.raise_for_status()
    return reply.json()["access_token"]
