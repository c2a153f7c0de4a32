"""What a batch run analyses: archive items streamed from folders, list files and the service's store.

An archive argument of ``nii batch run`` is one of

a folder
    walked with :func:`nii.ingest.find_scans` (every supported format; raw
    sidecars and CT slice series grouped as the CLI and the service group
    them);
a list file (``.txt``, ``.lst``, ``.list``)
    one path per line, relative to the list file's folder; blank lines and
    lines starting with ``#`` are ignored; each line may be a scan file, a
    folder or a store;
a service data folder (one holding ``nii.sqlite3``, see ``nii serve``)
    every scan the store holds, read through
    :func:`nii.serve.intake.materialise`.

Everything is a generator: nothing is listed whole, so an archive of
millions of scans costs no more memory than one of ten. Each
:class:`ArchiveItem` carries a ``key`` that names it the same way on every
run, which is how a resumed run knows what it already did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from nii.ingest import ScanSource, find_scans
from nii.ingest.raw import DATA_SUFFIXES, find_sidecar

__all__ = ["LIST_SUFFIXES", "STORE_DATABASE", "ArchiveItem", "check_archives", "is_store", "iter_archive"]

#: Suffixes of a list file of paths (scans never have them).
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
#: The file that marks a folder as a service data folder.
STORE_DATABASE = "nii.sqlite3"
# Scans listed from the store per query; each page is its own short read
# transaction, so a batch run never holds a live service's database open.
_STORE_PAGE = 500


@dataclasses.dataclass(frozen=True)
class ArchiveItem:
    """One scan to analyse: a file, a CT slice series, or a stored scan.

    Parameters
    ----------
    key : str
        Stable identity across runs: the resolved path (``folder::first
        slice`` for a series), or ``store:<data folder>#<scan id>``.
    path : str
        What reports show as the scan's location.
    slices : tuple of str
        The slice files of a CT series (empty otherwise).
    store : str, optional
        The service data folder of a stored scan.
    scan_id : str, optional
        The stored scan's id (stored scans only).
    """

    key: str
    path: str
    slices: tuple[str, ...] = ()
    store: str | None = None
    scan_id: str | None = None

    @classmethod
    def from_source(cls, source: ScanSource) -> ArchiveItem:
        """The item for what :func:`~nii.ingest.find_scans` found."""
        path = source.path
        if not source.slices and path.suffix.lower() in DATA_SUFFIXES:
            # A raw data file named on its own (in a list) is its sidecar's
            # scan: one key, so it is not analysed twice.
            path = find_sidecar(path) or path
        key = f"{path.resolve()}::{source.slices[0].name}" if source.slices else str(path.resolve())
        return cls(key, str(path), tuple(str(s) for s in source.slices))

    @classmethod
    def from_store(cls, data_dir: Path, scan_id: str) -> ArchiveItem:
        key = f"store:{data_dir.resolve()}#{scan_id}"
        return cls(key, key, store=str(data_dir.resolve()), scan_id=scan_id)

    def source(self) -> ScanSource:
        """The :class:`~nii.ingest.ScanSource` of a file or series item."""
        return ScanSource(Path(self.path), tuple(Path(s) for s in self.slices))

    def to_json(self) -> str:
        """One line for the run's to-do spool (and Ray Data's input)."""
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v not in ((), None)})

    @classmethod
    def from_json(cls, line: str) -> ArchiveItem:
        record = json.loads(line)
        record["slices"] = tuple(record.get("slices", ()))
        return cls(**record)


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a service data folder (it holds :data:`STORE_DATABASE`)."""
    return (Path(path) / STORE_DATABASE).is_file()


def check_archives(archives: Iterable[str | os.PathLike]) -> list[Path]:
    """The archive arguments as paths, refusing any that do not exist.

    Entries of a list file that do not exist are not refused here: they
    become rows with the reason, like any other unreadable scan.

    Raises
    ------
    ValueError
        No archive given, or one that does not exist (one line naming it).
    """
    paths = [Path(a) for a in archives]
    if not paths:
        raise ValueError("no ARCHIVE given: name folders, list files or service data folders")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"archive {', '.join(missing)}: no such file or folder")
    return paths


def iter_archive(archives: Iterable[str | os.PathLike], *,
                 skip: Iterable[str | os.PathLike] = ()) -> Iterator[ArchiveItem]:
    """Every scan of the archives, streamed, in a stable order.

    Parameters
    ----------
    archives : iterable of path-like
        Folders, list files and service data folders (module docstring).
    skip : iterable of path-like
        Folders never to walk into (a batch run's own RESULTS).

    Yields
    ------
    ArchiveItem
        Folders in :func:`~nii.ingest.find_scans` order, stored scans by
        arrival, list files line by line. A path given twice is yielded
        twice; :func:`nii.batch.run.run_batch` analyses it once.
    """
    skip = tuple(skip)
    for archive in archives:
        archive = Path(archive)
        if archive.is_file() and archive.suffix.lower() in LIST_SUFFIXES:
            yield from _listed(archive, skip)
        else:
            yield from _walked(archive, skip)


def _walked(path: Path, skip: tuple[str | os.PathLike, ...]) -> Iterator[ArchiveItem]:
    if is_store(path):
        yield from _stored_scans(path)
    else:
        # Another run's RESULTS inside the archive holds annotated PNGs and
        # TDRs of scans, not scans: never analysed as if they were.
        yield from map(ArchiveItem.from_source, find_scans([path], skip=skip, skip_if=_is_results))


def _is_results(folder: Path) -> bool:
    from nii.batch.results import MANIFEST

    return (folder / MANIFEST).is_file()


def _listed(list_file: Path, skip: tuple[str | os.PathLike, ...]) -> Iterator[ArchiveItem]:
    with list_file.open("rb") as lines:
        for number, raw_line in enumerate(lines, start=1):
            try:
                # utf-8-sig: a list saved by a Windows editor starts with a byte-order mark.
                entry = raw_line.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"list file {list_file}: line {number} is not UTF-8 text; "
                                 "save the list as UTF-8") from None
            if not entry or entry.startswith("#"):
                continue
            path = Path(entry) if Path(entry).is_absolute() else list_file.parent / entry
            # A list naming a list is read as a scan, and refused with the
            # reader's reason: following lists could loop.
            yield from _walked(path, skip)


def _stored_scans(data_dir: Path) -> Iterator[ArchiveItem]:
    import sqlalchemy as sa

    from nii.serve.store import Store, scans

    store = Store.open(data_dir)
    try:
        order = (scans.c.received_at, scans.c.scan_id)
        after: tuple[str, str] | None = None
        while True:
            query = sa.select(*order).order_by(*order).limit(_STORE_PAGE)
            if after is not None:  # keyset paging: stable while the service adds scans
                query = query.where(sa.tuple_(*order) > after)
            with store.read() as conn:
                page = conn.execute(query).all()
            for received_at, scan_id in page:
                yield ArchiveItem.from_store(data_dir, scan_id)
            if len(page) < _STORE_PAGE:
                return
            after = tuple(page[-1])
    finally:
        store.engine.dispose()
