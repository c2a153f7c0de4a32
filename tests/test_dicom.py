"""Tests for nii.ingest.dicom: round trips, pydicom's real files, hostile input."""

from __future__ import annotations

import glob
import os
import pathlib
import random
from datetime import datetime

import numpy as np
import pydicom
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import uid as dcmuid

from nii.ingest.dicom import (
    ct_slice_series,
    read_dicom,
    read_dicom_series,
    write_dicom,
    write_dicom_series,
)
from nii.ingest.errors import CorruptScanError, ScanReadError, ScanTooLargeError, UnsupportedScanError
from nii.ingest.limits import ReadLimits
from nii.scan import Scan, ScanFormat, ScanKind
from tests.conftest import dciodvfy, requires_dciodvfy

# Hostile and odd bundled files make pydicom warn; the warnings are not under test.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

UID_ID = "1.2.826.0.1.3680043.8.498.1234567890"
WHEN = datetime(2024, 5, 17, 13, 45, 7, 250000)
TESTDATA = pathlib.Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
ALL_BUNDLED = sorted(glob.glob(str(TESTDATA / "**" / "*.dcm"), recursive=True))


def bundled(name: str) -> str:
    return pydicom.data.get_testdata_file(name)


def rng_counts(shape, dtype, high=None, seed=0) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, (high or info.max) + 1, size=shape, dtype=dtype)


def assert_same_scan(back: Scan, scan: Scan) -> None:
    np.testing.assert_array_equal(back.counts, scan.counts)
    assert back.counts.dtype == scan.counts.dtype
    assert back.kind is scan.kind
    assert back.spacing_mm == pytest.approx(scan.spacing_mm) if scan.spacing_mm else back.spacing_mm is None
    assert back.energies_kv == scan.energies_kv
    assert back.scanner_id == scan.scanner_id
    assert back.acquired_at == scan.acquired_at
    assert dict(back.metadata) == dict(scan.metadata)
    assert back.rescale == scan.rescale


def assert_one_line(err: pytest.ExceptionInfo, path: str) -> None:
    assert "\n" not in str(err.value)
    assert err.value.path == path


def assert_part10(path, sop_class: str) -> pydicom.Dataset:
    raw = pathlib.Path(path).read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == sop_class
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == dcmuid.ExplicitVRLittleEndian
    assert ds.file_meta.ImplementationClassUID == dcmuid.PYDICOM_IMPLEMENTATION_UID
    return ds


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "bits"), [(np.uint16, 12), (np.uint16, None), (np.uint8, None)])
def test_single_energy_round_trip(tmp_path, dtype, bits):
    counts = rng_counts((37, 51), dtype, high=(2**bits - 1) if bits else None)
    scan = Scan(
        counts=counts, kind=ScanKind.SINGLE_ENERGY, spacing_mm=(0.8, 1.2), energies_kv=(160,),
        scanner_id="XR-7", acquired_at=WHEN, scan_id=UID_ID, metadata={"bag_tag": "LH 123456"},
        bits_stored=bits,
    )
    path = tmp_path / "se.dcm"
    write_dicom(scan, path)
    ds = assert_part10(path, dcmuid.DICOSDigitalXRayImageStorageForProcessing)
    assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.BitsStored == (bits or counts.dtype.itemsize * 8)

    back = read_dicom(path)
    assert_same_scan(back, scan)
    assert back.scan_id == UID_ID
    assert back.bits_stored == (bits or counts.dtype.itemsize * 8)
    assert back.source_format is ScanFormat.DICOS
    assert back.source_path == str(path)
    assert back.modality == "DX"


