"""The DICOM C-STORE SCP against independent peers: DCMTK's storescu sends, its storescp receives TDRs.

DCMTK is a widely used DICOM implementation written independently of
pynetdicom; its tests skip where it is not installed (Debian: dcmtk).
Tests that need no analysis run without workers, so the scans they send
stay queued and only what was stored is checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from nii.ingest import read_scan
from nii.ingest.dicom import write_dicom_series
from nii.scan import ScanKind
from nii.serve.dicom_scp import REFUSED_FOLDER, SPOOL_FOLDER, start_dicom_scp
from nii.serve.intake import Upload
from nii.serve.loadtest import free_port
from nii.serve.service import Service, ServiceConfig, TdrDestination
from nii.serve.store import Store, results, scan_files, scans
from tests.conftest import REPO, make_scan

SAMPLES = REPO / "sample_scans"
DX = SAMPLES / "parcel-dicos-dx.dcm"  # DICOS DX for processing, two energies
CT = SAMPLES / "bag-dicos-ct.dcm"  # DICOS CT, one multi-frame object
AE_TITLE = "NII"


def dcmtk(tool: str) -> str | None:
    """DCMTK's ``tool`` on PATH, or None: pynetdicom installs its own storescu and storescp into the venv."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(tool, path=folder)
        if found:
            version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
            if "dcmtk" in version.stdout.lower():
                return found
    return None


STORESCU, STORESCP = dcmtk("storescu"), dcmtk("storescp")
requires_storescu = pytest.mark.skipif(STORESCU is None,
                                       reason="DCMTK storescu is not installed (Debian: apt-get install dcmtk)")
requires_storescp = pytest.mark.skipif(STORESCP is None,
                                       reason="DCMTK storescp is not installed (Debian: apt-get install dcmtk)")


