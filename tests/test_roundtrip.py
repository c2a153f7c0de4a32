"""Every format round-trips: what a writer writes, the reader reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nii import Scan, ScanKind, read_scan, write_scan
from nii.ingest.raw import LAYOUTS, write_raw
from nii.scan import ScanFormat
from tests.conftest import make_scan

ALL_FIELDS = ("kind", "modality", "spacing_mm", "energies_kv", "scanner_id", "acquired_at", "scan_id", "rescale")


def assert_same_pixels(a: Scan, b: Scan) -> None:
    assert b.kind is a.kind
    assert b.counts.dtype == a.counts.dtype
    np.testing.assert_array_equal(b.counts, a.counts)


def assert_same_scan(a: Scan, b: Scan, fields: tuple[str, ...] = ALL_FIELDS) -> None:
    assert_same_pixels(a, b)
    for field in fields:
        assert getattr(b, field) == getattr(a, field), field
    assert dict(b.metadata) == dict(a.metadata)


# Containers that carry the whole header: everything comes back, id included.
@pytest.mark.parametrize("suffix", [".npz", ".tiff"])
@pytest.mark.parametrize("kind", list(ScanKind), ids=lambda k: k.value)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_header_carrying_formats_round_trip_whole(tmp_path: Path, suffix: str, kind: ScanKind, dtype: str) -> None:
    scan = make_scan(kind, dtype=dtype)
    write_scan(scan, tmp_path / f"scan{suffix}")
    again = read_scan(tmp_path / f"scan{suffix}")
    assert_same_scan(scan, again)
    assert again.source_format is ScanFormat(suffix.strip(".").replace("tiff", "tiff"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("byte_order", ["little", "big"])
@pytest.mark.parametrize("kind", [ScanKind.SINGLE_ENERGY, ScanKind.DUAL_ENERGY], ids=lambda k: k.value)
def test_raw_dump_round_trips_in_every_layout(tmp_path: Path, layout: str, byte_order: str, kind: ScanKind) -> None:
    scan = make_scan(kind)
    sidecar = write_raw(scan, tmp_path / "dump.raw", layout=layout, byte_order=byte_order, header_bytes=64)
    for path in (sidecar, tmp_path / "dump.raw"):  # sidecar or data file: same scan
        again = read_scan(path)
        assert_same_scan(scan, again)
        assert again.source_format is ScanFormat.RAW


def test_raw_sidecar_with_a_long_manifest_is_still_a_sidecar(tmp_path: Path) -> None:
    # A cargo manifest's goods list makes a sidecar several kB: its format
    # must come from the whole JSON, not from the first 4 kB.
    goods = [{"description": f"carton of goods no. {i}", "mass_kg": 12.5} for i in range(200)]
    scan = make_scan(ScanKind.DUAL_ENERGY).replace(metadata={"manifest": {"goods": goods}})
    sidecar = write_raw(scan, tmp_path / "dump.raw")
    assert sidecar.stat().st_size > 8192
    assert_same_scan(scan, read_scan(sidecar))


@pytest.mark.parametrize("kind", list(ScanKind), ids=lambda k: k.value)
def test_npy_round_trips_pixels_and_infers_kind(tmp_path: Path, kind: ScanKind) -> None:
    scan = make_scan(kind)
    write_scan(scan, tmp_path / "scan.npy")
    again = read_scan(tmp_path / "scan.npy")
    assert_same_pixels(scan, again)
    assert again.scan_id == scan.scan_id  # the content hash survives a pixels-only format


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        (ScanKind.SINGLE_ENERGY, "uint8"),
        (ScanKind.SINGLE_ENERGY, "uint16"),
        (ScanKind.DUAL_ENERGY, "uint8"),
        (ScanKind.DUAL_ENERGY, "uint16"),
        (ScanKind.PSEUDO_COLOUR, "uint8"),
    ],
)
def test_png_round_trips_pixels(tmp_path: Path, kind: ScanKind, dtype: str) -> None:
    scan = make_scan(kind, dtype=dtype)
    write_scan(scan, tmp_path / "scan.png")
    again = read_scan(tmp_path / "scan.png")
    assert_same_pixels(scan, again)
    assert again.scan_id == scan.scan_id


@pytest.mark.parametrize("kind", [ScanKind.SINGLE_ENERGY, ScanKind.PSEUDO_COLOUR], ids=lambda k: k.value)
def test_jpeg_round_trips_within_lossy_error(tmp_path: Path, kind: ScanKind) -> None:
    rows, cols = np.mgrid[:64, :96]
    smooth = ((rows * 2 + cols) % 256).astype(np.uint8)
    counts = smooth if kind is ScanKind.SINGLE_ENERGY else np.stack([smooth, 255 - smooth, smooth // 2], -1)
    scan = Scan(counts, kind=kind)
    write_scan(scan, tmp_path / "scan.jpg")
    again = read_scan(tmp_path / "scan.jpg")
    assert again.kind is kind and again.counts.shape == counts.shape
    assert np.abs(again.counts.astype(int) - counts).mean() < 3.0


@pytest.mark.parametrize("kind", list(ScanKind), ids=lambda k: k.value)
def test_dicos_round_trips(tmp_path: Path, kind: ScanKind) -> None:
    dtype = "int16" if kind is ScanKind.CT_VOLUME else "uint16"
    scan = make_scan(kind, dtype=dtype)
    write_scan(scan, tmp_path / "scan.dcm")
    again = read_scan(tmp_path / "scan.dcm")
    # A content-hash id becomes a UID derived from it: DICOM requires a UID.
    assert_same_scan(scan, again, tuple(f for f in ALL_FIELDS if f != "scan_id"))
    assert again.scan_id != scan.scan_id
    write_scan(again, tmp_path / "again.dcm")
    assert read_scan(tmp_path / "again.dcm").scan_id == again.scan_id  # a UID is kept as it is
    expected = ScanFormat.DICOM if kind is ScanKind.PSEUDO_COLOUR else ScanFormat.DICOS
    assert again.source_format is expected


def test_ct_slice_folder_round_trips(tmp_path: Path) -> None:
    scan = make_scan(ScanKind.CT_VOLUME, dtype="int16").replace(rescale=(1.0, -1024.0))
    write_scan(scan, tmp_path / "series", format="dicom_series")
    assert len(list((tmp_path / "series").iterdir())) == scan.counts.shape[0]
    again = read_scan(tmp_path / "series")
    assert_same_scan(scan, again, ("kind", "spacing_mm", "rescale", "scanner_id"))
    assert again.source_format is ScanFormat.DICOM_SERIES


def test_write_scan_refuses_unknown_format_and_unfit_scans(tmp_path: Path) -> None:
    scan = make_scan(ScanKind.CT_VOLUME)
    with pytest.raises(ValueError, match="suffix"):
        write_scan(scan, tmp_path / "scan.xyz")
    with pytest.raises(ValueError, match="unknown format"):
        write_scan(scan, tmp_path / "scan.xyz", format="gif")
    with pytest.raises(ValueError, match="PNG"):
        write_scan(scan, tmp_path / "scan.png")
    with pytest.raises(ValueError, match="raw"):
        write_scan(scan, tmp_path / "scan.raw")
    with pytest.raises(ValueError, match="JPEG"):
        write_scan(make_scan(ScanKind.SINGLE_ENERGY), tmp_path / "scan.jpg")
