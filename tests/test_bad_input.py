"""Bad input is refused with one typed, one-line error, before allocation."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from nii import ReadLimits, read_scan, write_scan
from nii.ingest import CorruptScanError, ScanReadError, ScanTooLargeError, UnsupportedScanError, find_scans
from nii.ingest.raw import write_raw
from nii.scan import ScanKind
from tests.conftest import make_scan


def refused(path: Path, error: type[ScanReadError] = ScanReadError, **kwargs: object) -> ScanReadError:
    with pytest.raises(error) as info:
        read_scan(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return info.value


def png_claiming(tmp_path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims width x height but holds one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 9)) + chunk(b"IEND", b"")
    path = tmp_path / "huge.png"
    path.write_bytes(body)
    return path


def test_header_claiming_60000_squared_is_refused_before_allocation(tmp_path: Path) -> None:
    err = refused(png_claiming(tmp_path, 60000, 60000), ScanTooLargeError)
    assert "budget" in err.reason or "limit" in err.reason
    sidecar = tmp_path / "huge.json"
    (tmp_path / "huge.raw").write_bytes(b"\0" * 16)
    sidecar.write_text(json.dumps({"width": 60000, "height": 60000, "channels": 2}))
    refused(sidecar, ScanTooLargeError)  # not a byte-count mismatch: the budget is checked first
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.uint16))
    header["shape"] = (60000, 60000)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    (tmp_path / "huge.npy").write_bytes(buf.getvalue() + b"\0" * 8)
    refused(tmp_path / "huge.npy", ScanTooLargeError)


def test_pixel_budget_is_configurable(tmp_path: Path) -> None:
    write_scan(make_scan(ScanKind.DUAL_ENERGY), tmp_path / "scan.tiff")
    assert read_scan(tmp_path / "scan.tiff").counts.size == 2 * 12 * 17
    refused(tmp_path / "scan.tiff", ScanTooLargeError, limits=ReadLimits(max_pixels=100))


def test_zero_dimensions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.raw").write_bytes(b"")
    (tmp_path / "zero.json").write_text(json.dumps({"width": 0, "height": 10}))
    refused(tmp_path / "zero.json", CorruptScanError)
    refused(png_claiming(tmp_path, 0, 5))


def test_sidecar_that_does_not_match_the_byte_count(tmp_path: Path) -> None:
    sidecar = write_raw(make_scan(ScanKind.DUAL_ENERGY), tmp_path / "dump.raw")
    with open(tmp_path / "dump.raw", "ab") as fp:
        fp.write(b"\0\0")
    err = refused(sidecar, CorruptScanError)
    assert "bytes" in err.reason
    (tmp_path / "dump.raw").write_bytes((tmp_path / "dump.raw").read_bytes()[:-100])
    refused(tmp_path / "dump.raw", CorruptScanError)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"layout": "diagonal"}, "layout"),
        ({"channels": 3}, "channels"),
        ({"byte_order": "middle"}, "byte_order"),
        ({"width": -4}, "width"),
        ({"height": "tall"}, "height"),
        ({"header_bytes": 1.5}, "header_bytes"),
        ({"data_file": "../../etc/passwd"}, "data_file"),
        ({"data_file": "missing.raw"}, "missing.raw"),
        ({"data_file": ""}, "data_file '' must be the name of another file"),
        ({"data_file": "."}, "data_file '.' must be the name"),
        ({"data_file": "sub/x.raw"}, "data_file 'sub/x.raw' must be the name"),
        ({"data_file": "dump.json"}, "data_file 'dump.json' must be the name"),
        ({"spacing_mm": [0, 1]}, "spacing_mm"),
        ({"acquired_at": "yesterday"}, "acquired_at"),
        ({"scan_id": 5}, "scan_id must be a string"),
        ({"scanner_id": ["lane-3"]}, "scanner_id must be a string"),
        ({"scanner_id": "../../tmp"}, "scanner_id must not be a path"),
        ({"scan_id": "../../etc/passwd"}, "scan_id must be 1-128 characters"),
        ({"scan_id": ".."}, "scan_id must be 1-128 characters"),
        ({"scan_id": "AB\u0000C\u001bD"}, "scan_id must be 1-128 characters"),
        ({"scan_id": "x" * 129}, "scan_id must be 1-128 characters"),
    ],
)
def test_bad_sidecar_values_are_named(tmp_path: Path, change: dict, expected: str) -> None:
    sidecar = write_raw(make_scan(ScanKind.SINGLE_ENERGY), tmp_path / "dump.raw")
    doc = json.loads(sidecar.read_text())
    doc.update(change)
    sidecar.write_text(json.dumps(doc))
    assert expected in refused(sidecar).reason
    assert sidecar in [s.path for s in find_scans([tmp_path])]  # a folder walk is not stopped by it


def test_raw_without_sidecar_and_unknown_content(tmp_path: Path) -> None:
    (tmp_path / "lonely.raw").write_bytes(b"\x01\x02" * 100)
    refused(tmp_path / "lonely.raw", UnsupportedScanError)
    (tmp_path / "notes.json").write_text('{"hello": "world"}')
    refused(tmp_path / "notes.json", UnsupportedScanError)
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in refused(tmp_path / "empty.png", CorruptScanError).reason
    refused(tmp_path / "nowhere.dcm", CorruptScanError)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".tiff"])
def test_nan_and_inf_in_float_input_are_refused(tmp_path: Path, suffix: str) -> None:
    counts = np.ones((8, 8), np.float32)
    counts[3, 4] = np.nan if suffix != ".npz" else np.inf
    path = tmp_path / f"bad{suffix}"
    if suffix == ".npy":
        np.save(path, counts)
    elif suffix == ".npz":
        np.savez(path, counts=counts)
    else:
        import tifffile

        tifffile.imwrite(path, counts)
    assert "NaN or inf" in refused(path, CorruptScanError).reason


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    refused(tmp_path / "objects.npy", UnsupportedScanError)
    np.savez(tmp_path / "objects.npz", counts=np.array([{"a": 1}], dtype=object))
    refused(tmp_path / "objects.npz")


def test_npz_without_counts_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    assert "counts" in refused(tmp_path / "other.npz", UnsupportedScanError).reason


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tiff", ".npz", ".npy", ".dcm"])
def test_truncated_files_are_refused(tmp_path: Path, suffix: str) -> None:
    kind = ScanKind.PSEUDO_COLOUR if suffix == ".jpg" else ScanKind.SINGLE_ENERGY
    path = tmp_path / f"scan{suffix}"
    write_scan(make_scan(kind), path)
    data = path.read_bytes()
    for keep in (len(data) // 3, len(data) // 2, len(data) - 7):
        path.write_bytes(data[:keep])
        refused(path)


def test_a_truncated_png_gets_our_line_and_nothing_from_libpng(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = tmp_path / "scan.png"
    write_scan(make_scan(ScanKind.SINGLE_ENERGY), path)
    path.write_bytes(path.read_bytes()[:-40])
    assert "truncated" in refused(path).reason
    assert capfd.readouterr().err == ""  # libpng prints its own error line on stderr


def test_16_bit_colour_is_not_pseudo_colour(tmp_path: Path) -> None:
    import cv2

    rgb16 = np.random.default_rng(1).integers(0, 65535, (6, 6, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16)
    assert "colour" in refused(tmp_path / "rgb16.png", UnsupportedScanError).reason
