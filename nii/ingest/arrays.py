"""NumPy ``.npy``/``.npz`` scans, and the shape rules shared by array readers."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from nii.ingest.errors import CorruptScanError, UnsupportedScanError, refuse_on_error
from nii.ingest.limits import ReadLimits, check_pixel_budget
from nii.scan import Scan, ScanFormat, ScanKind

__all__ = ["infer_kind", "scan_from_array", "read_npy", "read_npz", "write_npy", "write_npz", "holds_scan"]


def infer_kind(shape: tuple[int, ...], dtype: np.dtype) -> ScanKind:
    """Guess what an unlabelled array holds from its shape.

    ``(rows, cols)`` is single energy; two channels first or last are a
    dual-energy pair (low, high); three 8-bit channels last are a rendered
    pseudo-colour image; any other 3D stack is a CT volume.

    Raises
    ------
    UnsupportedScanError
        For shapes that are none of these.
    """
    if len(shape) == 2:
        return ScanKind.SINGLE_ENERGY
    if len(shape) == 3:
        if shape[0] == 2 or shape[2] == 2:
            return ScanKind.DUAL_ENERGY
        if shape[2] == 3 and dtype == np.uint8:
            return ScanKind.PSEUDO_COLOUR
        return ScanKind.CT_VOLUME
    raise UnsupportedScanError(f"array of shape {shape} is not an image or volume")


def scan_from_array(
    array: np.ndarray,
    *,
    header: Mapping[str, Any] | None = None,
    source_format: ScanFormat,
    source_path: str | None,
) -> Scan:
    """Wrap a decoded array as a :class:`Scan`, refusing what cannot be one.

    Channels-last dual-energy arrays are moved to the ``(2, rows, cols)``
    layout. With a ``header`` (from :meth:`Scan.header`) its kind wins over
    the shape guess.

    Raises
    ------
    CorruptScanError
        NaN or inf in float data, or a header that contradicts the pixels.
    UnsupportedScanError
        Unsupported dtype or shape.
    """
    if array.dtype.kind not in "uif" or array.dtype.itemsize > 8:
        raise UnsupportedScanError(f"pixel dtype {array.dtype} is not integer or float")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise CorruptScanError("float pixel data contains NaN or inf")
    header = dict(header or {})
    kind = ScanKind(header["kind"]) if "kind" in header else infer_kind(array.shape, array.dtype)
    if kind is ScanKind.DUAL_ENERGY and array.ndim == 3 and array.shape[0] != 2 and array.shape[2] == 2:
        array = np.ascontiguousarray(np.moveaxis(array, 2, 0))
    try:
        return Scan.from_header(array, header, kind=kind, source_format=source_format, source_path=source_path)
    except (TypeError, ValueError) as exc:
        raise CorruptScanError(f"the scan header does not fit its pixels or is malformed: {exc}") from None


def _npy_header(fp: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Read an .npy header (shape, dtype) without touching the data."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise UnsupportedScanError(f"NPY format version {version} is not supported (1.0 and 2.0 are)")
    if dtype.hasobject:
        raise UnsupportedScanError("object arrays are refused (they would need pickle)")
    return shape, dtype


def _load_npy(fp: Any, limits: ReadLimits) -> np.ndarray:
    # Zip members are seekable since Python 3.7, so npz entries work too.
    shape, _ = _npy_header(fp)
    check_pixel_budget(shape, limits)
    fp.seek(0)
    return np.lib.format.read_array(fp, allow_pickle=False)


def read_npy(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read a bare ``.npy`` array; its kind is inferred from the shape.

    Raises
    ------
    ScanReadError
        Corrupt or truncated file, pickled objects, over budget, NaN/inf.
    """
    with refuse_on_error("NPY", str(path)), open(path, "rb") as fp:
        array = _load_npy(fp, limits)
        return scan_from_array(array, source_format=ScanFormat.NPY, source_path=str(path))


def read_npz(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read an ``.npz`` scan.

    The archive holds ``counts`` (or ``low`` and ``high``, stacked as a
    dual-energy pair) and optionally ``header``: a JSON string as written by
    :func:`write_npz`.

    Raises
    ------
    ScanReadError
        Missing arrays, corrupt archive, over budget, NaN/inf.
    """
    with refuse_on_error("NPZ", str(path)), zipfile.ZipFile(path) as archive:
        names = {Path(n).stem: n for n in archive.namelist() if n.endswith(".npy")}
        header: dict[str, Any] = {}
        if "header" in names:
            with archive.open(names["header"]) as fp:
                header = json.loads(str(np.lib.format.read_array(fp, allow_pickle=False)))
        if "counts" in names:
            with archive.open(names["counts"]) as fp:
                array = _load_npy(fp, limits)
        elif "low" in names and "high" in names:
            channels = []
            for name in ("low", "high"):
                with archive.open(names[name]) as fp:
                    channels.append(_load_npy(fp, limits))
            if channels[0].shape != channels[1].shape:
                raise CorruptScanError(f"low {channels[0].shape} and high {channels[1].shape} differ in shape")
            array = np.stack(channels)
            header.setdefault("kind", ScanKind.DUAL_ENERGY.value)
        else:
            raise UnsupportedScanError(f"NPZ holds {sorted(names)}; expected 'counts' or 'low' and 'high'")
        return scan_from_array(array, header=header, source_format=ScanFormat.NPZ, source_path=str(path))


def holds_scan(path: str | os.PathLike) -> bool:
    """True if an ``.npz`` holds the arrays :func:`read_npz` reads (or is unreadable,
    so that reading it reports why); False for other archives, such as
    calibration profiles, that sit beside scans."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {Path(n).stem for n in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return True
    return "counts" in names or {"low", "high"} <= names


def write_npy(scan: Scan, path: str | os.PathLike) -> None:
    """Write the counts alone (no header); ids fall back to the content hash."""
    np.save(Path(path), np.asarray(scan.counts), allow_pickle=False)


def write_npz(scan: Scan, path: str | os.PathLike) -> None:
    """Write counts and the scan header, so the scan round-trips whole.

    Stored, not deflated: detector noise leaves raw counts almost
    incompressible (a 1024 x 768 dual-energy bag: 3.1 MB stored, 2.9 MB
    deflated), and inflating cost ~25 ms a read against ~4 ms, which is
    a third of a scan's analysis when batch re-reads an archive.
    """
    with open(path, "wb") as fp:
        np.savez(fp, counts=np.asarray(scan.counts), header=np.array(json.dumps(scan.header())))
