"""Ingest: read any scan a scanner or an archive hands us, and write it back.

One entry point, :func:`read_scan`, detects the format from the content and
returns a :class:`nii.scan.Scan` or raises a :class:`ScanReadError` whose
message is one line. :func:`find_scans` walks folders for the CLI, the
service and batch re-analysis alike.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Iterator

from nii.ingest import arrays, dicom, image, raw
from nii.ingest.detect import detect_format
from nii.ingest.errors import (
    CorruptScanError,
    ScanReadError,
    ScanTooLargeError,
    UnsupportedScanError,
    refuse_on_error,
)
from nii.ingest.limits import ReadLimits
from nii.scan import Scan, ScanFormat

__all__ = [
    "CorruptScanError",
    "ReadLimits",
    "ScanReadError",
    "ScanSource",
    "ScanTooLargeError",
    "UnsupportedScanError",
    "detect_format",
    "find_scans",
    "read_scan",
    "read_source",
    "write_scan",
]

_READERS: dict[ScanFormat, Callable[..., Scan]] = {
    ScanFormat.DICOM: dicom.read_dicom,
    ScanFormat.PNG: image.read_png,
    ScanFormat.JPEG: image.read_jpeg,
    ScanFormat.TIFF: image.read_tiff,
    ScanFormat.NPY: arrays.read_npy,
    ScanFormat.NPZ: arrays.read_npz,
    ScanFormat.RAW: raw.read_raw,
}

_WRITERS: dict[ScanFormat, Callable[..., object]] = {
    ScanFormat.DICOS: dicom.write_dicom,
    ScanFormat.DICOM: dicom.write_dicom,
    ScanFormat.DICOM_SERIES: dicom.write_dicom_series,
    ScanFormat.PNG: image.write_png,
    ScanFormat.JPEG: image.write_jpeg,
    ScanFormat.TIFF: image.write_tiff,
    ScanFormat.NPY: arrays.write_npy,
    ScanFormat.NPZ: arrays.write_npz,
    ScanFormat.RAW: raw.write_raw,
}

_SUFFIX_FORMAT = {
    ".dcm": ScanFormat.DICOS,
    ".dicom": ScanFormat.DICOS,
    ".png": ScanFormat.PNG,
    ".jpg": ScanFormat.JPEG,
    ".jpeg": ScanFormat.JPEG,
    ".tif": ScanFormat.TIFF,
    ".tiff": ScanFormat.TIFF,
    ".npy": ScanFormat.NPY,
    ".npz": ScanFormat.NPZ,
    ".raw": ScanFormat.RAW,
    ".bin": ScanFormat.RAW,
}

# Documentation and scripts that sit beside scans; not worth a refusal line.
_NOT_SCANS = {".md", ".txt", ".rst", ".py"}


@dataclasses.dataclass(frozen=True)
class ScanSource:
    """Where one scan lives: a file, or a folder of CT slices (``slices``)."""

    path: Path
    slices: tuple[Path, ...] = ()


def read_scan(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read one scan, whatever its format.

    Parameters
    ----------
    path : path-like
        A scan file, a raw sidecar (or its data file), or a folder holding
        the slices of one CT series.
    limits : ReadLimits
        Pixel budget and other limits checked before allocating.

    Returns
    -------
    Scan

    Raises
    ------
    ScanReadError
        One line saying why the file was refused; nothing else escapes.
    """
    path = Path(path)
    if path.is_dir():
        sources = list(find_scans([path]))
        if len(sources) != 1 or not sources[0].slices:
            raise UnsupportedScanError("folder is not one CT series; use find_scans() to walk it", path=str(path))
        return read_source(sources[0], limits=limits)
    with refuse_on_error("read", str(path)):
        if not path.exists():
            raise CorruptScanError("no such file")
        if not path.is_file():  # a FIFO or a device would block the read for ever
            raise UnsupportedScanError("not a regular file")
        fmt = detect_format(path)
        return _READERS[fmt](path, limits=limits)