def storescu(port: int, *files: Path, options: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Send files with DCMTK; -R proposes the files' own SOP classes, which is how DICOS ones get proposed."""
    return subprocess.run([str(STORESCU), "-R", *options, "-aet", "SCANNER", "-aec", AE_TITLE, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def rows(service: Service) -> list[sa.Row]:
    with service.store.transaction() as conn:
        return conn.execute(sa.select(scans).order_by(scans.c.scan_id)).all()


def file_count(service: Service, scan_id: str) -> int:
    with service.store.transaction() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(scan_files).where(
            scan_files.c.scan_id == scan_id)).scalar()


def stored_syntax(service: Service, scan_id: str) -> str:
    with service.store.transaction() as conn:
        [sha] = conn.execute(sa.select(scan_files.c.sha256).where(scan_files.c.scan_id == scan_id)).scalars()
    return pydicom.dcmread(service.store.blobs.path(sha), stop_before_pixels=True).file_meta.TransferSyntaxUID


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    """A series is submitted after the release answer went back, so storescu may exit before it is."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@dataclasses.dataclass
class Running:
    service: Service
    port: int
    stop: Callable[[], None]

    def restart_scp(self) -> None:
        """Stop listening and start again over the same data folder: what a service restart does."""
        self.stop()
        self.port = free_port()
        self.stop = start_dicom_scp(self.service, port=self.port)


def running(data: Path, *, analyse: bool, tdr_destination: TdrDestination | None = None) -> Running:
    port = free_port()
    service = Service(Store.open(data), ServiceConfig(workers=1, dicom_port=port, tdr_destination=tdr_destination))
    if analyse:
        service.start()
    return Running(service, port, start_dicom_scp(service, port=port))


@pytest.fixture
def analysing(tmp_path: Path) -> Iterator[Running]:
    """A service that analyses what it receives (one worker)."""
    run = running(tmp_path / "data", analyse=True)
    yield run
    run.stop()
    run.service.stop()


@pytest.fixture
def receiving(tmp_path: Path) -> Iterator[Running]:
    """A service that only receives: no workers, scans stay queued."""
    run = running(tmp_path / "data", analyse=False)
    yield run
    run.stop()


def ct_series(folder: Path, *, seed: int) -> list[Path]:
    """A small plain-DICOM CT series, one slice per file (5 slices)."""
    return write_dicom_series(make_scan(ScanKind.CT_VOLUME, dtype="int16", seed=seed), folder)


def series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def dicos_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- receiving and analysing -------------------------------------------------------------------------------------


@requires_storescu
def test_storescu_sends_dicos_dx_and_ct_and_both_are_analysed(analysing: Running) -> None:
    sent = storescu(analysing.port, DX, CT)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    # Success went back only after each scan was stored: they are there already.
    assert [r.scan_id for r in rows(analysing.service)] == sorted([dicos_uid(DX), dicos_uid(CT)])
    assert analysing.service.wait_until_idle(60)
    done = {r.scan_id: r for r in rows(analysing.service)}
    assert {r.status for r in done.values()} == {"done"}, [r.error for r in done.values()]
    assert {r.source for r in done.values()} == {"dicom"}
    assert done[dicos_uid(DX)].kind == "dual_energy" and done[dicos_uid(CT)].kind == "ct_volume"
    with analysing.service.store.transaction() as conn:
        assert set(conn.execute(sa.select(results.c.scan_id)).scalars()) == set(done)


@requires_storescu
def test_a_plain_ct_series_sent_slice_by_slice_is_one_volume(analysing: Running, tmp_path: Path) -> None:
    bag = read_scan(CT)
    slices = write_dicom_series(dataclasses.replace(bag, scan_id=generate_uid()), tmp_path / "series")
    sent = storescu(analysing.port, *slices)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: rows(analysing.service))
    assert analysing.service.wait_until_idle(60)
    [row] = rows(analysing.service)
    assert row.scan_id == series_uid(slices[0])
    assert (row.kind, row.status, row.source) == ("ct_volume", "done", "dicom"), row.error
    assert file_count(analysing.service, row.scan_id) == len(slices) == bag.counts.shape[0]
    assert not any((analysing.service.store.blobs.root.parent / SPOOL_FOLDER).glob("[!.]*"))


@requires_storescu
def test_the_same_scan_sent_twice_succeeds_twice_and_is_one_scan(receiving: Running, tmp_path: Path) -> None:
    slices = ct_series(tmp_path / "series", seed=1)
    for _ in range(2):
        sent = storescu(receiving.port, DX, *slices)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: len(rows(receiving.service)) == 2)
    wait_for(lambda: receiving.service.counters["scans_duplicate"] == 2)  # the DX and the series, again
    assert [r.scan_id for r in rows(receiving.service)] == sorted([dicos_uid(DX), series_uid(slices[0])])
    assert receiving.service.counters["scans_accepted"] == 2


@requires_storescu
def test_a_second_series_in_one_association_is_a_second_scan(receiving: Running, tmp_path: Path) -> None:
    first, second = ct_series(tmp_path / "a", seed=2), ct_series(tmp_path / "b", seed=3)
    sent = storescu(receiving.port, *first, CT, *second)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: len(rows(receiving.service)) == 3)
    for series in (first, second):
        assert file_count(receiving.service, series_uid(series[0])) == 5


@requires_storescu
def test_deflated_and_compressed_transfer_syntaxes_arrive_readable(receiving: Running) -> None:
    sent = storescu(receiving.port, DX, options=["-xd"])  # storescu deflates on the wire
    assert sent.returncode == 0, sent.stdout + sent.stderr
    ds = pydicom.dcmread(CT)
    ds.SOPInstanceUID = generate_uid()
    ds.compress(dcmuid.RLELossless)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, dcmuid.RLELossless)
    assoc = ae.associate("127.0.0.1", receiving.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    # Intake decodes the pixels before it accepts a scan: both were read as sent.
    got = {r.scan_id: r.kind for r in rows(receiving.service)}
    assert got == {dicos_uid(DX): "dual_energy", str(ds.SOPInstanceUID): "ct_volume"}
    # ... and stored as they came over the wire.
    assert stored_syntax(receiving.service, dicos_uid(DX)) == dcmuid.DeflatedExplicitVRLittleEndian
    assert stored_syntax(receiving.service, ds.SOPInstanceUID) == dcmuid.RLELossless


# -- refusing ------------------------------------------------------------------------------------------------------


def test_a_dx_without_pixel_data_is_refused_with_its_reason(receiving: Running) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = dcmuid.ExplicitVRLittleEndian
    ds.SOPClassUID = dcmuid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 8, 8, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    assoc = ae.associate("127.0.0.1", receiving.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xC000
    assert "pixel data" in status.ErrorComment
    assert rows(receiving.service) == []


def test_a_different_image_under_a_held_sop_instance_uid_is_refused(receiving: Running) -> None:
    ds = pydicom.dcmread(DX)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiving.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        first, again = assoc.send_c_store(ds).Status, assoc.send_c_store(ds).Status
        pixels = bytearray(ds.PixelData)
        pixels[100] ^= 0xFF
        ds.PixelData = bytes(pixels)
        other = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert (first, again) == (0x0000, 0x0000)  # the same image twice is one scan
    assert other.Status == 0x0111 and "already held" in other.ErrorComment
    assert len(other.ErrorComment) <= 64 and other.ErrorComment.endswith("...")
    assert [row.scan_id for row in rows(receiving.service)] == [str(ds.SOPInstanceUID)]


def test_a_scanner_calling_another_ae_title_is_rejected(receiving: Running) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(dcmuid.DICOSCTImageStorage)
    assoc = ae.associate("127.0.0.1", receiving.port, ae_title="SOMEONE-ELSE")
    assert assoc.is_rejected


@requires_storescu
def test_a_released_series_with_a_missing_slice_is_refused_and_kept(receiving: Running, tmp_path: Path) -> None:
    slices = ct_series(tmp_path / "series", seed=4)
    sent = storescu(receiving.port, *slices[:2], *slices[3:])
    assert sent.returncode == 0, sent.stdout + sent.stderr  # each slice was stored when acknowledged
    refused = receiving.service.store.blobs.root.parent / REFUSED_FOLDER
    wait_for(lambda: len(list(refused.glob("*/*.dcm"))) == 4)
    assert rows(receiving.service) == []


# -- associations that end badly and services that stop --------------------------------------------------------------


@requires_storescu
def test_slices_of_an_aborted_association_wait_for_the_rest_of_their_series(receiving: Running,
                                                                           tmp_path: Path) -> None:
    slices = ct_series(tmp_path / "series", seed=5)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(dcmuid.CTImageStorage, dcmuid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiving.port, ae_title=AE_TITLE)
    assert assoc.is_established
    for path in slices[:3]:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    assoc.abort()
    time.sleep(0.5)
    # Three of five slices are not a bag: neither the abort nor a restart submits them ...
    receiving.restart_scp()
    assert rows(receiving.service) == []
    # ... the sender's retry of what it lost completes them into one volume.
    sent = storescu(receiving.port, *slices[3:])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: rows(receiving.service))
    [row] = rows(receiving.service)
    assert (row.scan_id, row.kind) == (series_uid(slices[0]), "ct_volume")
    assert file_count(receiving.service, row.scan_id) == 5


@requires_storescu
def test_a_released_series_the_service_did_not_submit_is_submitted_at_start(receiving: Running, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    slices = ct_series(tmp_path / "series", seed=6)
    attempts: list[int] = []

    def crash(uploads: Sequence[Upload], **_: object) -> None:
        attempts.append(len(uploads))
        raise OSError("the service died here")

    monkeypatch.setattr(receiving.service, "submit", crash)
    sent = storescu(receiving.port, *slices)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: attempts == [5])
    monkeypatch.undo()
    assert rows(receiving.service) == []
    receiving.restart_scp()
    [row] = rows(receiving.service)  # submitted before the SCP listens again
    assert row.scan_id == series_uid(slices[0])
    assert file_count(receiving.service, row.scan_id) == 5
    assert not any((receiving.service.store.blobs.root.parent / SPOOL_FOLDER).glob("[!.]*"))


# -- the TDR back to a workstation ----------------------------------------------------------------------------------


@contextlib.contextmanager
def workstation_and_service(tmp_path: Path) -> Iterator[tuple[Path, Running]]:
    """DCMTK's storescp as the DICOS workstation, and an analysing service that sends it TDRs."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    workstation = subprocess.Popen([str(STORESCP), "-pm", "-aet", "WORKSTATION", "-od", str(inbox), str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = None
    try:
        wait_for(lambda: _listening(port), timeout=10)
        run = running(tmp_path / "data", analyse=True,
                      tdr_destination=TdrDestination("127.0.0.1", port, "WORKSTATION"))
        yield inbox, run
    finally:
        if run is not None:
            run.stop()
            run.service.stop()
        workstation.terminate()
        workstation.wait(10)


@requires_storescp
def test_the_machine_tdr_goes_to_the_workstation(tmp_path: Path) -> None:
    with workstation_and_service(tmp_path) as (inbox, run):
        accepted = run.service.submit([Upload(DX.name, DX.read_bytes())], source="http", username=None)
        assert run.service.wait_until_idle(60)
        wait_for(lambda: _received(inbox), timeout=20)
        [tdr] = _received(inbox)
        assert tdr.SOPClassUID == dcmuid.DICOSThreatDetectionReportStorage
        with run.service.store.transaction() as conn:
            sha = conn.execute(sa.select(results.c.tdr_sha256).where(results.c.scan_id == accepted.scan_id)).scalar()
        assert tdr.SOPInstanceUID == pydicom.dcmread(run.service.store.blobs.path(sha)).SOPInstanceUID


@requires_storescp
def test_the_officers_tdr_follows_the_machine_tdr_to_the_workstation(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from nii.serve.app import create_app
    from nii.serve.auth import add_user

    with workstation_and_service(tmp_path) as (inbox, run):
        with run.service.store.transaction() as conn:
            add_user(run.service.store, conn, "op", "operator-pass", "operator")
        scan_id = run.service.submit([Upload(DX.name, DX.read_bytes())], source="http", username=None).scan_id
        assert run.service.wait_until_idle(60)
        wait_for(lambda: len(_received(inbox)) == 1, timeout=20)
        client = TestClient(create_app(run.service))
        token = client.post("/api/token", data={"username": "op", "password": "operator-pass"}).json()["access_token"]
        reply = client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "threat", "category": "OTHER"},
                            headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 201
        wait_for(lambda: len(_received(inbox)) == 2, timeout=20)
        assert sorted(str(d.TDRType) for d in _received(inbox)) == ["MACHINE", "OPERATOR"]
    assert run.service.on_decision == []


def test_a_workstation_that_is_down_fails_nothing(tmp_path: Path) -> None:
    run = running(tmp_path / "data", analyse=True,
                  tdr_destination=TdrDestination("127.0.0.1", free_port(), "WORKSTATION"))
    try:
        run.service.submit([Upload(DX.name, DX.read_bytes())], source="http", username=None)
        assert run.service.wait_until_idle(60)
        assert [r.status for r in rows(run.service)] == ["done"]
    finally:
        run.stop()
        run.service.stop()
    assert run.service.on_result == []  # stopping the SCP stops the send-back


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _received(inbox: Path) -> list[Dataset]:
    """What storescp wrote, once each file reads whole."""
    try:
        return [pydicom.dcmread(f) for f in inbox.iterdir() if f.is_file()]
    except Exception:  # noqa: BLE001 - still being written
        return []
