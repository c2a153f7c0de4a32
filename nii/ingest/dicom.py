"""Read and write DICOM and DICOS (NEMA IIC 1) scans with pydicom.

What is read, and what it becomes:

===============================================  ================================
SOP class                                        :class:`~nii.scan.ScanKind`
===============================================  ================================
DICOS CT, CT, Enhanced CT, Legacy Converted CT   ``ct_volume`` (stored values)
DICOS DX (for processing / presentation), DX,    ``single_energy`` (monochrome),
CR, secondary capture (single and multi-frame)   ``pseudo_colour`` (8-bit colour),
                                                 ``dual_energy`` (two frames
                                                 labelled ``LOW`` and ``HIGH``)
===============================================  ================================

Everything else (MR, US, RT, SR, DICOS threat reports, ...) is refused with
:class:`~nii.ingest.errors.UnsupportedScanError`. Pixel values are returned as
stored: no rescale, no VOI LUT, MONOCHROME1 is not inverted, because a scan is
what the scanner measured and calibration happens downstream.

Readers check the header against :class:`~nii.ingest.limits.ReadLimits`
before any pixel data is read, and raise nothing but
:class:`~nii.ingest.errors.ScanReadError` subclasses.

Writers produce Part 10 files (preamble, file meta, Explicit VR Little
Endian): DICOS Digital X-Ray for processing for single- and dual-energy
scans, DICOS CT (one multi-frame object) for volumes, Secondary Capture for
pseudo-colour images, and a folder of plain CT slices with
:func:`write_dicom_series`. ``scan.metadata`` travels as JSON in a private
block (creator ``"nii"``, group 0x0011), so a scan round-trips whole.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime, time
from typing import Any, NamedTuple

import numpy as np
import pydicom
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.tag import Tag
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DA, DT, TM

from nii.ingest.errors import CorruptScanError, ScanReadError, UnsupportedScanError, refuse_on_error
from nii.ingest.limits import ReadLimits, check_pixel_budget
from nii.scan import Scan, ScanFormat, ScanKind

__all__ = ["read_dicom", "read_dicom_series", "write_dicom", "write_dicom_series", "ct_slice_series"]

# -- SOP classes -------------------------------------------------------------

_DICOS_ROOT = "1.2.840.10008.5.1.4.1.1.501"

# CT objects whose pixel data is a stack of axial slices.
_CT_CLASSES = frozenset(
    {
        dcmuid.DICOSCTImageStorage,
        dcmuid.CTImageStorage,
        dcmuid.EnhancedCTImageStorage,
        dcmuid.LegacyConvertedEnhancedCTImageStorage,
    }
)
# Single-file CT objects that hold one slice each: what a slice folder holds.
_SLICE_CLASSES = frozenset({dcmuid.DICOSCTImageStorage, dcmuid.CTImageStorage})
# Projection radiographs and screen captures: one 2D image per object.
_PROJECTION_CLASSES = frozenset(
    {
        dcmuid.DICOSDigitalXRayImageStorageForProcessing,
        dcmuid.DICOSDigitalXRayImageStorageForPresentation,
        dcmuid.DigitalXRayImageStorageForPresentation,
        dcmuid.DigitalXRayImageStorageForProcessing,
        dcmuid.ComputedRadiographyImageStorage,
        dcmuid.SecondaryCaptureImageStorage,
        dcmuid.MultiFrameSingleBitSecondaryCaptureImageStorage,
        dcmuid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        dcmuid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        dcmuid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    }
)
#: Every SOP class :func:`read_dicom` reads, CT first (what the C-STORE SCP accepts).
READABLE_SOP_CLASSES: tuple[str, ...] = tuple(sorted(_CT_CLASSES)) + tuple(sorted(_PROJECTION_CLASSES))
_SUPPORTED = "nii reads DICOS CT/DX and DICOM CT, DX, CR, secondary capture"

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Colour encodings pydicom (or the JPEG codec) turns into RGB when decoding.
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420", "YBR_PARTIAL_422")

# Dual-energy frames are labelled "LOW ..." / "HIGH ...", optionally with the
# nominal tube voltage ("LOW 80kV"): Frame Label Vector is the standard's
# per-frame free text, pointed at by Frame Increment Pointer.
_FRAME_LABEL_VECTOR = Tag(0x0018, 0x2002)
_KV_IN_LABEL = re.compile(r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*kV", re.IGNORECASE)

# scan.metadata keys that have a DICOS attribute of their own (Itinerary module).
_DICOS_METADATA = {"itinerary_id": "ItineraryID", "carrier_id": "CarrierID"}
# The rest of scan.metadata is JSON in a private block; see _restore_metadata.
_PRIVATE_GROUP = 0x0011
_PRIVATE_CREATOR = "nii"
_PRIVATE_METADATA = 0x01

# Attributes that Enhanced CT (and DICOS CT) move into functional-group macros.
_FUNCTIONAL_MACRO = {
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "SpacingBetweenSlices": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
}

_MAX_SIDE = 65_535  # Rows and Columns are US

# DICOS DX comes in two SOP classes, by what the pixels are meant for.
_DX_INTENT = {
    "processing": dcmuid.DICOSDigitalXRayImageStorageForProcessing,
    "presentation": dcmuid.DICOSDigitalXRayImageStorageForPresentation,
}


class _Layout(NamedTuple):
    """What a header says the pixel data is, decided before decoding it."""

    kind: ScanKind
    frames: int
    rows: int
    cols: int
    samples: int
    frame_order: tuple[int, ...] = ()  # dual energy: indices of low, high
    energies_kv: tuple[float, ...] = ()


# -- reading -----------------------------------------------------------------


def read_dicom(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read one DICOM or DICOS file into a :class:`~nii.scan.Scan`.

    The header is read and checked first (SOP class, image layout, transfer
    syntax, pixel budget); only then is the file read whole and its pixel
    data decoded.

    Parameters
    ----------
    path : str or os.PathLike
        A Part 10 file, or a bare dataset without preamble and file meta.
    limits : ReadLimits, optional
        Pixel budget checked against the header before decoding.

    Returns
    -------
    Scan
        Counts as stored (see the module docstring), ``scan_id`` = SOP
        Instance UID, ``source_format`` DICOS for DICOS SOP classes, DICOM
        otherwise.

    Raises
    ------
    UnsupportedScanError
        For a SOP class, photometric interpretation, bit depth, frame layout
        or transfer syntax this reader does not handle.
    ScanTooLargeError
        If the header claims more pixels than ``limits`` allow.
    CorruptScanError
        For anything else: not DICOM, truncated, inconsistent, NaN/inf.
    """
    where = str(path)
    with refuse_on_error("DICOM", where):
        header = _read_dataset(path, header_only=True)
        layout = _layout(header)
        _decoder_for(header)
        check_pixel_budget((layout.frames, layout.rows, layout.cols, layout.samples), limits)
        ds = _read_dataset(path, header_only=False)
        if _layout(ds) != layout:
            # The budget was checked against the first read; never trust a second one blindly.
            raise CorruptScanError("file changed while it was being read")
        counts = _arrange(_decode(ds, layout), layout)
        if layout.kind is ScanKind.CT_VOLUME:
            spacing = _ct_spacing(ds, _slice_step(ds))
        else:
            spacing = _projection_spacing(ds)
        sop_class = str(ds.SOPClassUID)
        return Scan(
            counts=counts,
            kind=layout.kind,
            spacing_mm=spacing,
            # Kilovoltage Peak is one value: it can only describe a single-energy scan.
            energies_kv=layout.energies_kv if layout.kind is ScanKind.DUAL_ENERGY else _kvp(ds),
            scan_id=str(ds.get("SOPInstanceUID", "") or ""),
            source_format=ScanFormat.DICOS if sop_class.startswith(_DICOS_ROOT) else ScanFormat.DICOM,
            source_path=where,
            **_descriptive_fields(ds),
        )


