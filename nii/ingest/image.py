"""Image files: PNG, JPEG and TIFF, 8 or 16 bit, 1 or 2 channels, or RGB.

What vendor consoles archive (and every public baggage X-ray data set) is
8-bit pseudo-colour JPEG or PNG; detector exports are 16-bit grey TIFF or
PNG, with a dual-energy pair as two channels (low first).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import png
import tifffile
from PIL import Image

from nii.ingest.arrays import scan_from_array
from nii.ingest.errors import CorruptScanError, ScanTooLargeError, UnsupportedScanError, refuse_on_error
from nii.ingest.limits import ReadLimits, check_pixel_budget
from nii.scan import Scan, ScanFormat, ScanKind

__all__ = ["encode_image", "read_png", "read_jpeg", "read_tiff", "write_png", "write_jpeg", "write_tiff"]

_PNG_GREY_ALPHA = 4  # PNG IHDR colour type for grey + alpha: our dual pair


def _header_size(data: bytes, limits: ReadLimits) -> tuple[int, int, int]:
    """(rows, cols, bands) from the header alone, checked against the budget."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            cols, rows = image.size
            bands = len(image.getbands())
    except Image.DecompressionBombError as exc:
        raise ScanTooLargeError(f"header claims an image over the pixel budget ({exc})") from None
    check_pixel_budget((rows, cols, bands), limits)
    return rows, cols, bands


def _decode(data: bytes) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("the image data cannot be decoded")
    return array


def _rgb_or_grey(array: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) to RGB; a colour image whose channels are equal is grey."""
    if array.ndim == 2:
        return array
    rgb = cv2.cvtColor(array[..., :3], cv2.COLOR_BGR2RGB)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    if rgb.dtype != np.uint8:
        raise UnsupportedScanError(f"{rgb.dtype} colour images are not pseudo-colour renderings (8-bit RGB)")
    return rgb


def read_png(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read a PNG: grey (single energy), grey + alpha (dual energy) or RGB.

    Raises
    ------
    ScanReadError
        Corrupt, truncated, over budget or unsupported (16-bit colour).
    """
    with refuse_on_error("PNG", str(path)):
        data = Path(path).read_bytes()
        _header_size(data, limits)
        # A PNG ends with its IEND chunk. Refused here, a cut-off file gets our
        # one line instead of libpng's own error line on stderr before it.
        if b"IEND" not in data[-1024:]:
            raise CorruptScanError("PNG is truncated (no IEND chunk at its end)")
        array = _decode(data)
        # IHDR is always the first chunk; its colour type is byte 25.
        colour_type = data[25] if len(data) > 25 else None
        if colour_type == _PNG_GREY_ALPHA:
            # OpenCV expands grey + alpha to BGRA; the pair is (grey, alpha).
            array = np.stack([array[..., 0], array[..., 3]])
        else:
            array = _rgb_or_grey(array)
        return scan_from_array(array, source_format=ScanFormat.PNG, source_path=str(path))


def read_jpeg(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read an 8-bit JPEG: grey (single energy) or pseudo-colour RGB.

    Decoded with Pillow, which refuses a truncated stream where OpenCV would
    quietly fill the missing rows with grey.

    Raises
    ------
    ScanReadError
        Corrupt, truncated or over budget.
    """
    with refuse_on_error("JPEG", str(path)):
        data = Path(path).read_bytes()
        _header_size(data, limits)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            array = np.asarray(image if image.mode == "L" else image.convert("RGB"))
        if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
            array = np.ascontiguousarray(array[..., 0])
        return scan_from_array(array, source_format=ScanFormat.JPEG, source_path=str(path))


def read_tiff(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read a TIFF: grey, a two-channel pair, RGB, or a stack of CT slices.

    A TIFF written by :func:`write_tiff` carries the scan header in its
    ImageDescription and round-trips whole; others are classified by shape
    (see :func:`nii.ingest.arrays.infer_kind`).

    Raises
    ------
    ScanReadError
        Corrupt, truncated, over budget, NaN/inf, or an unsupported layout.
    """
    with refuse_on_error("TIFF", str(path)), tifffile.TiffFile(path) as tiff:
        if not tiff.series:
            raise UnsupportedScanError("TIFF holds no image")
        series = tiff.series[0]
        check_pixel_budget(series.shape, limits)
        array = series.asarray()
        described = tiff.shaped_metadata[0] if tiff.shaped_metadata else {}
        header = described.get("nii") if isinstance(described, dict) else None
        return scan_from_array(array, header=header, source_format=ScanFormat.TIFF, source_path=str(path))


def _require_integer(scan: Scan, what: str) -> np.ndarray:
    counts = np.asarray(scan.counts)
    if counts.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{what} stores 8- or 16-bit unsigned counts; got {counts.dtype}")
    return counts


def write_png(scan: Scan, path: str | os.PathLike) -> None:
    """Write a 2D scan as PNG (pixels only; the id becomes the content hash).

    Raises
    ------
    ValueError
        For CT volumes, or counts that are not uint8/uint16.
    """
    counts = _require_integer(scan, "PNG")
    if scan.kind is ScanKind.DUAL_ENERGY:
        rows, cols = scan.spatial_shape
        grey_alpha = np.stack([counts[0], counts[1]], axis=-1).reshape(rows, cols * 2)
        writer = png.Writer(cols, rows, greyscale=True, alpha=True, bitdepth=counts.dtype.itemsize * 8)
        with open(path, "wb") as fp:
            writer.write_array(fp, grey_alpha.ravel())
        return
    if scan.kind is ScanKind.CT_VOLUME:
        raise ValueError("PNG holds one 2D image; write CT volumes as DICOS, TIFF or NPZ")
    _imwrite(path, ".png", counts, [])


def write_jpeg(scan: Scan, path: str | os.PathLike, *, quality: int = 95) -> None:
    """Write an 8-bit grey or pseudo-colour scan as JPEG (lossy).

    Raises
    ------
    ValueError
        For other kinds or non-uint8 counts.
    """
    counts = np.asarray(scan.counts)
    if scan.kind not in (ScanKind.SINGLE_ENERGY, ScanKind.PSEUDO_COLOUR) or counts.dtype != np.uint8:
        raise ValueError(f"JPEG holds 8-bit grey or RGB images; got {scan.kind.value} {counts.dtype}")
    _imwrite(path, ".jpg", counts, [cv2.IMWRITE_JPEG_QUALITY, quality])


def encode_image(pixels: np.ndarray, ext: str = ".png", params: Sequence[int] = ()) -> bytes:
    """Grey or RGB pixels as the bytes of a ``.png`` or ``.jpg`` file.

    Files are written by Python, never by ``cv2.imwrite``: that returns only
    False on failure, and crashes the process on a path that is not UTF-8.

    Raises
    ------
    ValueError
        OpenCV could not encode the pixels.
    """
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, encoded = cv2.imencode(ext, bgr, list(params))
    if not ok:
        raise ValueError(f"OpenCV could not encode {ext}")
    return encoded.tobytes()


def _imwrite(path: str | os.PathLike, ext: str, counts: np.ndarray, params: list[int]) -> None:
    Path(path).write_bytes(encode_image(counts, ext, params))


def write_tiff(scan: Scan, path: str | os.PathLike) -> None:
    """Write any scan as TIFF with its header, so it round-trips whole."""
    photometric = "rgb" if scan.kind is ScanKind.PSEUDO_COLOUR else "minisblack"
    tifffile.imwrite(path, np.asarray(scan.counts), photometric=photometric, metadata={"nii": scan.header()})