def test_dual_energy_round_trip(tmp_path):
    counts = rng_counts((2, 40, 64), np.uint16)
    scan = Scan(
        counts=counts, kind=ScanKind.DUAL_ENERGY, spacing_mm=(1.0, 0.5), energies_kv=(80, 140),
        scanner_id="SN-0042", acquired_at=WHEN, scan_id=UID_ID,
        metadata={"itinerary_id": "BA0117-LHR-JFK", "container": {"number": "MSCU1234567", "weight_kg": 1250.5},
                  "flags": [1, 2, 3]},
    )
    path = tmp_path / "de.dcm"
    write_dicom(scan, path)
    ds = assert_part10(path, dcmuid.DICOSDigitalXRayImageStorageForProcessing)
    assert ds.NumberOfFrames == 2
    assert list(ds.FrameLabelVector) == ["LOW 80kV", "HIGH 140kV"]
    assert ds.FrameIncrementPointer == 0x00182002
    assert ds.ItineraryID == "BA0117-LHR-JFK"

    back = read_dicom(path)
    assert_same_scan(back, scan)
    assert back.scan_id == UID_ID
    np.testing.assert_array_equal(back.low, counts[0])
    np.testing.assert_array_equal(back.high, counts[1])
    assert back.energies_kv == (80.0, 140.0)


def test_dual_energy_without_kv_and_frames_stored_high_first(tmp_path):
    counts = rng_counts((2, 8, 9), np.uint16)
    path = tmp_path / "de.dcm"
    write_dicom(Scan(counts=counts, kind=ScanKind.DUAL_ENERGY), path)
    ds = pydicom.dcmread(path)
    assert list(ds.FrameLabelVector) == ["LOW", "HIGH"]
    assert read_dicom(path).energies_kv == ()

    # Another vendor may store the high-energy frame first: the reader reorders.
    ds.FrameLabelVector = ["HIGH 6000kV", "LOW 4000kV"]
    ds.PixelData = counts[::-1].tobytes()
    ds.save_as(path)
    back = read_dicom(path)
    np.testing.assert_array_equal(back.counts, counts)
    assert back.energies_kv == (4000.0, 6000.0)


def test_pseudo_colour_round_trip_odd_size(tmp_path):
    counts = rng_counts((5, 7, 3), np.uint8)  # odd byte count: Pixel Data gets padded
    scan = Scan(counts=counts, kind=ScanKind.PSEUDO_COLOUR, spacing_mm=(2.0, 2.0), scan_id="console-view-1",
                metadata={"operator": "Zoë"})
    path = tmp_path / "pc.dcm"
    write_dicom(scan, path)
    ds = assert_part10(path, dcmuid.SecondaryCaptureImageStorage)
    assert (ds.Modality, ds.PhotometricInterpretation, ds.PlanarConfiguration, ds.BitsAllocated) == ("OT", "RGB", 0, 8)

    back = read_dicom(path)
    assert_same_scan(back, scan)
    assert back.source_format is ScanFormat.DICOM
    # A scan id that is not a UID becomes a deterministic UID.
    assert dcmuid.UID(back.scan_id).is_valid
    write_dicom(scan, tmp_path / "again.dcm")
    assert read_dicom(tmp_path / "again.dcm").scan_id == back.scan_id


@pytest.mark.parametrize(("dtype", "rescale"), [(np.int16, (1.0, -1024.0)), (np.uint16, (0.5, -1000.0))])
def test_ct_volume_round_trip(tmp_path, dtype, rescale):
    counts = rng_counts((6, 20, 24), dtype, high=3000) if dtype == np.uint16 else rng_counts((6, 20, 24), dtype)
    scan = Scan(counts=counts, kind=ScanKind.CT_VOLUME, spacing_mm=(2.5, 0.7, 0.75), rescale=rescale,
                energies_kv=(140,), scanner_id="CT-9", acquired_at=WHEN, scan_id=UID_ID,
                metadata={"itinerary_id": "X1", "carrier_id": "BA"})
    path = tmp_path / "ct.dcm"
    write_dicom(scan, path)
    ds = assert_part10(path, dcmuid.DICOSCTImageStorage)
    assert (ds.Modality, ds.NumberOfFrames, ds.PixelRepresentation) == ("CT", 6, 1 if dtype == np.int16 else 0)

    back = read_dicom(path)
    assert_same_scan(back, scan)
    assert back.scan_id == UID_ID
    assert back.source_format is ScanFormat.DICOS


