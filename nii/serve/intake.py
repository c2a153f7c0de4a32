"""Accepting a scan: check it, store it durably, queue it. One path for every way in.

HTTP uploads, the DICOM C-STORE SCP, the hot folder and the sample scans all
call :func:`accept_scan` with the scan's files as :class:`Upload` s. It reads
the scan with the same ingest code the pipeline uses, so a file that will
never analyse is refused at the door with its one-line reason, and nothing
unreadable sits in the queue. A scan is accepted only once its bytes are in
the blob store and its row is committed; only then does the sender hear
success. The same scan sent again is not stored or analysed again; a
different scan under an id already held is refused, never dropped as a
duplicate.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from nii.ingest import ReadLimits, ScanReadError, ScanSource, ScanTooLargeError, find_scans, read_source
from nii.ingest.raw import sidecar_data_file
from nii.serve import audit
from nii.serve.store import Store, scan_files, scans, utc_now

__all__ = ["Accepted", "IntakeError", "IntakeLimits", "Upload", "accept_scan", "materialise", "source_files", "uploads_of"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# Paths under /api/scans/ that are not scan ids: a scan named so could never be opened.
_API_WORDS = frozenset({"events"})


@dataclasses.dataclass(frozen=True)
class Upload:
    """One file of a scan as a sender named it.

    ``name`` is only a hint (a raw sidecar names its data file); it is
    reduced to a plain file name before use and never becomes a path.
    """

    name: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class IntakeLimits:
    """What one submission may be: files, bytes, and the pixel budget."""

    max_files: int = 2000  # a CT series sent slice by slice
    max_bytes: int = 1 << 30
    read: ReadLimits = ReadLimits()


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The answer to a submission: which scan, where it stands, whether it was new."""

    scan_id: str
    status: str
    duplicate: bool


class IntakeError(ValueError):
    """A submission was refused; ``str(err)`` is one line.

    ``too_large`` for size refusals; ``conflict`` when another scan already
    holds its scan id.
    """

    def __init__(self, reason: str, *, too_large: bool = False, conflict: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large
        self.conflict = conflict


def safe_name(name: str, index: int) -> str:
    """A plain file name from a sender's name: no folders, no dots in front."""
    base = _SAFE_NAME.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip("._")[:100]
    return base or f"file-{index}"


def _unique_names(uploads: Sequence[Upload]) -> list[str]:
    names: list[str] = []
    for i, upload in enumerate(uploads):
        name = safe_name(upload.name, i)
        while name in names:
            name = f"{i}-{name}"
        names.append(name)
    return names


def accept_scan(store: Store, uploads: Sequence[Upload], *, source: str, username: str | None,
                limits: IntakeLimits = IntakeLimits(), scratch: Path | None = None) -> Accepted:
    """Check, store and queue one scan.

    Parameters
    ----------
    store : Store
    uploads : sequence of Upload
        The scan's files: one file, a raw sidecar and its data file, or the
        slices of one CT series.
    source : str
        How it came in (``http``, ``dicom``, ``hotfolder``, ``samples``).
    username : str, optional
        Who sent it (None for scanner hardware).
    limits : IntakeLimits
    scratch : Path, optional
        Where to unpack it for reading (a temporary folder by default).

    Returns
    -------
    Accepted

    Raises
    ------
    IntakeError
        Too many files or bytes, not exactly one scan, unreadable, or a
        different scan under an id already held.
    """
    if not uploads:
        raise IntakeError("no files were sent")
    if len(uploads) > limits.max_files:
        raise IntakeError(f"{len(uploads)} files in one submission; the limit is {limits.max_files}",
                          too_large=True)
    total = sum(len(u.data) for u in uploads)
    if total > limits.max_bytes:
        raise IntakeError(f"{total} bytes in one submission; the limit is {limits.max_bytes}", too_large=True)
    names = _unique_names(uploads)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="intake-") as folder:
        for name, upload in zip(names, uploads):
            (Path(folder) / name).write_bytes(upload.data)
        scan = _read_one_scan(Path(folder), names, limits.read)
    digests = [store.blobs.put(u.data) for u in uploads]
    try:
        with store.transaction() as conn:
            existing = conn.execute(sa.select(scans.c.status).where(scans.c.scan_id == scan.scan_id)).scalar()
            if existing is not None:
                _refuse_a_different_scan_under_a_held_id(store, conn, scan, digests, limits.read, scratch)
                audit.append(store, conn, username=username, action="submit_again", target=scan.scan_id,
                             detail={"source": source})
                return Accepted(scan.scan_id, existing, duplicate=True)
            conn.execute(scans.insert().values(
                scan_id=scan.scan_id, received_at=utc_now(), source=source, submitted_by=username,
                kind=scan.kind.value, scanner_id=scan.scanner_id, lane=_lane(scan.metadata),
                acquired_at=scan.acquired_at.isoformat() if scan.acquired_at else None,
                status="queued", revision=store.next_revision(conn)))
            conn.execute(scan_files.insert(), [
                {"scan_id": scan.scan_id, "name": n, "sha256": d, "size": len(u.data)}
                for n, d, u in zip(names, digests, uploads)])
            audit.append(store, conn, username=username, action="submit", target=scan.scan_id,
                         detail={"source": source, "files": dict(zip(names, digests))})
    except sa.exc.IntegrityError:
        # PostgreSQL: the same scan id committed by a concurrent submission
        # meanwhile: a duplicate only if it holds the same image.
        with store.read() as conn:
            _refuse_a_different_scan_under_a_held_id(store, conn, scan, digests, limits.read, scratch)
        return Accepted(scan.scan_id, "queued", duplicate=True)
    return Accepted(scan.scan_id, "queued", duplicate=False)


