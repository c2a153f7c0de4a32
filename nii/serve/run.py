"""Starting the whole service: what ``nii serve`` does, step by step."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from nii.ingest import ScanReadError, find_scans
from nii.serve.auth import add_user
from nii.serve.intake import IntakeError, uploads_of
from nii.serve.service import Service, ServiceConfig
from nii.serve.store import Store, users

__all__ = ["first_admin", "serve", "submit_folder"]

ADMIN_PASSWORD_FILE = "initial-admin-password"


def first_admin(store: Store, data_dir: Path) -> str:
    """Make sure someone can log in; return how.

    A new data folder gets an ``admin`` user with a random password, kept in
    ``DATA/initial-admin-password`` (readable by its owner only) until the
    admin changes it with ``nii users add admin --role admin``.
    """
    with store.transaction() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(users)).scalar()
        if not count:
            password = secrets.token_urlsafe(12)
            add_user(store, conn, "admin", password, "admin")
            file = data_dir / ADMIN_PASSWORD_FILE
            file.touch(mode=0o600)
            file.write_text(password + "\n")
    file = data_dir / ADMIN_PASSWORD_FILE
    if file.exists():
        return f"log in as admin, password {file.read_text().strip()} (kept in {file})"
    return f"log in with your account; add one with: nii users add NAME --role operator --data {data_dir}"


def submit_folder(service: Service, paths: Sequence[str | os.PathLike], *, source: str) -> tuple[int, list[str]]:
    """Submit every scan under ``paths``; return (accepted, refusal lines)."""
    accepted, refused = 0, []
    for found in find_scans(paths):
        try:
            service.submit(uploads_of(found), source=source, username=None)
            accepted += 1
        except (IntakeError, ScanReadError, OSError) as err:
            refused.append(f"{found.path}: {err}")
    return accepted, refused


def serve(data_dir: str | os.PathLike, config: ServiceConfig, *, database_url: str | None = None,
          samples: Sequence[str | os.PathLike] = ()) -> int:
    """Run the service until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    from nii.serve.app import create_app

    data_dir = Path(data_dir)
    store = Store.open(data_dir, database_url)
    login = first_admin(store, data_dir)
    service = Service(store, config)
    service.scratch = data_dir / "tmp"
    service.scratch.mkdir(exist_ok=True)
    requeued = service.start()
    stoppers = []
    if config.dicom_port:
        from nii.serve.dicom_scp import start_dicom_scp

        stoppers.append(start_dicom_scp(service, port=config.dicom_port, host=config.host))
    if config.hot_folder:
        from nii.serve.hotfolder import HotFolder

        stoppers.append(HotFolder(service, config.hot_folder, settle_seconds=config.settle_seconds).start())
    try:
        if requeued:
            print(f"{len(requeued)} scans left unfinished by the last run are being analysed again")
        if samples:
            count, refused = submit_folder(service, samples, source="samples")
            for line in refused:
                print(f"sample refused: {line}")
            service.wait_until_idle(timeout=300)
            print(f"{count} sample scans analysed")
        where = f"http://{config.host}:{config.port}/"
        print(f"nii viewer: open {where} and {login}")
        if config.dicom_port:
            print(f"DICOM C-STORE SCP: AE title {config.dicom_ae_title} on {config.host}:{config.dicom_port}")
        if config.hot_folder:
            print(f"hot folder: {config.hot_folder}")
        print("API documentation: " + where + "docs   (Ctrl-C stops the service)", flush=True)
        # Open event streams (viewers) would hold a graceful shutdown open for ever.
        uvicorn.run(create_app(service), host=config.host, port=config.port, log_level="warning",
                    timeout_graceful_shutdown=3)
    finally:
        for stop in stoppers:
            stop()
        service.stop()
    return 0
