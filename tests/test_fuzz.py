"""Property tests: hostile bytes and headers get the typed error, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nii import ReadLimits, read_scan, write_scan
from nii.ingest import ScanReadError, arrays, dicom, image, raw
from nii.scan import ScanKind
from tests.conftest import make_scan

READERS = {
    "dicom": dicom.read_dicom,
    "png": image.read_png,
    "jpeg": image.read_jpeg,
    "tiff": image.read_tiff,
    "npy": arrays.read_npy,
    "npz": arrays.read_npz,
    "raw": raw.read_raw,
    "any": read_scan,
}
# Hostile headers make pydicom warn about every odd value; that is the point here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SMALL = ReadLimits(max_pixels=1_000_000)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def only_typed_errors(reader, path: Path) -> None:  # noqa: ANN001
    try:
        reader(path, limits=SMALL)
    except ScanReadError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize("name", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / "fuzz.bin"
    path.write_bytes(data)
    only_typed_errors(READERS[name], path)


def _valid_files(folder: Path) -> dict[str, Path]:
    scans = {
        "dcm": make_scan(ScanKind.DUAL_ENERGY),
        "png": make_scan(ScanKind.DUAL_ENERGY),
        "jpg": make_scan(ScanKind.PSEUDO_COLOUR),
        "tiff": make_scan(ScanKind.CT_VOLUME),
        "npy": make_scan(ScanKind.SINGLE_ENERGY),
        "npz": make_scan(ScanKind.SINGLE_ENERGY),
    }
    paths = {}
    for suffix, scan in scans.items():
        paths[suffix] = folder / f"valid.{suffix}"
        write_scan(scan, paths[suffix])
    return paths


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _valid_files(tmp_path_factory.mktemp("valid"))


@pytest.mark.parametrize("suffix", ["dcm", "png", "jpg", "tiff", "npy", "npz"])
@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.integers(0, 100))
def test_mutated_headers_of_valid_files(tmp_path: Path, valid_files: dict[str, Path], suffix: str,
                                        flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(valid_files[suffix].read_bytes())
    for offset, value in flips:  # most of the damage lands in the header
        data[offset % min(len(data), 600)] = value
    data = data[: max(1, len(data) * (100 - cut) // 100)] if cut > 50 else data
    path = tmp_path / f"mutant.{suffix}"
    path.write_bytes(bytes(data))
    only_typed_errors(read_scan, path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
sidecar_keys = st.sampled_from(["width", "height", "channels", "layout", "byte_order", "header_bytes", "dtype",
                                "data_file", "kind", "spacing_mm", "energies_kv", "acquired_at", "metadata",
                                "rescale", "scan_id", "bits_stored", "modality"])


@FUZZ
@given(changes=st.dictionaries(sidecar_keys, json_values, min_size=1, max_size=4))
def test_random_sidecar_headers(tmp_path: Path, changes: dict) -> None:
    sidecar = raw.write_raw(make_scan(ScanKind.DUAL_ENERGY), tmp_path / "dump.raw")
    doc = json.loads(sidecar.read_text())
    doc.update(changes)
    sidecar.write_text(json.dumps(doc))
    only_typed_errors(read_scan, sidecar)


@FUZZ
@given(shape=st.lists(st.integers(-3, 70_000), min_size=0, max_size=5),
       dtype=st.sampled_from(["<u2", ">u2", "<f4", "|u1", "<i8", "<c8", "|b1"]))
def test_random_npy_headers(tmp_path: Path, shape: list[int], dtype: str) -> None:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header = header.ljust(118) + "\n"
    path = tmp_path / "h.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64)
    only_typed_errors(read_scan, path)
