"""The DICOM network way in: a C-STORE SCP for scanners, and the machine TDR sent back by C-STORE.

Scanners and archives push scans with DICOM C-STORE. :func:`start_dicom_scp`
runs a pynetdicom server (AE title ``service.config.dicom_ae_title``) that
accepts the SOP classes :mod:`nii.ingest.dicom` reads: DICOS CT and DICOS DX
(for presentation and for processing), which pynetdicom's default storage
contexts lack, and plain DICOM CT (also Enhanced and Legacy Converted), DX,
CR and secondary capture; C-ECHO is answered too. Every transfer syntax
pydicom has a working decoder for is accepted (uncompressed, deflated, RLE,
JPEG, JPEG-LS, JPEG 2000 where the codecs are installed), so nothing is
taken that the workers cannot decode. Any other SOP class (a DICOS threat
report, MR, ...) is refused at association time, so the sender learns at
once instead of after sending.

Each instance goes to :meth:`nii.serve.service.Service.submit` as received
(``event.encoded_dataset()``: the bytes with their file meta), and success
goes back only after the submission returned, that is after the scan is in
the blob store and its row committed. A refused scan gets a failure status
with its one-line reason as Error Comment: ``0xA700`` (out of resources)
when it is too large, ``0xC000`` (cannot understand) when it is unreadable,
``0x0110`` (processing failure) for anything unexpected; nothing escapes the
handler. The same scan sent again is answered with success and is not
stored twice.

CT slices
    Plain CT arrives as one single-slice file per C-STORE (what
    :func:`nii.ingest.dicom.ct_slice_series` calls a slice), and a bag is
    the whole series. Each slice is written durably (fsync, rename) to
    ``DATA/dicom-spool/<series>/`` before its success goes back. When an
    association that delivered slices ends with an A-RELEASE, the series is
    marked released (a ``.released`` file) and all its slices are submitted
    as one scan, then the folder is removed.

    An association that ends otherwise (A-ABORT, the network gone, the
    service killed) leaves its slices in the spool unmarked. They are *not*
    submitted on their own: a sender that lost its association sends the
    series again (whole, or only the slices not acknowledged), and those
    slices land in the same folder and complete it. Submitting the part
    instead would analyse half a bag as if it were the whole bag, and,
    because the scan id of a slice series is its Series Instance UID, would
    turn the complete resend into an ignored duplicate.

    A series that was released but not yet submitted when the service
    stopped (crash during the submission) still has its marker; at start,
    :func:`start_dicom_scp` submits every marked folder before it listens.
    Unmarked leftovers are logged and keep waiting for their series (a
    person deletes them once the sender is known to have given up).

    A series that a released association delivered while another
    association was still delivering slices of the same series waits for
    that one to end, so the scan is submitted once, whole. A released series
    refused by intake (a missing slice, slices that disagree) is logged with
    its reason and moved to ``DATA/dicom-refused/`` for a person to look at:
    its slices were acknowledged, so they are never silently deleted.

    A sender that opens one association per slice makes a one-slice scan
    of each slice; supporting such scanners needs grouping by series over
    time (a quiet period with no new slice), which this does not do.

Anything else (a multi-frame DICOS or Enhanced CT, a DX, a CR) is one scan
by itself and is submitted from the C-STORE handler.

TDR send-back
    With ``[dicom] tdr_destination`` set, each machine TDR (DICOS Threat
    Detection Report, SOP class 1.2.840.10008.5.1.4.1.1.501.3) is sent by
    C-STORE to that workstation as soon as its result is stored, from the
    worker that analysed the scan (short timeouts, so a workstation that is
    down delays that worker by seconds at most). A failed send is logged,
    never raised: the TDR stays in the store and the API serves it.

The SCP listens on ``config.host`` (loopback by default) and takes scans
from any calling AE title that calls it by its own; put it on a scanner
network only, since DICOM has no login here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pydicom
import sqlalchemy as sa
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pynetdicom import AE, evt, register_uid
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification

from nii.ingest.dicom import READABLE_SOP_CLASSES, ct_slice_series
from nii.serve.decisions import Decision
from nii.serve.intake import IntakeError, Upload
from nii.serve.service import Service
from nii.files import fsync_dir
from nii.serve.store import results

__all__ = ["REFUSED_FOLDER", "SPOOL_FOLDER", "STORAGE_CLASSES", "send_tdr", "start_dicom_scp", "transfer_syntaxes"]

log = logging.getLogger("nii.serve.dicom")

#: Folders of the data folder: CT slices waiting for their series, and released series intake refused.
SPOOL_FOLDER = "dicom-spool"
REFUSED_FOLDER = "dicom-refused"

#: What the SCP accepts: exactly the SOP classes nii.ingest.dicom reads.
STORAGE_CLASSES: tuple[UID, ...] = tuple(UID(c) for c in READABLE_SOP_CLASSES)
# pynetdicom knows no service class for the DICOS SOP classes: without this
# it accepts their presentation contexts, then aborts the association at the
# first C-STORE ("no supported service class"). Registering is idempotent.
for _keyword in ("DICOSCTImageStorage", "DICOSDigitalXRayImageStorageForPresentation",
                 "DICOSDigitalXRayImageStorageForProcessing", "DICOSThreatDetectionReportStorage"):
    register_uid(getattr(dcmuid, _keyword), _keyword, StorageServiceClass)

# Only these can be single slices (nii.ingest.dicom.ct_slice_series); others skip the spool.
_SLICE_CLASSES = frozenset({dcmuid.DICOSCTImageStorage, dcmuid.CTImageStorage})

_RELEASED = ".released"  # marker: an association delivering this series ended with a release
_INCOMING = ".incoming"  # slices being written; never acknowledged, so cleared at start
_PLAIN_UID = re.compile(r"[0-9.]{1,64}")

# C-STORE failure statuses (PS3.4 Annex B.2.3, and the general 0x0110 and
# 0x0111 of PS3.7 Annex C).
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000
_PROCESSING_FAILURE = 0x0110
_DUPLICATE_SOP_INSTANCE = 0x0111

# The TDR send-back must not hold an analysis worker for long.
_SCU_TIMEOUT_S = 10.0


@dataclasses.dataclass
class _Spool:
    """The spool folder and which series each live association is delivering."""

    root: Path
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    delivering: dict[Association, set[str]] = dataclasses.field(default_factory=dict)


def transfer_syntaxes() -> list[UID]:
    """The transfer syntaxes pydicom can decode here: uncompressed first, then the installed codecs."""
    usable = []
    for syntax in dcmuid.AllTransferSyntaxes:
        try:
            if get_decoder(syntax).is_available:
                usable.append(UID(syntax))
        except NotImplementedError:  # no decoder at all (video, audio)
            continue
    return sorted(usable, key=lambda s: s.is_compressed)


def start_dicom_scp(service: Service, *, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Start the C-STORE SCP in the background; return a function that stops it.

    Before it listens, CT series a previous run released but did not submit
    are submitted (see the module docstring).

    Parameters
    ----------
    service : Service
        Takes the scans; its config gives the AE title and the TDR destination.
    port : int
        TCP port to listen on.
    host : str
        Address to listen on.

    Returns
    -------
    callable
        Stops listening and the TDR send-back; associations under way finish.

    Raises
    ------
    OSError
        If the port cannot be bound.
    """
    config = service.config
    listener: Callable[[str], None] | None = None
    decided: Callable[[Decision], None] | None = None
    if config.tdr_destination is not None:
        def send_back(scan_id: str) -> None:
            send_tdr(service, scan_id)

        def send_officers(decision: Decision) -> None:
            send_operator_tdr(service, decision)

        # Before the spool is submitted, so those scans' TDRs go out too.
        listener, decided = send_back, send_officers
        service.on_result.append(listener)
        service.on_decision.append(decided)
    try:
        spool = _open_spool(service)
        ae = AE(ae_title=config.dicom_ae_title)
        # A scanner that calls another AE title is misconfigured: say so at once.
        ae.require_called_aet = True
        syntaxes = transfer_syntaxes()
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)  # C-ECHO: pynetdicom answers it
        handlers = [
            (evt.EVT_C_STORE, _handle_store, [service, spool]),
            (evt.EVT_RELEASED, _association_ended, [service, spool, True]),
            (evt.EVT_ABORTED, _association_ended, [service, spool, False]),
        ]
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    except BaseException:
        _unhook(service, listener, decided)
        raise

    def stop() -> None:
        _unhook(service, listener, decided)
        server.shutdown()

    return stop