def test_ct_geometry_read_from_functional_groups(tmp_path):
    counts = rng_counts((1, 4, 5), np.int16)
    scan = Scan(counts=counts, kind=ScanKind.CT_VOLUME, spacing_mm=(3.0, 0.4, 0.6), rescale=(2.0, -1024.0))
    path = tmp_path / "ct.dcm"
    write_dicom(scan, path)
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == 1
    for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)  # an Enhanced-CT-style file keeps them in the functional groups only
    ds.save_as(path)
    back = read_dicom(path)
    assert back.spacing_mm == (3.0, 0.4, 0.6)
    assert back.rescale == (2.0, -1024.0)
    np.testing.assert_array_equal(back.counts, counts)


def test_ct_series_round_trip(tmp_path):
    counts = rng_counts((5, 16, 12), np.int16)
    scan = Scan(counts=counts, kind=ScanKind.CT_VOLUME, spacing_mm=(1.25, 0.5, 0.6), rescale=(1.0, -1024.0),
                scan_id=UID_ID, scanner_id="CT-1", acquired_at=WHEN, metadata={"lane": 3})
    folder = tmp_path / "series"
    paths = write_dicom_series(scan, folder)
    assert [p.name for p in paths] == [f"slice_{i:04d}.dcm" for i in range(5)]
    for index, path in enumerate(paths):
        ds = assert_part10(path, dcmuid.CTImageStorage)
        assert ds.InstanceNumber == index + 1
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(index * 1.25)
        assert ct_slice_series(path) == UID_ID

    shuffled = list(paths)
    random.Random(1).shuffle(shuffled)
    back = read_dicom_series(shuffled)
    assert_same_scan(back, scan)
    assert back.scan_id == UID_ID
    assert back.source_format is ScanFormat.DICOM_SERIES
    assert back.source_path == str(folder)


def test_ct_series_without_spacing_or_uid(tmp_path):
    scan = Scan(counts=rng_counts((3, 4, 4), np.uint16), kind=ScanKind.CT_VOLUME)
    back = read_dicom_series(write_dicom_series(scan, tmp_path))
    np.testing.assert_array_equal(back.counts, scan.counts)
    assert back.spacing_mm is None
    assert dcmuid.UID(back.scan_id).is_valid


def test_file_without_preamble_or_meta_is_read(tmp_path):
    scan = Scan(counts=rng_counts((6, 5), np.uint16), kind=ScanKind.SINGLE_ENERGY, scan_id=UID_ID,
                metadata={"bag_tag": "0125 123456"})
    write_dicom(scan, tmp_path / "full.dcm")
    ds = pydicom.dcmread(tmp_path / "full.dcm")
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    back = read_dicom(bare)
    np.testing.assert_array_equal(back.counts, scan.counts)
    assert back.scan_id == UID_ID
    assert dict(back.metadata) == {"bag_tag": "0125 123456"}  # private block read back from implicit VR


def test_bad_acquisition_datetime_is_none(tmp_path):
    path = tmp_path / "se.dcm"
    write_dicom(Scan(counts=rng_counts((3, 3), np.uint8), kind=ScanKind.SINGLE_ENERGY, acquired_at=WHEN), path)
    ds = pydicom.dcmread(path)
    ds.AcquisitionDateTime = "20241399"
    ds.save_as(path)
    assert read_dicom(path).acquired_at == WHEN  # falls back to Content Date/Time
    ds.ContentDate = "notadate"
    ds.save_as(path)
    assert read_dicom(path).acquired_at is None
    ds.AcquisitionDateTime = "20240517134507.25+0200"
    ds.save_as(path)
    assert read_dicom(path).acquired_at == WHEN  # naive, scanner-local