def read_dicom_series(paths: Sequence[str | os.PathLike], *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read a folder's worth of single-slice CT files as one volume.

    Slices are ordered by their position along the slice normal (Image
    Position (Patient) projected on the normal of Image Orientation
    (Patient); the z coordinate for axial slices), or by Instance Number
    where no slice has a position.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        The slice files, in any order; all must belong to one series.
    limits : ReadLimits, optional
        Pixel budget checked against ``(slices, rows, cols)`` before any
        pixel data is decoded.

    Returns
    -------
    Scan
        A ``ct_volume`` scan. ``scan_id`` is the Series Instance UID: a volume
        made of many instances has no single SOP Instance UID.
        ``source_path`` is the folder holding the slices, ``spacing_mm`` is
        (median slice step or Slice Thickness, Pixel Spacing row, column).

    Raises
    ------
    CorruptScanError
        If no paths are given, slices come from different series or disagree
        on geometry or encoding, a slice has no position, two slices share a
        position, or the positions leave a gap (a missing slice file).
    UnsupportedScanError, ScanTooLargeError
        As :func:`read_dicom`, for any one slice or for the volume.
    """
    files = [str(p) for p in paths]
    if not files:
        raise CorruptScanError("DICOM series: no slice files given")
    # Relative paths stay relative, so source_path reads as the user gave it.
    absolute = {os.path.isabs(f) for f in files}
    dirs = [os.path.dirname(os.path.abspath(f) if len(absolute) > 1 else f) for f in files]
    folder = os.path.commonpath(dirs) or "."
    headers = [_read_slice_header(f) for f in files]
    with refuse_on_error("DICOM series", folder):
        _check_same_series(headers, files)
        order, step = _slice_order(headers, files)
        first = headers[order[0]]
        rows, cols = int(first.Rows), int(first.Columns)
        check_pixel_budget((len(files), rows, cols), limits)
    volume = None
    for n, i in enumerate(order):
        with refuse_on_error("DICOM", files[i]):
            ds = _read_dataset(files[i], header_only=False)
            layout = _layout(ds)
            if (layout.frames, layout.rows, layout.cols, layout.samples) != (1, rows, cols, 1):
                raise CorruptScanError("slice changed while it was being read")
            pixels = _arrange(_decode(ds, layout), layout)[0]
            if volume is None:
                volume = np.empty((len(files), rows, cols), dtype=pixels.dtype)
            volume[n] = pixels
    with refuse_on_error("DICOM series", folder):
        return Scan(
            counts=volume,
            kind=ScanKind.CT_VOLUME,
            spacing_mm=_ct_spacing(first, step or _slice_step(first)),
            energies_kv=_kvp(first),
            scan_id=str(first.get("SeriesInstanceUID", "") or ""),
            source_format=ScanFormat.DICOM_SERIES,
            source_path=folder,
            **_descriptive_fields(first),
        )


def ct_slice_series(path: str | os.PathLike) -> str | None:
    """The Series Instance UID of a file that is one CT slice, else None.

    Reads the header only. The folder walker groups files with the same
    answer into one volume.

    Parameters
    ----------
    path : str or os.PathLike
        Any file.

    Returns
    -------
    str or None
        The series UID for a single-frame CT Image Storage or DICOS CT
        object; None for anything else, including unreadable files.
    """
    try:
        ds = _read_dataset(path, header_only=True, tags=("SOPClassUID", "Modality", "NumberOfFrames",
                                                         "SeriesInstanceUID"))
        if ds.get("SOPClassUID") not in _SLICE_CLASSES or _frame_count(ds) != 1:
            return None
        return str(ds.get("SeriesInstanceUID", "") or "") or None
    except Exception:  # noqa: BLE001 - a probe: anything unreadable is simply not a slice
        return None


def _read_dataset(path: str | os.PathLike, *, header_only: bool, tags: Iterable[str] | None = None) -> Dataset:
    """Read a dataset, falling back to a forced read for files without meta."""
    options: dict[str, Any] = {"stop_before_pixels": header_only}
    if tags is not None:
        options["specific_tags"] = list(tags)
    try:
        ds = pydicom.dcmread(path, **options)
    except InvalidDicomError:
        # No preamble or no "DICM": an older export that is a bare dataset.
        # A forced read parses any bytes as *something*, so judge the result.
        ds = pydicom.dcmread(path, force=True, **options)
        if not any(keyword in ds for keyword in ("SOPClassUID", "Modality", "PixelData")):
            raise CorruptScanError("not a DICOM file") from None
    return ds


def _read_slice_header(path: str) -> Dataset:
    """Header of one file of a slice folder, refused unless it is a CT slice."""
    with refuse_on_error("DICOM", path):
        ds = _read_dataset(path, header_only=True)
        layout = _layout(ds)
        if ds.SOPClassUID not in _SLICE_CLASSES or layout.frames != 1:
            raise UnsupportedScanError(
                f"{ds.SOPClassUID.name} with {layout.frames} frame(s) is not a single CT slice"
            )
        _decoder_for(ds)
        return ds


def _layout(ds: Dataset) -> _Layout:
    """Decide from the header what the pixel data is, or refuse it."""
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        raise CorruptScanError("not a DICOM image: no SOP Class UID (0008,0016)")
    sop_class = UID(str(sop_class))
    if sop_class not in _CT_CLASSES and sop_class not in _PROJECTION_CLASSES:
        modality = str(ds.get("Modality", "") or "none")
        raise UnsupportedScanError(f"unsupported SOP class {sop_class.name} (modality {modality}); {_SUPPORTED}")
    rows, cols = _required_int(ds, "Rows"), _required_int(ds, "Columns")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = _frame_count(ds)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    what = f"{sop_class.name} with {samples} sample(s) per pixel, {photometric or 'no'} photometric interpretation"
    if samples == 1 and photometric in _MONOCHROME:
        if sop_class in _CT_CLASSES:
            return _Layout(ScanKind.CT_VOLUME, frames, rows, cols, 1)
        if frames == 1:
            return _Layout(ScanKind.SINGLE_ENERGY, 1, rows, cols, 1)
        dual = _dual_energy_frames(ds) if frames == 2 else None
        if dual is None:
            raise UnsupportedScanError(f"multi-frame {what} and {frames} frames is not a dual-energy pair")
        order, energies = dual
        return _Layout(ScanKind.DUAL_ENERGY, 2, rows, cols, 1, order, energies)
    if samples == 3 and photometric in _COLOUR and sop_class in _PROJECTION_CLASSES:
        bits = _required_int(ds, "BitsAllocated")
        if bits != 8:
            raise UnsupportedScanError(f"{bits}-bit colour ({what}); only 8-bit RGB is read as pseudo-colour")
        if frames != 1:
            raise UnsupportedScanError(f"multi-frame {what} and {frames} frames is not a dual-energy pair")
        return _Layout(ScanKind.PSEUDO_COLOUR, 1, rows, cols, 3)
    raise UnsupportedScanError(f"unsupported image encoding: {what}")


def _dual_energy_frames(ds: Dataset) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """Frame indices (low, high) and their kV from Frame Label Vector, if dual energy."""
    labels = [str(v).strip().upper() for v in _as_list(ds.get("FrameLabelVector"))]
    if len(labels) != 2:
        return None
    low = [i for i, label in enumerate(labels) if label.startswith("LOW")]
    high = [i for i, label in enumerate(labels) if label.startswith("HIGH")]
    if len(low) != 1 or len(high) != 1:
        return None
    order = (low[0], high[0])
    energies = tuple(_label_kv(labels[i]) for i in order)
    return order, (energies if all(e is not None and e > 0 for e in energies) else ())


def _label_kv(label: str) -> float | None:
    match = _KV_IN_LABEL.search(label)
    return float(match.group(1)) if match else None


def _transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax, inferred from its encoding when the meta has none."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax:
        return UID(str(tsyntax))
    # Bare datasets (no file meta) can only be uncompressed: name what was parsed.
    implicit, little = ds.original_encoding
    if implicit:
        return dcmuid.ImplicitVRLittleEndian
    return dcmuid.ExplicitVRLittleEndian if little else dcmuid.ExplicitVRBigEndian


def _decoder_for(ds: Dataset) -> Decoder:
    """pydicom's decoder for the dataset's transfer syntax, refused if none is installed."""
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedScanError(f"transfer syntax {tsyntax.name} has no pixel data decoder") from None
    if not decoder.is_available:
        raise UnsupportedScanError(f"no decoder installed for transfer syntax {tsyntax.name}")
    return decoder


def _decode(ds: Dataset, layout: _Layout) -> np.ndarray:
    """Decode pixel data to ``(frames, rows, cols, samples)``, native byte order, RGB."""
    if not any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise CorruptScanError("no pixel data")
    tsyntax = _transfer_syntax(ds)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # pydicom decodes only with a named transfer syntax; give bare datasets theirs.
        ds.file_meta = FileMetaDataset(getattr(ds, "file_meta", Dataset()))
        ds.file_meta.TransferSyntaxUID = tsyntax
    try:
        pixels, properties = _decoder_for(ds).as_array(ds)
    except ScanReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - classify the codec's failure
        if tsyntax.is_compressed and "does not support" in str(exc):
            # The codecs name what they lack (e.g. 12-bit JPEG Extended).
            raise UnsupportedScanError(f"cannot decode {tsyntax.name} pixel data: {exc}") from None
        raise CorruptScanError(f"cannot decode {tsyntax.name} pixel data: {exc}") from None
    photometric = str(properties.get("photometric_interpretation", "")).upper()
    if layout.samples == 3 and photometric in ("YBR_FULL", "YBR_FULL_422"):
        pixels = convert_color_space(pixels, photometric, "RGB")
    elif layout.samples == 3 and photometric != "RGB":
        raise UnsupportedScanError(f"colour pixel data decoded as {photometric}, not RGB")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise CorruptScanError("floating-point pixel data holds NaN or inf")
    pixels = pixels.reshape(layout.frames, layout.rows, layout.cols, layout.samples)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def _arrange(pixels: np.ndarray, layout: _Layout) -> np.ndarray:
    """``(frames, rows, cols, samples)`` pixels in the layout :class:`~nii.scan.Scan` wants."""
    if layout.kind is ScanKind.DUAL_ENERGY:
        return pixels[list(layout.frame_order), ..., 0]  # fancy indexing: a contiguous copy
    if layout.kind is ScanKind.PSEUDO_COLOUR:
        return pixels[0]
    if layout.kind is ScanKind.SINGLE_ENERGY:
        return np.ascontiguousarray(pixels[0, ..., 0])
    return np.ascontiguousarray(pixels[..., 0])


def _check_same_series(headers: Sequence[Dataset], files: Sequence[str]) -> None:
    """Refuse a slice set that does not stack into one volume."""

    def signature(ds: Dataset) -> dict[str, Any]:
        return {
            "Series Instance UID": str(ds.get("SeriesInstanceUID", "")),
            "Rows": int(ds.Rows),
            "Columns": int(ds.Columns),
            "Bits Allocated": ds.get("BitsAllocated"),
            "Pixel Representation": ds.get("PixelRepresentation"),
            "Pixel Spacing": _positive_floats(_lookup(ds, "PixelSpacing"), 2),
            # One rescale serves the whole volume, so every slice must share it.
            "Rescale Slope/Intercept": _rescale(ds),
        }

    expected = signature(headers[0])
    for ds, path in zip(headers[1:], files[1:]):
        for name, value in signature(ds).items():
            if value != expected[name]:
                raise CorruptScanError(
                    f"slices are not one volume: {name} is {expected[name]} in {files[0]} but {value} in {path}"
                )


def _slice_order(headers: Sequence[Dataset], files: Sequence[str]) -> tuple[list[int], float | None]:
    """Indices of the slices in stacking order, and the slice step in mm if known."""
    positions = [_slice_position(ds) for ds in headers]
    if all(p is not None for p in positions):
        order = sorted(range(len(headers)), key=lambda i: positions[i])
        steps = [positions[b] - positions[a] for a, b in zip(order, order[1:])]
        if any(s <= 0 for s in steps):
            raise CorruptScanError("two slices share one Image Position (Patient)")
        if not steps:
            return order, None
        step = statistics.median(steps)
        if max(steps) > 1.5 * step:
            # A hole in a screening volume is a place nobody looked at.
            raise CorruptScanError(f"slice positions leave a gap of {max(steps):g} mm (step {step:g} mm): a slice is missing")
        return order, step
    numbers = [ds.get("InstanceNumber") for ds in headers]
    missing = [files[i] for i, (p, n) in enumerate(zip(positions, numbers)) if p is None and n in (None, "")]
    if missing:
        raise CorruptScanError(f"slice {missing[0]} has neither Image Position (Patient) nor Instance Number")
    if len({int(n) for n in numbers}) != len(numbers):
        raise CorruptScanError("slices without positions repeat an Instance Number")
    return sorted(range(len(headers)), key=lambda i: int(numbers[i])), None


def _slice_position(ds: Dataset) -> float | None:
    """Distance of a slice along its normal, from Image Position/Orientation (Patient)."""
    position = _floats(ds.get("ImagePositionPatient"), 3)
    if position is None:
        return None
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if orientation is None:
        return position[2]
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(normal, position))


def _descriptive_fields(ds: Dataset) -> dict[str, Any]:
    """The Scan fields every reader takes from a header the same way."""
    bits = ds.get("BitsStored")
    return {
        "modality": str(ds.get("Modality", "") or "").strip(),
        "scanner_id": _text(ds, "DeviceSerialNumber") or _text(ds, "StationName"),
        "acquired_at": _acquired_at(ds),
        "metadata": _restore_metadata(ds),
        "bits_stored": int(bits) if bits not in (None, "") else None,
        "rescale": _rescale(ds),
    }


def _ct_spacing(ds: Dataset, slice_mm: float | None) -> tuple[float, float, float] | None:
    pixel = _positive_floats(_lookup(ds, "PixelSpacing"), 2)
    return None if pixel is None else (slice_mm or 1.0, *pixel)


def _slice_step(ds: Dataset) -> float | None:
    """Centre-to-centre slice distance from the header, if it says."""
    # Spacing Between Slices is the centre-to-centre distance the array axis
    # needs; Slice Thickness only equals it for contiguous slices.
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _positive_floats(_lookup(ds, keyword), 1)
        if value is not None:
            return value[0]
    return None


def _projection_spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = _positive_floats(ds.get(keyword), 2)
        if value is not None:
            return value
    return None


def _rescale(ds: Dataset) -> tuple[float, float]:
    slope, intercept = _lookup(ds, "RescaleSlope"), _lookup(ds, "RescaleIntercept")
    values = (float(slope) if slope not in (None, "") else 1.0, float(intercept) if intercept not in (None, "") else 0.0)
    if not all(np.isfinite(values)) or values[0] == 0:
        raise CorruptScanError(f"Rescale Slope/Intercept {values} is not a usable linear map")
    return values


def _kvp(ds: Dataset) -> tuple[float, ...]:
    try:
        kvp = float(ds.get("KVP") or 0)
    except (TypeError, ValueError):
        return ()
    return (kvp,) if np.isfinite(kvp) and kvp > 0 else ()


def _acquired_at(ds: Dataset) -> datetime | None:
    """Acquisition time as a naive (scanner-local) datetime, None if absent or invalid."""
    stamp = ds.get("AcquisitionDateTime")
    if stamp:
        try:
            value = DT(str(stamp))
            # DICOM dates and times are local to the scanner; a zone offset, if
            # any, is dropped so every reader returns comparable naive times.
            return datetime.combine(value.date(), value.time())
        except (TypeError, ValueError, OverflowError):
            pass  # an invalid value is no timestamp; try the next source
    for day_keyword, clock_keyword in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime")):
        day, clock = ds.get(day_keyword), ds.get(clock_keyword)
        if not day:
            continue
        try:
            return datetime.combine(DA(str(day)), TM(str(clock)) if clock else time())
        except (TypeError, ValueError, OverflowError):
            continue
    return None


def _restore_metadata(ds: Dataset) -> dict[str, Any]:
    """scan.metadata from DICOS Itinerary attributes and the private JSON block."""
    metadata: dict[str, Any] = {key: _text(ds, keyword) for key, keyword in _DICOS_METADATA.items() if _text(ds, keyword)}
    try:
        block = ds.private_block(_PRIVATE_GROUP, _PRIVATE_CREATOR)
    except KeyError:
        return metadata
    if _PRIVATE_METADATA not in block:
        return metadata
    value = block[_PRIVATE_METADATA].value
    # Implicit VR files (and forced reads) deliver unknown private elements as bytes.
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    stored = json.loads(text)
    if not isinstance(stored, dict):
        raise CorruptScanError("nii metadata block (0011,xx01) is not a JSON object")
    metadata.update(stored)  # the JSON is complete; the DICOS attributes are a copy
    return metadata


# -- small header helpers ----------------------------------------------------


def _lookup(ds: Dataset, keyword: str) -> Any:
    """An attribute at the top level, else in the shared or first per-frame functional group."""
    if ds.get(keyword) not in (None, ""):
        return ds.get(keyword)
    macro = _FUNCTIONAL_MACRO.get(keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in list(ds.get(groups) or [])[:1]:
            for inner in list(item.get(macro) or [])[:1] if macro else []:
                if inner.get(keyword) not in (None, ""):
                    return inner.get(keyword)
    return None


def _required_int(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    if value in (None, ""):
        raise CorruptScanError(f"image header has no {keyword}")
    return int(value)


def _frame_count(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return (str(value).strip() or None) if value is not None else None


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else list(value)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite floats from a (multi-)value, or None if it is not that."""
    try:
        values = tuple(float(v) for v in _as_list(value))
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _positive_floats(value: Any, n: int) -> tuple[float, ...] | None:
    # A zero or negative spacing is a broken header field, not a reason to
    # refuse the pixels: treat the spacing as unknown.
    values = _floats(value, n)
    return values if values is not None and all(v > 0 for v in values) else None


# -- writing -----------------------------------------------------------------


def write_dicom(scan: Scan, path: str | os.PathLike, *, intent: str = "processing") -> None:
    """Write a scan as one DICOS or DICOM Part 10 file.

    =====================  ==========================================  ========
    kind                   SOP class                                   Modality
    =====================  ==========================================  ========
    ``single_energy``      DICOS Digital X-Ray, For Processing          DX
    ``dual_energy``        same, two frames labelled ``LOW``/``HIGH``   DX
    ``pseudo_colour``      Secondary Capture, 8-bit RGB                 OT
    ``ct_volume``          DICOS CT, one multi-frame object             CT
    =====================  ==========================================  ========

    Parameters
    ----------
    scan : Scan
        The scan. Its ``scan_id`` becomes the SOP Instance UID when it is a
        valid UID; otherwise a UID derived from it (the same every time).
    path : str or os.PathLike
        Output file; overwritten if it exists.
    intent : {"processing", "presentation"}
        Which DICOS DX SOP class a projection scan gets: raw counts are *for
        processing*; an image already processed for display (what some
        consoles archive) is *for presentation*.

    Raises
    ------
    ValueError
        If ``intent`` is unknown, or the counts cannot be stored losslessly: DX needs 8- or 16-bit
        unsigned counts, CT 16-bit integers, values must fit ``bits_stored``
        and sides 65535 pixels.
    OSError
        If the file cannot be written.
    """
    if intent not in _DX_INTENT:
        raise ValueError(f"intent must be one of {', '.join(_DX_INTENT)}; got {intent!r}")
    if scan.kind is ScanKind.CT_VOLUME:
        ds = _ct_volume_dataset(scan)
    elif scan.kind is ScanKind.PSEUDO_COLOUR:
        ds = _colour_dataset(scan)
    else:
        ds = _projection_dataset(scan, intent)
    ds.save_as(path, enforce_file_format=True)


def write_dicom_series(scan: Scan, folder: str | os.PathLike) -> list[pathlib.Path]:
    """Write a CT volume as a folder of CT Image Storage files, one per slice.

    For archives and viewers that expect classic one-slice-per-file CT.
    :func:`read_dicom_series` on the result gives back the counts, spacing,
    rescale and (for a UID ``scan_id``) the scan id.

    Parameters
    ----------
    scan : Scan
        A ``ct_volume`` scan with 16-bit integer counts.
    folder : str or os.PathLike
        Created if needed. Files are ``slice_0000.dcm``, ``slice_0001.dcm``,
        ...; files already there are left alone, so write into an empty
        folder.

    Returns
    -------
    list of pathlib.Path
        The files written, in slice order.

    Raises
    ------
    ValueError
        If the scan is not a CT volume or its counts cannot be stored.
    OSError
        If a file cannot be written.
    """
    if scan.kind is not ScanKind.CT_VOLUME:
        raise ValueError(f"a DICOM slice series holds a ct_volume scan; got {scan.kind.value}")
    counts = _storable(scan.counts, ("u2", "i2"), "CT stores 16-bit integer stored values")
    series = _uid_for(scan.scan_id)  # read_dicom_series returns the series UID as scan_id
    frame_of_reference = _uid_for(scan.scan_id, "frame of reference")
    step = scan.spacing_mm[0] if scan.spacing_mm else 1.0
    out = pathlib.Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(counts) - 1)))
    written = []
    for index, plane in enumerate(counts):
        ds = _new_dataset(scan, dcmuid.CTImageStorage, _uid_for(scan.scan_id, "slice", str(index)), modality="CT")
        ds.SeriesInstanceUID = series
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = index + 1
        # Type 2 and 2C attributes of CT Image and General Series that have no
        # meaning for a bag: present and empty, as validators (dciodvfy) expect.
        ds.AcquisitionNumber = ds.Laterality = ds.PatientPosition = ""
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, _ds_number(index * step)]
        ds.SliceLocation = _ds_number(index * step)
        _set_ct_geometry(ds, scan)
        _set_pixels(ds, plane, "MONOCHROME2", scan.bits_stored)
        path = out / f"slice_{index:0{width}d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _projection_dataset(scan: Scan, intent: str) -> Dataset:
    counts = _storable(scan.counts, ("u1", "u2"), "DICOS DX stores 8- or 16-bit unsigned counts")
    ds = _new_dataset(scan, _DX_INTENT[intent], _uid_for(scan.scan_id), modality="DX")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = f"FOR {intent.upper()}"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleSlope, ds.RescaleIntercept = (_ds_number(v) for v in scan.rescale)
    ds.RescaleType = "US"  # unspecified: raw detector counts
    if scan.spacing_mm:
        ds.ImagerPixelSpacing = [_ds_number(v) for v in scan.spacing_mm]
    if scan.kind is ScanKind.DUAL_ENERGY:
        kv = scan.energies_kv or (None, None)
        ds.FrameIncrementPointer = _FRAME_LABEL_VECTOR
        ds.FrameLabelVector = [_energy_label(name, v) for name, v in zip(("LOW", "HIGH"), kv)]
    elif scan.energies_kv:
        ds.KVP = _ds_number(scan.energies_kv[0])
    _set_pixels(ds, counts, "MONOCHROME2", scan.bits_stored)
    return ds