# -- receiving ---------------------------------------------------------------------------------------------------


def _handle_store(event: Event, service: Service, spool: _Spool) -> Dataset | int:
    """EVT_C_STORE: store the instance durably, then answer; never raise."""
    peer = _peer(event)
    try:
        data = event.encoded_dataset()
        name = _file_key(str(event.request.AffectedSOPInstanceUID or "")) + ".dcm"
        if event.request.AffectedSOPClassUID in _SLICE_CLASSES and _spool_slice(spool, event.assoc, data, name):
            return 0x0000
        accepted = service.submit([Upload(name, data)], source="dicom", username=None)
        log.info("C-STORE from %s: scan %s %s", peer, accepted.scan_id,
                 "received again" if accepted.duplicate else "queued")
        return 0x0000
    except IntakeError as err:
        log.warning("C-STORE from %s refused: %s", peer, err)
        return _failure(_OUT_OF_RESOURCES if err.too_large else _DUPLICATE_SOP_INSTANCE if err.conflict
                        else _CANNOT_UNDERSTAND, str(err))
    except Exception as err:  # a bug or a full disk must answer the sender, not kill the association
        log.exception("C-STORE from %s failed", peer)
        return _failure(_PROCESSING_FAILURE, f"internal error: {type(err).__name__}")