# -- writer refusals ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "counts", "match"),
    [
        (ScanKind.SINGLE_ENERGY, np.zeros((4, 4), np.float32), "8- or 16-bit unsigned counts; got float32"),
        (ScanKind.DUAL_ENERGY, np.zeros((2, 4, 4), np.int32), "8- or 16-bit unsigned counts; got int32"),
        (ScanKind.CT_VOLUME, np.zeros((2, 4, 4), np.float32), "16-bit integer stored values; got float32"),
        (ScanKind.CT_VOLUME, np.zeros((2, 4, 4), np.uint8), "16-bit integer stored values; got uint8"),
    ],
)
def test_write_refuses_unstorable_counts(tmp_path, kind, counts, match):
    with pytest.raises(ValueError, match=match):
        write_dicom(Scan(counts=counts, kind=kind), tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_write_refuses_counts_beyond_bits_stored(tmp_path):
    scan = Scan(counts=np.full((3, 3), 5000, np.uint16), kind=ScanKind.SINGLE_ENERGY, bits_stored=12)
    with pytest.raises(ValueError, match="bits_stored"):
        write_dicom(scan, tmp_path / "x.dcm")


def test_write_series_refuses_non_ct(tmp_path):
    with pytest.raises(ValueError, match="ct_volume"):
        write_dicom_series(Scan(counts=np.zeros((3, 3), np.uint16), kind=ScanKind.SINGLE_ENERGY), tmp_path)


# -- pydicom's bundled files -----------------------------------------------------------


def test_ct_small_is_a_one_slice_volume_of_stored_values():
    path = bundled("CT_small.dcm")
    scan = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert scan.kind is ScanKind.CT_VOLUME
    assert scan.counts.shape == (1, 128, 128)
    np.testing.assert_array_equal(scan.counts[0], ds.pixel_array)  # not rescaled
    assert scan.scan_id == ds.SOPInstanceUID
    assert scan.rescale == (1.0, -1024.0)
    assert scan.spacing_mm == pytest.approx((5.0, 0.661468, 0.661468))
    assert scan.energies_kv == (120.0,)
    assert scan.scanner_id == "CT01_OC0"  # Station Name: no Device Serial Number
    assert scan.acquired_at == datetime(1997, 4, 30, 11, 29, 36)
    assert (scan.modality, scan.source_format) == ("CT", ScanFormat.DICOM)
    assert ct_slice_series(path) == ds.SeriesInstanceUID


def test_compressed_ct_jpeg2000_decodes():
    scan = read_dicom(bundled("693_J2KI.dcm"))
    assert scan.kind is ScanKind.CT_VOLUME
    assert scan.counts.shape == (1, 512, 512)
    assert scan.counts.dtype == np.int16
    assert scan.counts.std() > 100  # real anatomy, not a blank frame


# The SC_rgb_* images are horizontal bands, 10 rows each: red, pink, green,
# light green, blue, light blue, black, dark grey, light grey, white.
BANDS = {0: (255, 0, 0), 2: (0, 255, 0), 4: (0, 0, 255), 6: (0, 0, 0), 9: (255, 255, 255)}


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_rle.dcm",  # RLE lossless
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless (process 14)
        "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS near-lossless
        "SC_rgb_gdcm_KY.dcm",  # JPEG 2000
    ],
)
def test_bundled_colour_images_decode_to_rgb_bands(name):
    scan = read_dicom(bundled(name))
    assert scan.kind is ScanKind.PSEUDO_COLOUR
    assert scan.counts.shape == (100, 100, 3) and scan.counts.dtype == np.uint8
    for band, colour in BANDS.items():
        mean = scan.counts[band * 10 + 2 : band * 10 + 8].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, colour, atol=12, err_msg=f"band {band} of {name}")


def test_lossless_colour_codecs_agree():
    reference = read_dicom(bundled("SC_rgb_rle.dcm")).counts
    np.testing.assert_array_equal(read_dicom(bundled("SC_rgb_jpeg_gdcm.dcm")).counts, reference)


