"""Raw line-scanner dumps: a headerless binary file and its JSON sidecar.

Line scanners write one detector line after another. The sidecar tells how:

.. code-block:: json

    {"width": 640, "height": 480, "channels": 2, "layout": "side_by_side",
     "byte_order": "little", "header_bytes": 0, "dtype": "uint16",
     "data_file": "bag-0001.raw", "energies_kv": [80, 160],
     "spacing_mm": [0.8, 0.8], "scanner_id": "lane-3"}

``width`` is detector elements per line and per channel, ``height`` the
number of lines. ``layout`` says how two channels are laid out:

``planar``
    every low line, then every high line;
``interleaved``
    low and high alternate pixel by pixel;
``side_by_side``
    each line is ``[low | high]``, as some consoles write it.

Every other key of :meth:`nii.scan.Scan.header` (``scanner_id``,
``acquired_at``, ``scan_id``, ``metadata``...) may appear too. ``data_file``
defaults to the sidecar's name with ``.raw``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nii.ingest.arrays import scan_from_array
from nii.ingest.errors import CorruptScanError, UnsupportedScanError, refuse_on_error
from nii.ingest.limits import ReadLimits, check_pixel_budget
from nii.scan import Scan, ScanFormat, ScanKind

__all__ = ["DATA_SUFFIXES", "LAYOUTS", "MAX_SIDECAR_BYTES", "read_raw", "write_raw", "find_sidecar", "is_raw_sidecar", "sidecar_data_file"]

LAYOUTS = ("planar", "interleaved", "side_by_side")
_DTYPES = ("uint8", "uint16", "uint32", "float32")
#: A sidecar is a few hundred bytes, or a few kB with a cargo manifest;
#: megabytes of "JSON" are refused.
MAX_SIDECAR_BYTES = 1_000_000
#: Suffixes a raw dump's data file may have (found beside its sidecar by stem).
DATA_SUFFIXES = (".raw", ".bin", ".dat")


def is_raw_sidecar(text: str) -> bool:
    """True if ``text`` is a JSON object naming ``width`` and ``height``."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    return isinstance(doc, dict) and "width" in doc and "height" in doc


def find_sidecar(data_path: str | os.PathLike) -> Path | None:
    """The sidecar of a raw data file: ``name.json`` or ``name.raw.json``."""
    data_path = Path(data_path)
    for candidate in (data_path.with_suffix(".json"), data_path.with_name(data_path.name + ".json")):
        if candidate.is_file() and candidate != data_path:
            return candidate
    return None