def _spool_slice(spool: _Spool, assoc: Association, data: bytes, name: str) -> bool:
    """Keep a CT slice durably in its series folder; False if it is not a slice after all."""
    incoming = spool.root / _INCOMING / f"{uuid.uuid4().hex}.dcm"
    _write_durably(incoming, data)
    try:
        series = ct_slice_series(incoming)  # the folder walker's own test of "one slice of a series"
        if series is None:
            return False  # a multi-frame CT: one scan by itself
        key = _file_key(series)
        with spool.lock:
            # Registered before the file lands, so no flush takes the folder from under it.
            spool.delivering.setdefault(assoc, set()).add(key)
            folder = spool.root / key
            folder.mkdir(exist_ok=True)
            os.replace(incoming, folder / name)  # a resent slice replaces itself
        fsync_dir(folder)
        return True
    finally:
        incoming.unlink(missing_ok=True)


def _association_ended(event: Event, service: Service, spool: _Spool, released: bool) -> None:
    """EVT_RELEASED / EVT_ABORTED: submit the series this association completed; never raise."""
    keys = sorted(spool.delivering.get(event.assoc, ()))
    try:
        if released:
            for key in keys:  # marked while still ours, so no other flush can move the folder meanwhile
                _write_durably(spool.root / key / _RELEASED, b"")
    except Exception:
        log.exception("association from %s: marking its CT series released failed", _peer(event))
    with spool.lock:
        spool.delivering.pop(event.assoc, None)
    if keys and not released:
        log.warning("association from %s ended without release: %d CT series wait in %s for the rest",
                    _peer(event), len(keys), spool.root)
    for key in keys:
        try:
            _flush(service, spool, key)
        except Exception:
            log.exception("CT series %s: submission failed; its slices stay in %s", key, spool.root)


def _flush(service: Service, spool: _Spool, key: str) -> None:
    """Submit a released series unless a live association is still delivering it."""
    with spool.lock:
        for assoc, keys in list(spool.delivering.items()):
            if not assoc.is_alive():  # ended without an event: it delivers nothing more
                del spool.delivering[assoc]
            elif key in keys:
                return  # that association submits the series when it ends
        folder = spool.root / key
        if not (folder / _RELEASED).exists():
            return
        # Moved aside, so slices of a new delivery of the series start a new folder.
        claimed = spool.root / f"{key}.{uuid.uuid4().hex[:8]}"
        folder.rename(claimed)
    _submit_series(service, claimed)


def _submit_series(service: Service, folder: Path) -> None:
    """Submit the slices in ``folder`` as one scan and remove it; refused ones go to the refused folder."""
    files = sorted(folder.glob("*.dcm"))
    if not files:
        shutil.rmtree(folder)
        return
    uploads = [Upload(f.name, f.read_bytes()) for f in files]
    try:
        accepted = service.submit(uploads, source="dicom", username=None)
    except IntakeError as err:
        refused = folder.parent.parent / REFUSED_FOLDER / folder.name
        if refused.exists():
            refused = refused.with_name(f"{folder.name}.{uuid.uuid4().hex[:8]}")
        refused.parent.mkdir(exist_ok=True)
        folder.rename(refused)  # with its marker: moved back into the spool, it is tried again at start
        log.error("CT series of %d slices received by DICOM refused: %s; the slices are kept in %s",
                  len(files), err, refused)
        return
    log.info("CT series of %d slices received by DICOM: scan %s %s", len(files), accepted.scan_id,
             "received again" if accepted.duplicate else "queued")
    shutil.rmtree(folder)