def test_deflated_monochrome_secondary_capture():
    scan = read_dicom(bundled("image_dfl.dcm"))
    assert scan.kind is ScanKind.SINGLE_ENERGY
    assert scan.counts.shape == (512, 512) and scan.counts.dtype == np.uint8
    assert scan.modality == "OT"


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("MR_small.dcm", UnsupportedScanError, ["MR Image Storage", "modality MR"]),
        ("MR_small_RLE.dcm", UnsupportedScanError, ["modality MR"]),
        ("rtplan.dcm", UnsupportedScanError, ["RT Plan Storage"]),
        ("waveform_ecg.dcm", UnsupportedScanError, ["ECG"]),
        ("SC_rgb_rle_16bit.dcm", UnsupportedScanError, ["16-bit"]),
        ("SC_rgb_rle_32bit.dcm", UnsupportedScanError, ["32-bit"]),
        ("SC_rgb_rle_2frame.dcm", UnsupportedScanError, ["not a dual-energy pair"]),
        ("JPGExtended.dcm", UnsupportedScanError, ["JPEG Extended"]),
        ("MR_truncated.dcm", ScanReadError, []),
        ("badVR.dcm", ScanReadError, []),
        ("rtplan_truncated.dcm", ScanReadError, []),
        ("no_meta.dcm", CorruptScanError, ["not a DICOM file"]),
    ],
)
def test_bundled_files_refused(name, error, words):
    path = bundled(name)
    with pytest.raises(error) as err:
        read_dicom(path)
    assert_one_line(err, path)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("path", ALL_BUNDLED, ids=lambda p: os.path.relpath(p, TESTDATA))
def test_every_bundled_file_reads_or_is_refused_cleanly(path):
    try:
        scan = read_dicom(path)
    except ScanReadError as err:
        assert "\n" not in str(err)
        assert err.path == path
    else:
        assert isinstance(scan, Scan)
        assert scan.counts.dtype.isnative


def test_bundled_files_cover_the_codecs():
    assert len(ALL_BUNDLED) > 50
    read = [p for p in ALL_BUNDLED if _reads(p)]
    assert len(read) >= 25


def _reads(path: str) -> bool:
    try:
        read_dicom(path)
    except ScanReadError:
        return False
    return True


# -- budgets and hostile input ------------------------------------------------------------


def test_huge_header_refused_before_decoding(tmp_path):
    path = tmp_path / "small.dcm"
    write_dicom(Scan(counts=np.zeros((4, 4), np.uint16), kind=ScanKind.SINGLE_ENERGY), path)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000  # claims 3.6 gigapixels, carries 32 bytes
    ds.save_as(path)
    with pytest.raises(ScanTooLargeError) as err:
        read_dicom(path)
    assert_one_line(err, str(path))


def test_small_budget_refuses_normal_files(tmp_path):
    path = tmp_path / "ct.dcm"
    write_dicom(Scan(counts=np.zeros((4, 10, 10), np.int16), kind=ScanKind.CT_VOLUME), path)
    assert read_dicom(path, limits=ReadLimits(max_pixels=400)).counts.shape == (4, 10, 10)
    with pytest.raises(ScanTooLargeError):
        read_dicom(path, limits=ReadLimits(max_pixels=399))
    with pytest.raises(ScanTooLargeError):
        read_dicom(bundled("CT_small.dcm"), limits=ReadLimits(max_pixels=1000))
    paths = write_dicom_series(Scan(counts=np.zeros((4, 10, 10), np.int16), kind=ScanKind.CT_VOLUME), tmp_path / "s")
    with pytest.raises(ScanTooLargeError):
        read_dicom_series(paths, limits=ReadLimits(max_pixels=399))