def _refuse_a_different_scan_under_a_held_id(store: Store, conn: sa.Connection, scan, digests: Sequence[str],
                                             read_limits: ReadLimits, scratch: Path | None) -> None:
    """Raise :class:`IntakeError` when ``scan.scan_id`` is held for other pixels.

    A scan id (a DICOS SOP Instance UID, a sidecar's ``scan_id``) names one
    acquisition. A scanner that re-uses ids would otherwise have its new
    image answered "duplicate" and lost. The same files are the same scan;
    other files (a DICOS re-sent through the SCP, which re-writes its file
    header) are read back and their pixels compared.
    """
    held = sorted(row.sha256 for row in store.files_of(conn, scan.scan_id))
    if not held or held == sorted(digests):
        return
    with tempfile.TemporaryDirectory(dir=scratch, prefix="held-") as folder:
        held_scan = read_source(materialise(store, scan.scan_id, Path(folder)), limits=read_limits)
    if held_scan.counts.shape == scan.counts.shape and np.array_equal(held_scan.counts, scan.counts):
        return
    raise IntakeError(f"a different image is already held under scan id {scan.scan_id[:80]}; not stored "
                      "(does the scanner re-use ids?)", conflict=True)


def _lane(metadata) -> str | None:
    """The screening lane a scanner names in the scan's metadata (``lane``), for reporting."""
    lane = metadata.get("lane") if hasattr(metadata, "get") else None
    return str(lane)[:64] if lane not in (None, "") else None


def _sources_in(folder: Path, names: Sequence[str]) -> list[ScanSource]:
    """The scans among one submission's files in ``folder``.

    One file on its own is read whatever its name (a DICOS named .txt), as
    a file named on the command line is; the walk leaves out notes and other
    JSON only beside scans.
    """
    sources = list(find_scans([folder]))
    if not sources and len(names) == 1:
        sources = [ScanSource(folder / names[0])]
    return sources


def _read_one_scan(folder: Path, names: list[str], read_limits: ReadLimits):
    sources = _sources_in(folder, names)
    if len(sources) > 1:
        # A raw pair whose data file came under another name is two "scans":
        # say what is missing instead.
        for sidecar in (s.path for s in sources if s.path.suffix.lower() == ".json"):
            try:
                data_file = sidecar_data_file(sidecar)
            except ScanReadError as err:
                raise IntakeError(f"{sidecar.name}: {err.reason}") from None
            if not data_file.exists():
                raise IntakeError(f"{sidecar.name} names data_file {data_file.name}, which was not sent")
    if len(sources) != 1:
        raise IntakeError(f"the {len(names)} files sent hold {len(sources)} scans; send one scan per submission"
                          if sources else "the files sent hold no scan")
    try:
        scan = read_source(sources[0], limits=read_limits)
    except ScanReadError as err:
        # The reader names files by path; the sender knows them by name only.
        reason = err.reason.replace(f"{folder}{os.sep}", "")
        raise IntakeError(reason, too_large=isinstance(err, ScanTooLargeError)) from None
    if not scan.scan_id:
        raise IntakeError("the scan has no id (a DICOM file without SOP Instance UID)")
    if scan.scan_id in _API_WORDS:
        raise IntakeError(f"scan id {scan.scan_id!r} is a word of the service's API (/api/scans/{scan.scan_id}); "
                          "give the scan another id")
    return scan


def source_files(source: ScanSource) -> list[Path]:
    """The files one scan on disk is made of (a raw sidecar brings its data file)."""
    if source.slices:
        return list(source.slices)
    if source.path.suffix.lower() == ".json":
        try:
            return [source.path, sidecar_data_file(source.path)]
        except ScanReadError:
            return [source.path]  # refused with its reason when read
    return [source.path]


def uploads_of(source: ScanSource) -> list[Upload]:
    """The files of one scan on disk, read for :func:`accept_scan`."""
    return [Upload(p.name, p.read_bytes()) for p in source_files(source)]


def materialise(store: Store, scan_id: str, folder: Path) -> ScanSource:
    """Put a stored scan's files in ``folder`` and say where the scan is.

    Files are hard-linked from the blob store where the file system allows
    (no copy), under the names they were stored as.
    """
    with store.read() as conn:
        files = store.files_of(conn, scan_id)
    if not files:
        raise LookupError(f"scan {scan_id} has no stored files")
    folder.mkdir(parents=True, exist_ok=True)
    for row in files:
        blob, target = store.blobs.path(row.sha256), folder / row.name
        try:
            target.hardlink_to(blob)
        except OSError:
            shutil.copyfile(blob, target)
    sources = _sources_in(folder, [row.name for row in files])
    if len(sources) != 1:
        raise LookupError(f"scan {scan_id}: its stored files hold {len(sources)} scans")
    return sources[0]