def _open_spool(service: Service) -> _Spool:
    """The spool of the service's data folder, after submitting what the last run released."""
    root = service.store.blobs.root.parent / SPOOL_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / _INCOMING, ignore_errors=True)
    (root / _INCOMING).mkdir()
    waiting = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / _RELEASED).exists():
            try:
                _submit_series(service, folder)
            except Exception:  # the service still starts; the folder is tried again next time
                log.exception("CT series in %s could not be submitted", folder)
        else:
            waiting.append(folder.name)
    if waiting:
        log.warning("%d CT series received in part (association aborted or service stopped) wait in %s "
                    "for their sender to send them again: %s", len(waiting), root, ", ".join(waiting))
    return _Spool(root)


def _failure(status: int, reason: str) -> Dataset:
    """A C-STORE response with ``status`` and the reason as Error Comment (LO: 64 ASCII characters)."""
    response = Dataset()
    response.Status = status
    text = reason.encode("ascii", "replace").decode()
    # Cut at a word, marked, rather than mid-word: the full reason is in the log.
    response.ErrorComment = text if len(text) <= 64 else text[:61].rsplit(" ", 1)[0] + "..."
    return response


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title} at {requestor.address}"


def _file_key(uid: str) -> str:
    """A file name for a UID: the UID itself when it is plain, else its hash (names from the wire are untrusted)."""
    if _PLAIN_UID.fullmatch(uid) and not uid.startswith("."):
        return uid
    return hashlib.sha256(uid.encode()).hexdigest()[:40]


def _write_durably(path: Path, data: bytes) -> None:
    """Write, fsync and rename into place, then fsync the folder: whole on disk or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _unhook(service: Service, listener: Callable[[str], None] | None,
            decided: Callable[[Decision], None] | None) -> None:
    if listener in service.on_result:
        service.on_result.remove(listener)
    if decided in service.on_decision:
        service.on_decision.remove(decided)


# -- sending the TDR back ------------------------------------------------------------------------------------------


def send_tdr(service: Service, scan_id: str) -> bool:
    """Send the machine TDR of ``scan_id`` to ``service.config.tdr_destination`` by C-STORE.

    Parameters
    ----------
    service : Service
    scan_id : str
        A scan with a stored result.

    Returns
    -------
    bool
        True when the workstation answered success (or a warning); False,
        with the reason logged, when there is no destination, no result, or
        the send failed. Never raises.
    """
    with service.store.read() as conn:
        sha = conn.execute(sa.select(results.c.tdr_sha256).where(results.c.scan_id == scan_id)).scalar()
    if sha is None:
        log.warning("TDR of %s not sent: the scan has no result", scan_id)
        return False
    return send_stored_tdr(service, sha, f"machine TDR of {scan_id}")


def send_operator_tdr(service: Service, decision: Decision) -> bool:
    """Send the officer's TDR of ``decision`` (if it has one) to the same workstation; never raises."""
    if decision.operator_tdr_sha256 is None:
        return False
    return send_stored_tdr(service, decision.operator_tdr_sha256,
                           f"operator TDR of decision {decision.id} on {decision.scan_id}")


def send_stored_tdr(service: Service, sha256: str, what: str) -> bool:
    """C-STORE one stored TDR blob to ``service.config.tdr_destination``; False (logged) on any failure."""
    destination = service.config.tdr_destination
    if destination is None:
        return False
    where = f"{destination.ae_title} at {destination.host}:{destination.port}"
    try:
        tdr = pydicom.dcmread(io.BytesIO(service.store.blobs.get(sha256)))
        ae = AE(ae_title=service.config.dicom_ae_title)
        ae.connection_timeout = ae.acse_timeout = ae.network_timeout = _SCU_TIMEOUT_S
        ae.dimse_timeout = 3 * _SCU_TIMEOUT_S
        ae.add_requested_context(dcmuid.DICOSThreatDetectionReportStorage,
                                 [dcmuid.ExplicitVRLittleEndian, dcmuid.ImplicitVRLittleEndian])
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            log.warning("%s not sent: no association with %s", what, where)
            return False
        try:
            status = assoc.send_c_store(tdr)
        finally:
            assoc.release()
        code = status.get("Status") if status else None
        if code is None or not (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
            log.warning("%s not accepted by %s: status %s", what, where,
                        "none (timed out)" if code is None else f"0x{code:04X}")
            return False
        log.info("%s sent to %s", what, where)
        return True
    except Exception:  # a workstation that is down must never fail an analysis or a decision
        log.exception("%s not sent to %s", what, where)
        return False