def test_nan_in_float_pixel_data_is_corrupt(tmp_path):
    path = tmp_path / "f.dcm"
    write_dicom(Scan(counts=np.zeros((3, 4), np.uint16), kind=ScanKind.SINGLE_ENERGY), path)
    ds = pydicom.dcmread(path)
    del ds.PixelData, ds.PixelRepresentation
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    np.testing.assert_array_equal(read_dicom(path).counts, values)  # finite floats are fine
    values[1, 2] = np.nan
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    with pytest.raises(CorruptScanError, match="NaN"):
        read_dicom(path)


def test_unknown_transfer_syntax_is_unsupported(tmp_path):
    path = tmp_path / "u.dcm"
    write_dicom(Scan(counts=np.zeros((3, 4), np.uint16), kind=ScanKind.SINGLE_ENERGY), path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    ds.save_as(path)
    with pytest.raises(UnsupportedScanError, match="transfer syntax 1.2.3.4.5"):
        read_dicom(path)


def test_multi_frame_projection_that_is_not_dual_energy(tmp_path):
    path = tmp_path / "m.dcm"
    write_dicom(Scan(counts=np.zeros((2, 3, 4), np.uint16), kind=ScanKind.DUAL_ENERGY), path)
    ds = pydicom.dcmread(path)
    ds.FrameLabelVector = ["FRAME 1", "FRAME 2"]
    ds.save_as(path)
    with pytest.raises(UnsupportedScanError, match="not a dual-energy pair"):
        read_dicom(path)


def test_not_dicom_at_all(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some text, long enough to look like something " * 20)
    with pytest.raises(ScanReadError) as err:
        read_dicom(path)
    assert_one_line(err, str(path))
    assert ct_slice_series(path) is None
    assert ct_slice_series(tmp_path / "missing.dcm") is None
    with pytest.raises(CorruptScanError):
        read_dicom(tmp_path / "missing.dcm")


@pytest.fixture(scope="module")
def dual_file_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("dual") / "de.dcm"
    write_dicom(
        Scan(counts=rng_counts((2, 16, 16), np.uint16), kind=ScanKind.DUAL_ENERGY, energies_kv=(80, 140),
             acquired_at=WHEN, metadata={"bag_tag": "X"}),
        path,
    )
    return path.read_bytes()


def test_truncated_files_are_refused(tmp_path, dual_file_bytes):
    size = len(dual_file_bytes)
    path = tmp_path / "t.dcm"
    for cut in sorted({0, 1, 64, 128, 131, 132, 140, 200, 400, size // 2, size - 600, size - 2, size - 1}):
        path.write_bytes(dual_file_bytes[:cut])
        with pytest.raises(ScanReadError) as err:
            read_dicom(path)
        assert_one_line(err, str(path))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mangled_bytes_never_escape_as_other_errors(tmp_path, dual_file_bytes, data):
    raw = bytearray(dual_file_bytes)
    header_end = len(raw) - 2 * 16 * 16 * 2  # flip bytes in the header, where parsing happens
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, header_end - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path = tmp_path / "m.dcm"
    path.write_bytes(bytes(raw[:cut]))
    try:
        read_dicom(path)
    except ScanReadError as err:
        assert "\n" not in str(err)


# -- series refusals --------------------------------------------------------------------


def _volume(slices=4, rows=6, cols=5, scan_id=UID_ID) -> Scan:
    return Scan(counts=rng_counts((slices, rows, cols), np.int16), kind=ScanKind.CT_VOLUME,
                spacing_mm=(2.0, 1.0, 1.0), scan_id=scan_id)


def test_series_refuses_mixed_series(tmp_path):
    a = write_dicom_series(_volume(scan_id="1.2.3.1"), tmp_path / "a")
    b = write_dicom_series(_volume(scan_id="1.2.3.2"), tmp_path / "b")
    with pytest.raises(CorruptScanError, match="Series Instance UID"):
        read_dicom_series(a + b[:1])


def test_series_refuses_mismatched_rows(tmp_path):
    a = write_dicom_series(_volume(rows=6), tmp_path / "a")
    b = write_dicom_series(_volume(rows=7), tmp_path / "b")  # same scan id, so same series UID
    with pytest.raises(CorruptScanError, match="Rows"):
        read_dicom_series(a[:2] + b[2:])


def test_series_refuses_a_gap_or_duplicate(tmp_path):
    paths = write_dicom_series(_volume(slices=5), tmp_path)
    with pytest.raises(CorruptScanError, match="missing"):
        read_dicom_series(paths[:2] + paths[3:])
    with pytest.raises(CorruptScanError, match="share"):
        read_dicom_series(paths + paths[:1])


def test_series_slice_positions(tmp_path):
    paths = write_dicom_series(_volume(slices=3), tmp_path)
    for path in paths:  # no positions: order by Instance Number, step from Slice Thickness
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    scan = read_dicom_series(paths[::-1])
    np.testing.assert_array_equal(scan.counts, _volume(slices=3).counts)
    assert scan.spacing_mm == (2.0, 1.0, 1.0)

    ds = pydicom.dcmread(paths[1])
    del ds.InstanceNumber
    ds.save_as(paths[1])
    with pytest.raises(CorruptScanError, match="neither Image Position"):
        read_dicom_series(paths)


def test_series_refuses_non_slices(tmp_path):
    multi = tmp_path / "ct.dcm"
    write_dicom(_volume(), multi)
    with pytest.raises(UnsupportedScanError, match="not a single CT slice"):
        read_dicom_series([multi])
    assert ct_slice_series(multi) is None  # a multi-frame volume is not grouped as a slice
    with pytest.raises(CorruptScanError):
        read_dicom_series([])


@pytest.mark.parametrize(
    ("sop_class", "modality", "fmt"),
    [
        (dcmuid.ComputedRadiographyImageStorage, "CR", ScanFormat.DICOM),
        (dcmuid.DigitalXRayImageStorageForPresentation, "DX", ScanFormat.DICOM),
        (dcmuid.DigitalXRayImageStorageForProcessing, "DX", ScanFormat.DICOM),
        (dcmuid.DICOSDigitalXRayImageStorageForPresentation, "DX", ScanFormat.DICOS),
    ],
)
def test_plain_dx_and_cr_are_read(tmp_path, sop_class, modality, fmt):
    scan = Scan(np.arange(12 * 9, dtype=np.uint16).reshape(12, 9), kind=ScanKind.SINGLE_ENERGY, spacing_mm=(0.5, 0.5))
    path = tmp_path / "plain.dcm"
    write_dicom(scan, path)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    ds.save_as(path, enforce_file_format=True)
    again = read_dicom(path)
    assert again.kind is ScanKind.SINGLE_ENERGY and again.modality == modality and again.source_format is fmt
    np.testing.assert_array_equal(again.counts, scan.counts)
    assert again.spacing_mm == (0.5, 0.5)


def test_dicos_dx_for_presentation_is_written_on_request(tmp_path):
    scan = Scan(np.full((6, 7), 300, np.uint16), kind=ScanKind.SINGLE_ENERGY)
    write_dicom(scan, tmp_path / "shown.dcm", intent="presentation")
    ds = pydicom.dcmread(tmp_path / "shown.dcm")
    assert ds.SOPClassUID == dcmuid.DICOSDigitalXRayImageStorageForPresentation
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    np.testing.assert_array_equal(read_dicom(tmp_path / "shown.dcm").counts, scan.counts)
    with pytest.raises(ValueError, match="intent"):
        write_dicom(scan, tmp_path / "x.dcm", intent="display")


@requires_dciodvfy
def test_ct_slices_pass_an_independent_validator(tmp_path):
    # dicom3tools knows the CT Image IOD (not yet the DICOS ones): no errors allowed.
    volume = Scan(np.full((3, 8, 8), 1024, np.uint16), kind=ScanKind.CT_VOLUME, spacing_mm=(2, 1, 1),
                  rescale=(1, -1024))
    first = write_dicom_series(volume, tmp_path)[0]
    output, errors = dciodvfy(first)
    assert "CTImage" in output
    assert errors == []
