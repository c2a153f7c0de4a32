"""What the service tests share: stores on each database, users, a running service."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from nii.serve.auth import add_user
from nii.serve.intake import Upload
from nii.serve.loadtest import free_port
from nii.serve.store import Store

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_scans"
# .ci/run starts a PostgreSQL server and sets this; without it the
# PostgreSQL half of the storage tests skips.
POSTGRES_URL = os.environ.get("NII_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not POSTGRES_URL, reason="NII_TEST_POSTGRES_URL not set (.ci/run starts PostgreSQL and sets it)"))]
PASSWORDS = {"op": "operator-pass", "sup": "supervisor-pass", "dev": "developer-pass", "boss": "admin-pass"}
ROLES = {"op": "operator", "sup": "supervisor", "dev": "model_developer", "boss": "admin"}


def open_store(data_dir: Path, backend: str) -> Store:
    """A fresh store: SQLite in ``data_dir``, or the test PostgreSQL emptied first."""
    if backend == "postgresql":
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
        return Store.open(data_dir, POSTGRES_URL)
    return Store.open(data_dir)


def add_users(store: Store) -> None:
    with store.transaction() as conn:
        for name, role in ROLES.items():
            add_user(store, conn, name, PASSWORDS[name], role)


def sample_uploads(stem: str) -> list[Upload]:
    """A sample scan as a sender would send it (a raw pair, or one file)."""
    sidecar = SAMPLES / f"{stem}.json"
    if sidecar.exists():
        return [Upload(sidecar.name, sidecar.read_bytes()), Upload(f"{stem}.raw", (SAMPLES / f"{stem}.raw").read_bytes())]
    path = next(SAMPLES.glob(f"{stem}.*"))
    return [Upload(path.name, path.read_bytes())]


def analyse(store: Store, uploads: list[Upload], *, timeout: float = 120) -> str:
    """Submit one scan, let a one-worker service analyse it, stop; its scan id."""
    from nii.serve.service import Service, ServiceConfig

    service = Service(store, ServiceConfig(workers=1))
    scan_id = service.submit(uploads, source="http", username=None).scan_id
    service.start()
    try:
        assert service.wait_until_idle(timeout)
    finally:
        service.stop()
    return scan_id


@contextlib.contextmanager
def serving(service) -> Iterator[str]:
    """The service's web app on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from nii.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