def _colour_dataset(scan: Scan) -> Dataset:
    ds = _new_dataset(scan, dcmuid.SecondaryCaptureImageStorage, _uid_for(scan.scan_id), modality="OT")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ConversionType = "WSD"  # workstation: a console's rendered view
    if scan.spacing_mm:
        ds.PixelSpacing = [_ds_number(v) for v in scan.spacing_mm]
    _set_pixels(ds, scan.counts, "RGB", 8)
    return ds


def _ct_volume_dataset(scan: Scan) -> Dataset:
    counts = _storable(scan.counts, ("u2", "i2"), "DICOS CT stores 16-bit integer stored values")
    ds = _new_dataset(scan, dcmuid.DICOSCTImageStorage, _uid_for(scan.scan_id), modality="CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.FrameOfReferenceUID = _uid_for(scan.scan_id, "frame of reference")
    _set_ct_geometry(ds, scan)
    # The same geometry in the functional groups that Enhanced-CT-style
    # readers look in; _lookup reads either place.
    measures = {key: ds[key].value for key in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices") if key in ds}
    shared = dataset_item(
        PixelMeasuresSequence=[dataset_item(**measures)] if measures else None,
        PlaneOrientationSequence=[dataset_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
        PixelValueTransformationSequence=[
            dataset_item(RescaleSlope=ds.RescaleSlope, RescaleIntercept=ds.RescaleIntercept, RescaleType="HU")
        ],
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    step = scan.spacing_mm[0] if scan.spacing_mm else 1.0
    ds.PerFrameFunctionalGroupsSequence = [
        dataset_item(PlanePositionSequence=[dataset_item(ImagePositionPatient=[0, 0, _ds_number(i * step)])])
        for i in range(len(counts))
    ]
    _set_pixels(ds, counts, "MONOCHROME2", scan.bits_stored)  # 3D array: NumberOfFrames even for 1
    return ds


def _new_dataset(scan: Scan, sop_class: UID, instance: UID, *, modality: str) -> Dataset:
    """A dataset with file meta and everything but the image: identity, time, scanner, metadata."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance
    ds.file_meta.TransferSyntaxUID = dcmuid.ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = dcmuid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for non-ASCII itinerary ids
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance
    ds.StudyInstanceUID = _uid_for(scan.scan_id, "study")
    ds.SeriesInstanceUID = _uid_for(scan.scan_id, "series")
    ds.Modality = modality
    # Type 2 identity attributes: DICOS reuses them for the object of
    # inspection (bag, container), which nii identifies by scan id instead.
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
                    "StudyID", "AccessionNumber", "Manufacturer"):
        setattr(ds, keyword, "")
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    when = scan.acquired_at
    ds.StudyDate = ds.ContentDate = when.strftime("%Y%m%d") if when else ""
    ds.StudyTime = ds.ContentTime = when.strftime("%H%M%S.%f") if when else ""
    if when:
        ds.AcquisitionDateTime = DT(when)
    if scan.scanner_id:
        ds.DeviceSerialNumber = scan.scanner_id
    _store_metadata(ds, scan.metadata)
    return ds


def _store_metadata(ds: Dataset, metadata: Any) -> None:
    """All metadata as JSON in the private block; DICOS copies where a key has an attribute."""
    for key, keyword in _DICOS_METADATA.items():
        value = metadata.get(key)
        if isinstance(value, str) and value.strip() == value and value and "\\" not in value:
            setattr(ds, keyword, value)
    if metadata:
        block = ds.private_block(_PRIVATE_GROUP, _PRIVATE_CREATOR, create=True)
        block.add_new(_PRIVATE_METADATA, "UT", json.dumps(dict(metadata), sort_keys=True))


def _set_ct_geometry(ds: Dataset, scan: Scan) -> None:
    ds.RescaleSlope, ds.RescaleIntercept = (_ds_number(v) for v in scan.rescale)
    if scan.spacing_mm:
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds_number(scan.spacing_mm[0])
        ds.PixelSpacing = [_ds_number(v) for v in scan.spacing_mm[1:]]
    # KVP is type 2 in the CT Image module: present, empty when unknown.
    ds.KVP = _ds_number(scan.energies_kv[0]) if scan.energies_kv else ""


def _set_pixels(ds: Dataset, counts: np.ndarray, photometric: str, bits_stored: int | None) -> None:
    """Image Pixel module and Pixel Data, little endian, via pydicom's own checks."""
    if max(counts.shape[-3:] if photometric == "RGB" else counts.shape[-2:]) > _MAX_SIDE:
        raise ValueError(f"DICOM stores at most {_MAX_SIDE} rows and columns; got shape {counts.shape}")
    little = np.ascontiguousarray(counts, dtype=counts.dtype.newbyteorder("<"))
    bits = bits_stored or counts.dtype.itemsize * 8
    # pydicom raises ValueError if bits_stored exceeds the dtype or values exceed bits_stored.
    ds.set_pixel_data(little, photometric, bits, generate_instance_uid=False)


def _storable(counts: np.ndarray, dtypes: tuple[str, ...], rule: str) -> np.ndarray:
    if counts.dtype.kind + str(counts.dtype.itemsize) not in dtypes:
        raise ValueError(f"{rule}; got {counts.dtype}")
    return counts


def _uid_for(scan_id: str, *purpose: str) -> UID:
    """The scan id itself when it is a UID (and no purpose), else a UID derived from it."""
    # Screen out hashes and names first: pydicom warns when building an invalid UID.
    if not purpose and len(scan_id) <= 64 and set(scan_id) <= set("0123456789.") and UID(scan_id).is_valid:
        return UID(scan_id)
    return generate_uid(entropy_srcs=[scan_id, *purpose])


def _energy_label(name: str, kv: float | None) -> str:
    return f"{name} {kv:g}kV" if kv else name


def _ds_number(value: float) -> str:
    """A Decimal String value (at most 16 characters) for a float."""
    text = f"{float(value):.10g}"
    return text if len(text) <= 16 else f"{float(value):.6g}"


def dataset_item(**attributes: Any) -> Dataset:
    """A sequence item from keyword arguments; None values are left out."""
    item = Dataset()
    for keyword, value in attributes.items():
        if value is not None:
            setattr(item, keyword, value)
    return item
