"""The one scan model every pipeline stage takes.

A :class:`Scan` is what a scanner (or an archive) handed us, as read: the raw
detector counts or stored pixel values, never anything derived from them.
Calibration, detection and rendering produce new objects that refer back to
the scan, so any scan can be re-analysed later with a new calibration profile
or model.

Array layout rules (all arrays are C-ordered NumPy arrays, row = belt
direction for line scanners):

=====================  ====================  ==============================
kind                   ``counts.shape``      notes
=====================  ====================  ==============================
``single_energy``      ``(rows, cols)``      counts or transmission
``dual_energy``        ``(2, rows, cols)``   channel 0 = low, 1 = high
``pseudo_colour``      ``(rows, cols, 3)``   uint8 RGB as a console renders
``ct_volume``          ``(slices, rows, cols)``  stored values, see ``rescale``
=====================  ====================  ==============================

Spacing is in millimetres, one value per spatial axis in the same order as
the array axes (``(row, col)`` or ``(slice, row, col)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

__all__ = ["Scan", "ScanKind", "ScanFormat", "content_hash"]


class ScanKind(str, Enum):
    """What the pixel data of a scan represents."""

    SINGLE_ENERGY = "single_energy"
    DUAL_ENERGY = "dual_energy"
    PSEUDO_COLOUR = "pseudo_colour"
    CT_VOLUME = "ct_volume"

    @property
    def spatial_ndim(self) -> int:
        """Number of spatial axes: 3 for CT volumes, 2 otherwise."""
        return 3 if self is ScanKind.CT_VOLUME else 2


class ScanFormat(str, Enum):
    """The container a scan was read from or is written to."""

    DICOS = "dicos"
    DICOM = "dicom"
    DICOM_SERIES = "dicom_series"  # a folder of single-slice CT files
    RAW = "raw"  # line-scanner dump with a JSON sidecar
    TIFF = "tiff"
    PNG = "png"
    JPEG = "jpeg"
    NPY = "npy"
    NPZ = "npz"


# Default DICOM modality for each kind, used where the source names none.
DEFAULT_MODALITY = {
    ScanKind.SINGLE_ENERGY: "DX",
    ScanKind.DUAL_ENERGY: "DX",
    ScanKind.PSEUDO_COLOUR: "OT",
    ScanKind.CT_VOLUME: "CT",
}


def content_hash(counts: np.ndarray) -> str:
    """Return a stable id for pixel data: ``sha256:`` + hex digest.

    The digest covers dtype (byte order normalised to little endian), shape
    and the pixel values, so the same pixels read from PNG, TIFF, NPY or a raw
    dump get the same id.

    Examples
    --------
    >>> content_hash(np.zeros((2, 2), np.uint16)).startswith("sha256:")
    True
    """
    little = np.ascontiguousarray(counts, dtype=counts.dtype.newbyteorder("<"))
    digest = hashlib.sha256()
    digest.update(f"{little.dtype.str}{little.shape}".encode())
    digest.update(little.tobytes())
    return "sha256:" + digest.hexdigest()


def _expected_shape_ok(kind: ScanKind, shape: tuple[int, ...]) -> bool:
    if kind is ScanKind.SINGLE_ENERGY:
        return len(shape) == 2
    if kind is ScanKind.DUAL_ENERGY:
        return len(shape) == 3 and shape[0] == 2
    if kind is ScanKind.PSEUDO_COLOUR:
        return len(shape) == 3 and shape[2] == 3
    return len(shape) == 3


_SCAN_ID = re.compile(r"(?!\.\.?$)(?! )[^\x00-\x1f\x7f/\\]{0,127}[^\x00-\x1f\x7f/\\ ]")

_SHAPE_RULE = {
    ScanKind.SINGLE_ENERGY: "(rows, cols)",
    ScanKind.DUAL_ENERGY: "(2, rows, cols)",
    ScanKind.PSEUDO_COLOUR: "(rows, cols, 3)",
    ScanKind.CT_VOLUME: "(slices, rows, cols)",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Scan:
    """One X-ray or CT scan as acquired, with its geometry and provenance.

    Parameters
    ----------
    counts : ndarray
        Raw detector counts or stored pixel values; layout by ``kind`` (see
        the module docstring). Kept read-only: stages derive new arrays.
    kind : ScanKind or str
        What the pixels represent.
    modality : str, optional
        DICOM modality (``"DX"``, ``"CR"``, ``"CT"``, ``"OT"``). Defaults by
        kind.
    spacing_mm : tuple of float, optional
        Pixel or voxel spacing in mm, one value per spatial axis.
    energies_kv : tuple of float, optional
        Nominal tube voltage (kV) of each energy channel, low first. Cargo
        linacs are given in kV too (6 MV = 6000).
    scanner_id : str, optional
        The scanner that made the scan; selects its calibration profile.
    acquired_at : datetime, optional
        Acquisition time.
    scan_id : str, optional
        Stable id: the DICOM SOP Instance UID where there is one, otherwise
        the content hash of ``counts`` (computed when not given).
    metadata : mapping, optional
        Free, JSON-serialisable metadata: bag tag, container number,
        declared manifest.
    bits_stored : int, optional
        Detector bit depth (for example 12, 14 or 16) where known.
    rescale : (slope, intercept), optional
        Linear map from stored values to modality units (DICOM Rescale
        Slope/Intercept; Hounsfield units for calibrated CT).
    source_format : ScanFormat or str, optional
        Format the scan was read from.
    source_path : str, optional
        Where it was read from.

    Raises
    ------
    TypeError
        If ``counts`` is not a numeric ndarray or ``metadata`` is not a
        mapping of JSON-serialisable values.
    ValueError
        If the shape does not fit ``kind``, the array is empty or holds NaN
        or inf, ``spacing_mm`` is not positive with one value per spatial
        axis, or ``energies_kv`` does not match the energy channels.
    """

    counts: np.ndarray
    kind: ScanKind
    modality: str = ""
    spacing_mm: tuple[float, ...] | None = None
    energies_kv: tuple[float, ...] = ()
    scanner_id: str | None = None
    acquired_at: datetime | None = None
    scan_id: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bits_stored: int | None = None
    rescale: tuple[float, float] = (1.0, 0.0)
    source_format: ScanFormat | None = None
    source_path: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        kind = ScanKind(self.kind)
        set_(self, "kind", kind)
        counts = self.counts
        if not isinstance(counts, np.ndarray):
            raise TypeError(f"counts must be a numpy.ndarray, got {type(counts).__name__}")
        if counts.dtype.kind not in "uif":
            raise TypeError(f"counts must be integer or float, got dtype {counts.dtype}")
        if not _expected_shape_ok(kind, counts.shape):
            raise ValueError(f"{kind.value} counts must have shape {_SHAPE_RULE[kind]}, got {counts.shape}")
        if counts.size == 0:
            raise ValueError(f"counts must not be empty, got shape {counts.shape}")
        if kind is ScanKind.PSEUDO_COLOUR and counts.dtype != np.uint8:
            raise TypeError(f"pseudo_colour counts must be uint8 RGB, got dtype {counts.dtype}")
        if counts.dtype.kind == "f" and not np.isfinite(counts).all():
            raise ValueError("counts contain NaN or inf")
        view = counts.view()
        view.flags.writeable = False
        set_(self, "counts", view)

        for name, value in (("modality", self.modality), ("scan_id", self.scan_id), ("scanner_id", self.scanner_id)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
        # The scan id names output folders, sits in URLs and in DICOS text, and
        # is a key of the service's store (128 characters): a plain token.
        if self.scan_id and not _SCAN_ID.fullmatch(self.scan_id):
            raise ValueError(f"scan_id must be 1-128 characters, no '/', '\\', control characters or edge spaces, "
                             f"and not '.' or '..'; got {self.scan_id[:60]!r}")
        # The scanner id names its profile's folder (calibration/<scanner_id>/).
        if self.scanner_id and (self.scanner_id in (".", "..") or any(c in self.scanner_id for c in "/\\\0")):
            raise ValueError(f"scanner_id must not be a path, got {self.scanner_id!r}")
        set_(self, "modality", (self.modality or DEFAULT_MODALITY[kind]).upper())
        if self.spacing_mm is not None:
            spacing = tuple(float(s) for s in self.spacing_mm)
            if len(spacing) != kind.spatial_ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(
                    f"spacing_mm must be {kind.spatial_ndim} positive values in mm, got {self.spacing_mm!r}"
                )
            set_(self, "spacing_mm", spacing)
        energies = tuple(float(e) for e in self.energies_kv)
        n_energies = 2 if kind is ScanKind.DUAL_ENERGY else 1
        if energies and (len(energies) != n_energies or not all(e > 0 for e in energies)):
            raise ValueError(f"energies_kv must be {n_energies} positive value(s) for {kind.value}, got {energies}")
        set_(self, "energies_kv", energies)
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"metadata must be a mapping, got {type(self.metadata).__name__}")
        try:
            json.dumps(dict(self.metadata))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata must be JSON-serialisable: {exc}") from None
        set_(self, "metadata", MappingProxyType(dict(self.metadata)))
        slope, intercept = (float(v) for v in self.rescale)
        set_(self, "rescale", (slope, intercept))
        if self.source_format is not None:
            set_(self, "source_format", ScanFormat(self.source_format))
        if not self.scan_id:
            set_(self, "scan_id", content_hash(view))

    # -- convenient views ------------------------------------------------
    @property
    def low(self) -> np.ndarray:
        """Low-energy channel of a dual-energy scan."""
        self._require_dual()
        return self.counts[0]

    @property
    def high(self) -> np.ndarray:
        """High-energy channel of a dual-energy scan."""
        self._require_dual()
        return self.counts[1]

    def _require_dual(self) -> None:
        if self.kind is not ScanKind.DUAL_ENERGY:
            raise ValueError(f"scan {self.scan_id} is {self.kind.value}, not dual_energy")

    @property
    def channels(self) -> np.ndarray:
        """Projection counts as ``(channels, rows, cols)``: a view, 1 or 2 channels."""
        if self.kind in (ScanKind.PSEUDO_COLOUR, ScanKind.CT_VOLUME):
            raise ValueError(f"scan {self.scan_id} is {self.kind.value}, not an energy-channel projection")
        return self.counts if self.kind is ScanKind.DUAL_ENERGY else self.counts[None]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the image or volume without the channel axis."""
        if self.kind is ScanKind.DUAL_ENERGY:
            return self.counts.shape[1:]
        if self.kind is ScanKind.PSEUDO_COLOUR:
            return self.counts.shape[:2]
        return self.counts.shape

    def replace(self, **changes: Any) -> "Scan":
        """Return a copy with some fields changed (validated again).

        New pixels under a content-hash id get a new content hash; a DICOM
        UID is kept unless ``scan_id`` is given.
        """
        if "counts" in changes and "scan_id" not in changes and self.scan_id.startswith("sha256:"):
            changes["scan_id"] = ""
        return dataclasses.replace(self, **changes)

    # -- descriptive fields as JSON, for sidecars and containers ----------
    def header(self) -> dict[str, Any]:
        """Everything but the pixels, as JSON-serialisable values.

        :func:`Scan.from_header` reverses it; writers that can carry text
        (raw sidecars, NPZ, TIFF) store it so a scan round-trips whole.
        """
        return {
            "kind": self.kind.value,
            "modality": self.modality,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "energies_kv": list(self.energies_kv),
            "scanner_id": self.scanner_id,
            "acquired_at": self.acquired_at.isoformat() if self.acquired_at else None,
            "scan_id": self.scan_id,
            "metadata": dict(self.metadata),
            "bits_stored": self.bits_stored,
            "rescale": list(self.rescale),
        }

    @classmethod
    def from_header(cls, counts: np.ndarray, header: Mapping[str, Any], **extra: Any) -> "Scan":
        """Build a scan from pixels and a :meth:`header` dict.

        Unknown keys are ignored so newer writers stay readable; ``extra``
        overrides header values (for example ``source_path``).

        Raises
        ------
        TypeError, ValueError
            As the constructor, or if ``acquired_at`` is not ISO 8601.
        """
        fields = {f.name for f in dataclasses.fields(cls)} - {"counts"}
        values = {k: v for k, v in header.items() if k in fields and v is not None}
        if "acquired_at" in values:
            try:
                values["acquired_at"] = datetime.fromisoformat(str(values["acquired_at"]))
            except ValueError:
                raise ValueError(f"acquired_at must be ISO 8601, got {values['acquired_at']!r}") from None
        for key in ("spacing_mm", "energies_kv", "rescale"):
            if key in values:
                values[key] = tuple(values[key])
        values.update(extra)
        return cls(counts=counts, **values)

    def describe(self) -> dict[str, Any]:
        """Summary used by ``nii info``: one flat JSON-ready dict."""
        return {
            "path": self.source_path,
            "format": self.source_format.value if self.source_format else None,
            "kind": self.kind.value,
            "modality": self.modality,
            "shape": list(self.counts.shape),
            "dtype": str(self.counts.dtype),
            "energies_kv": list(self.energies_kv),
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "scanner_id": self.scanner_id,
            "scan_id": self.scan_id,
        }
