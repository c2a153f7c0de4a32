"""Tell a file's format from its first bytes, never from its name."""

from __future__ import annotations

import os
from pathlib import Path

from nii.ingest.errors import CorruptScanError, UnsupportedScanError
from nii.ingest.raw import MAX_SIDECAR_BYTES, find_sidecar, is_raw_sidecar
from nii.scan import ScanFormat

__all__ = ["detect_format"]

_MAGIC: tuple[tuple[bytes, ScanFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ScanFormat.PNG),
    (b"\xff\xd8\xff", ScanFormat.JPEG),
    (b"II*\x00", ScanFormat.TIFF),
    (b"MM\x00*", ScanFormat.TIFF),
    (b"II+\x00", ScanFormat.TIFF),  # BigTIFF
    (b"MM\x00+", ScanFormat.TIFF),
    (b"\x93NUMPY", ScanFormat.NPY),
    (b"PK\x03\x04", ScanFormat.NPZ),
)
# DICOM written without the 128-byte preamble starts with a group 0002
# (file meta) or 0008 (identifying) tag, little or big endian.
_DICOM_NO_PREAMBLE = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
_HEAD_BYTES = 4096


def detect_format(path: str | os.PathLike) -> ScanFormat:
    """Return the format of the file at ``path`` from its content.

    DICOM and DICOS share a container, so both give ``ScanFormat.DICOM``
    here; the reader tells them apart by SOP class. A raw dump is recognised
    by its JSON sidecar (given directly, or found beside the data file).

    Raises
    ------
    CorruptScanError
        If the file is empty.
    UnsupportedScanError
        If the content is none of the supported formats.
    """
    path = Path(path)
    with open(path, "rb") as fp:
        head = fp.read(_HEAD_BYTES)
    if not head:
        raise CorruptScanError("file is empty", path=str(path))
    if head[128:132] == b"DICM":
        return ScanFormat.DICOM
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head.lstrip()[:1] == b"{":
        # A sidecar can outgrow the head (a cargo manifest's goods list), so
        # JSON is read whole, up to the size a sidecar may have.
        with open(path, "rb") as fp:
            text = fp.read(MAX_SIDECAR_BYTES + 1)
        if len(text) > MAX_SIDECAR_BYTES:
            raise UnsupportedScanError(f"JSON file is over {MAX_SIDECAR_BYTES:,} bytes: too large for a raw sidecar",
                                       path=str(path))
        if is_raw_sidecar(text.decode("utf-8", "replace")):
            return ScanFormat.RAW
        raise UnsupportedScanError("JSON file is not a raw sidecar (needs width and height)", path=str(path))
    if find_sidecar(path) is not None:
        return ScanFormat.RAW
    if head[:2] in _DICOM_NO_PREAMBLE and len(head) >= 8:
        return ScanFormat.DICOM
    raise UnsupportedScanError(
        "unrecognised content: not DICOM/DICOS, PNG, JPEG, TIFF, NPY/NPZ, or raw with a JSON sidecar",
        path=str(path),
    )