def read_source(source: ScanSource, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read what :func:`find_scans` found (one file or one CT series)."""
    if source.slices:
        with refuse_on_error("DICOM series", str(source.path)):
            return dicom.read_dicom_series(source.slices, limits=limits)
    return read_scan(source.path, limits=limits)


def find_scans(paths: Iterable[str | os.PathLike], *, skip: Iterable[str | os.PathLike] = (),
               skip_if: Callable[[Path], bool] | None = None) -> Iterator[ScanSource]:
    """Walk files and folders, yielding each scan once.

    Folders are walked recursively in sorted order, skipping hidden entries,
    documentation, the folders in ``skip`` and those for which ``skip_if``
    is true. Linked folders are followed (archives are often assembled from
    links), each real folder once. A raw data file with a sidecar is
    yielded once (as its sidecar), and single-slice CT files of one series
    in one folder are grouped into one source. Files given explicitly are
    always yielded, and so are broken links (they are refused with their
    reason when read, not silently left out).
    """
    skipped = {Path(p).resolve() for p in skip}
    for given in paths:
        given = Path(given)
        if not given.is_dir():
            yield ScanSource(given)
            continue
        visited = {given.resolve()}
        for folder, dirnames, filenames in os.walk(given, followlinks=True):
            kept = []
            for d in sorted(dirnames):
                real = (Path(folder) / d).resolve()
                if d.startswith(".") or real in skipped or real in visited or (skip_if and skip_if(Path(folder) / d)):
                    continue
                visited.add(real)
                kept.append(d)
            dirnames[:] = kept
            yield from _scans_in_folder(Path(folder), sorted(f for f in filenames if not f.startswith(".")))


def _scans_in_folder(folder: Path, names: list[str]) -> Iterator[ScanSource]:
    files = [folder / n for n in names if Path(n).suffix.lower() not in _NOT_SCANS]
    sidecars = {f for f in files if _is_sidecar(f)}
    claimed = {_data_file_of(f) for f in sidecars}
    # Other JSON beside scans (annotations, results, manifests) is not a scan;
    # given explicitly it is still read, and refused with its reason.
    files = [f for f in files if f.suffix.lower() != ".json" or f in sidecars]
    # Likewise NPZ archives that hold no scan arrays (calibration profiles).
    files = [f for f in files if f.suffix.lower() != ".npz" or arrays.holds_scan(f)]
    series: dict[str, list[Path]] = defaultdict(list)
    singles: list[Path] = []
    for f in files:
        if f in claimed or not (f.is_file() or (f.is_symlink() and not f.exists())):
            continue
        uid = dicom.ct_slice_series(f)
        (series[uid] if uid else singles).append(f)
    for uid, members in series.items():
        if len(members) == 1:
            singles.extend(members)
        else:
            yield ScanSource(folder, tuple(members))
    for f in sorted(singles):
        yield ScanSource(f)


def _data_file_of(sidecar: Path) -> Path | None:
    # A sidecar whose data file is missing is still yielded, and refused
    # with its reason when read; the walk itself never fails.
    try:
        return raw.sidecar_data_file(sidecar)
    except ScanReadError:
        return None


def _is_sidecar(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    try:
        return path.stat().st_size < 1_000_000 and raw.is_raw_sidecar(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False


def write_scan(scan: Scan, path: str | os.PathLike, *, format: ScanFormat | str | None = None) -> None:
    """Write ``scan`` to ``path`` in ``format`` (default: from the suffix).

    ``.dcm`` writes DICOS (DX for processing, secondary capture for
    pseudo-colour, multi-frame CT); ``format="dicom_series"`` writes a folder
    of CT slices.

    Raises
    ------
    ValueError
        Unknown format, or a scan the format cannot hold.
    """
    if format is None:
        suffix = Path(path).suffix.lower()
        if suffix not in _SUFFIX_FORMAT:
            raise ValueError(f"cannot tell the format from suffix {suffix!r}; pass format= one of "
                             f"{', '.join(f.value for f in ScanFormat)}")
        format = _SUFFIX_FORMAT[suffix]
    try:
        fmt = ScanFormat(format)
    except ValueError:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(f.value for f in ScanFormat)}") from None
    _WRITERS[fmt](scan, path)