def _load_sidecar(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_SIDECAR_BYTES:
        raise CorruptScanError(f"sidecar is {path.stat().st_size:,} bytes; a raw sidecar is small JSON")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptScanError(f"sidecar is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptScanError("sidecar must be a JSON object")
    return doc


def sidecar_data_file(sidecar: str | os.PathLike, doc: dict[str, Any] | None = None) -> Path:
    """Where the sidecar's pixels are: ``data_file``, else a sibling by stem."""
    sidecar = Path(sidecar)
    doc = _load_sidecar(sidecar) if doc is None else doc
    if "data_file" in doc:
        name = str(doc["data_file"])
        # One file name beside the sidecar: not a path, not empty, not ".".
        if name in ("", ".", "..") or "/" in name or "\\" in name or name == sidecar.name:
            raise CorruptScanError(f"data_file {name!r} must be the name of another file beside the sidecar")
        return sidecar.with_name(name)
    stem = sidecar.name[: -len(".json")] if sidecar.name.endswith(".json") else sidecar.stem
    for suffix in ("",) + DATA_SUFFIXES:
        candidate = sidecar.with_name(stem if suffix == "" else Path(stem).stem + suffix)
        if candidate.is_file() and candidate != sidecar and candidate.suffix != ".json":
            return candidate
    raise CorruptScanError(f"no data file found beside sidecar (looked for {stem} with {', '.join(DATA_SUFFIXES)})")


def _field(doc: dict[str, Any], key: str, allowed: tuple[Any, ...] | None = None, default: Any = None) -> Any:
    value = doc.get(key, default)
    if allowed is not None and value not in allowed:
        raise CorruptScanError(f"sidecar {key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def _whole(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CorruptScanError(f"sidecar {key} must be a non-negative integer; got {value!r}")
    return value


def read_raw(path: str | os.PathLike, *, limits: ReadLimits = ReadLimits()) -> Scan:
    """Read a raw line-scanner dump given its sidecar or its data file.

    Parameters
    ----------
    path : path-like
        The JSON sidecar, or the data file with a sidecar beside it.
    limits : ReadLimits
        Pixel budget, checked from the sidecar before reading pixels.

    Returns
    -------
    Scan
        ``single_energy`` for one channel, ``dual_energy`` (low, high) for
        two. Counts keep the file's dtype, in native byte order.

    Raises
    ------
    CorruptScanError
        Bad sidecar, or dimensions that do not match the byte count.
    UnsupportedScanError
        No sidecar, or a channel count other than 1 or 2.
    ScanTooLargeError
        Dimensions over the pixel budget.
    """
    path = Path(path)
    with refuse_on_error("raw", str(path)):
        if path.suffix.lower() == ".json":
            sidecar = path
        else:
            sidecar = find_sidecar(path)
            if sidecar is None:
                raise UnsupportedScanError("headerless data with no JSON sidecar (expected NAME.json beside it)")
        doc = _load_sidecar(sidecar)
        width, height = _whole(doc, "width"), _whole(doc, "height")
        channels = _field(doc, "channels", (1, 2), default=1)
        layout = _field(doc, "layout", LAYOUTS, default="planar")
        byte_order = _field(doc, "byte_order", ("little", "big"), default="little")
        dtype_name = _field(doc, "dtype", _DTYPES, default="uint16")
        header_bytes = _whole(doc, "header_bytes", default=0)
        check_pixel_budget((channels, height, width), limits)

        data_file = sidecar_data_file(sidecar, doc)
        dtype = np.dtype(dtype_name).newbyteorder("<" if byte_order == "little" else ">")
        expected = header_bytes + width * height * channels * dtype.itemsize
        actual = data_file.stat().st_size
        if actual != expected:
            raise CorruptScanError(
                f"sidecar says {height}x{width}x{channels} {dtype_name} + {header_bytes} header bytes"
                f" = {expected:,} bytes, but {data_file.name} has {actual:,}"
            )
        flat = np.fromfile(data_file, dtype=dtype, count=width * height * channels, offset=header_bytes)
        counts = _unpack_layout(flat, height=height, width=width, channels=channels, layout=layout)
        counts = counts.astype(dtype.newbyteorder("="), copy=False)
        header = {k: v for k, v in doc.items() if k not in ("kind",)}
        header["kind"] = (ScanKind.DUAL_ENERGY if channels == 2 else ScanKind.SINGLE_ENERGY).value
        return scan_from_array(counts, header=header, source_format=ScanFormat.RAW, source_path=str(sidecar))


def _unpack_layout(flat: np.ndarray, *, height: int, width: int, channels: int, layout: str) -> np.ndarray:
    """Reshape a flat dump into ``(rows, cols)`` or ``(2, rows, cols)``."""
    if channels == 1:
        return flat.reshape(height, width)
    if layout == "planar":
        return flat.reshape(2, height, width)
    if layout == "interleaved":
        return np.ascontiguousarray(np.moveaxis(flat.reshape(height, width, 2), 2, 0))
    lines = flat.reshape(height, 2, width)  # side_by_side: [low | high] per line
    return np.ascontiguousarray(np.moveaxis(lines, 1, 0))


def write_raw(
    scan: Scan,
    path: str | os.PathLike,
    *,
    layout: str = "planar",
    byte_order: str = "little",
    header_bytes: int = 0,
) -> Path:
    """Write a 2D scan as a raw dump plus ``path`` with ``.json``.

    Parameters
    ----------
    scan : Scan
        A single- or dual-energy scan with integer counts.
    path : path-like
        The data file; the sidecar goes beside it with suffix ``.json``.
    layout, byte_order : str
        As in the sidecar (see the module docstring).
    header_bytes : int
        Zero bytes written before the pixels, as some consoles do.

    Returns
    -------
    Path
        The sidecar.

    Raises
    ------
    ValueError
        For pseudo-colour or CT scans, or an unknown layout or byte order.
    """
    if scan.kind not in (ScanKind.SINGLE_ENERGY, ScanKind.DUAL_ENERGY):
        raise ValueError(f"raw dumps hold single- or dual-energy line scans; got {scan.kind.value}")
    if layout not in LAYOUTS or byte_order not in ("little", "big"):
        raise ValueError(f"layout must be one of {LAYOUTS} and byte_order little or big; got {layout}, {byte_order}")
    counts = np.asarray(scan.counts)
    if counts.dtype.name not in _DTYPES:
        raise ValueError(f"raw dumps store {', '.join(_DTYPES)}; got {counts.dtype}")
    if scan.kind is ScanKind.DUAL_ENERGY:
        arranged = {"planar": counts, "interleaved": np.moveaxis(counts, 0, 2), "side_by_side": np.moveaxis(counts, 0, 1)}
        counts = arranged[layout]
    path = Path(path)
    with open(path, "wb") as fp:
        fp.write(b"\0" * header_bytes)
        fp.write(np.ascontiguousarray(counts, dtype=counts.dtype.newbyteorder("<" if byte_order == "little" else ">")).tobytes())
    rows, cols = scan.spatial_shape
    sidecar = {
        "width": cols,
        "height": rows,
        "channels": 2 if scan.kind is ScanKind.DUAL_ENERGY else 1,
        "layout": layout,
        "byte_order": byte_order,
        "header_bytes": header_bytes,
        "dtype": counts.dtype.name,
        "data_file": path.name,
        **scan.header(),
    }
    sidecar_path = path.with_suffix(".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return sidecar_path
