"""The DICOS Threat Detection Report: what it holds, an independent validator, and a DICOS toolkit reading it.

pyDICOS wraps Stratovan's DICOS toolkit, the reference implementation DICOS
consoles are built on; its tests skip where it is not installed (it ships
wheels for CPython 3.10 and 3.11 on x86-64 only).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset
from pydicom.uid import UID

from nii.annotate.tdr import THREAT_CATEGORY, machine_tdr, tdr_uid, write_tdr
from nii.detect.fuse import Alert, decide, fuse_regions
from nii.detect.regions import ModelIdentity, Region
from nii.ingest import read_scan
from nii.ingest.dicom import write_dicom
from nii.scan import Scan, ScanKind
from tests.conftest import dciodvfy, make_scan, requires_dciodvfy

DETECTOR = ModelIdentity("contraband-fcos", "1.0.0", "b3" * 32)
RULE = ModelIdentity("rule-explosive", "1.1.0", "59" * 32)
MODELS = (DETECTOR, RULE)
PROFILE = "scanner-7/2026-01"
CREATED = datetime(2026, 3, 4, 5, 6, 30, 250000)
BAG_TAG = "0123456789"

# The CT volume pyDICOS writes for the converse test: (slices, rows, cols),
# spacing in mm in the same order, and a dense block in it.
PYDICOS_SHAPE = (16, 32, 32)
PYDICOS_SPACING = (2.5, 0.9, 0.8)
PYDICOS_BLOCK = (slice(4, 8), slice(10, 20), slice(5, 15))
PYDICOS_DENSE = 3000
PYDICOS_OOI_ID = "BT42"

# Stratovan's toolkit writes UIDs with leading zeros; pydicom warns on reading them.
stratovan_uids = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


# -- inputs ------------------------------------------------------------------


def radiograph() -> tuple[Scan, list[Alert]]:
    """A 2D bag: an alarming explosive with a mask, an advisory knife on a box off the pixel grid."""
    scan = Scan(np.full((20, 30), 5000, np.uint16), kind=ScanKind.SINGLE_ENERGY, spacing_mm=(0.8, 0.8),
                acquired_at=datetime(2026, 3, 4, 5, 6, 7), metadata={"bag_tag": BAG_TAG})
    mask = np.zeros(scan.spatial_shape, bool)
    mask[4:8, 5:9] = True
    mask[4, 5] = False  # not the whole box: the bitmap must carry the shape
    regions = [
        Region("explosive", 0.9, (5, 4, 9, 8), RULE, mask=mask, explanation="organic mass 420 g, Zeff 7.2",
               measurements={"mass_g": 420.0, "zeff": 7.2}),
        Region("knife", 0.3, (10.5, 10, 20, 15), DETECTOR),
    ]
    return scan, fuse_regions(regions, passes=lambda region: region.score >= 0.5)


def volume() -> tuple[Scan, list[Alert]]:
    """A CT bag: an alarming explosive block with a mask, an advisory firearm through every slice."""
    scan = Scan(np.zeros((6, 20, 30), np.uint16), kind=ScanKind.CT_VOLUME, spacing_mm=(2.0, 1.0, 1.0),
                metadata={"bag_tag": BAG_TAG})
    mask = np.zeros(scan.spatial_shape, bool)
    mask[1:3, 4:8, 5:9] = True
    mask[2, 7, 8] = False
    regions = [
        Region("explosive", 0.8, (5, 4, 1, 9, 8, 3), RULE, mask=mask,
               measurements={"mass_g": 310.0, "density_g_cm3": 1.6}),
        Region("firearm", 0.4, (10, 10, 0, 20, 15, 6), DETECTOR),
    ]
    return scan, fuse_regions(regions, passes=lambda region: region.score >= 0.5)


CASES = {"radiograph": radiograph, "volume": volume}


def tdr_of(scan: Scan, alerts: list[Alert], **changes) -> Dataset:
    options = {"decision": decide(alerts), "models": MODELS, "profile_id": PROFILE, "processing_ms": 123.4,
               "created": CREATED, **changes}
    return machine_tdr(scan, alerts, **options)


def written(tmp_path: Path, scan: Scan, alerts: list[Alert]) -> Path:
    path = tmp_path / "tdr.dcm"
    write_tdr(tdr_of(scan, alerts), path)
    return path


def roi(alert: Alert) -> tuple[list[float], list[float]]:
    """Threat ROI Base and Extents a box should give: (x, y, z), a radiograph one slice thick."""
    half = len(alert.box) // 2
    start, end = list(alert.box[:half]), list(alert.box[half:])
    if half == 2:
        start, end = [*start, 0], [*end, 1]
    return start, [e - s for s, e in zip(start, end)]


def mask_in_roi(alert: Alert, scan: Scan) -> np.ndarray:
    """The alert's mask within its ROI, ``(z, y, x)``."""
    (x, y, z), (dx, dy, dz) = ([int(v) for v in values] for values in roi(alert))
    mask = alert.mask if scan.kind is ScanKind.CT_VOLUME else alert.mask[None]
    return mask[z:z + dz, y:y + dy, x:x + dx]


def bitmap_mask(bitmap: bytes, extents: list[float]) -> np.ndarray:
    """Decode a Threat ROI Bitmap: one bit per voxel, x fastest, LSB first."""
    x, y, z = (int(v) for v in extents)
    return np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")[: x * y * z].reshape(z, y, x) == 1


def stored_as(scan: Scan) -> UID:
    """The SOP class write_dicom gives a scan of this kind."""
    return dcmuid.DICOSCTImageStorage if scan.kind is ScanKind.CT_VOLUME else \
        dcmuid.DICOSDigitalXRayImageStorageForProcessing


def uids(dataset: Dataset) -> list[str]:
    """Every UI value in a dataset, its sequences and its file meta."""
    found = []
    for element in [*getattr(dataset, "file_meta", []), *dataset]:
        if element.VR == "SQ":
            found += [uid for item in element.value for uid in uids(item)]
        elif element.VR == "UI" and element.value:
            found.append(str(element.value))
    return found


# -- what the report holds ---------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_report_round_trips_with_every_alert_as_a_pto(tmp_path, case):
    scan, alerts = CASES[case]()
    ds = pydicom.dcmread(written(tmp_path, scan, alerts))
    assert ds.SOPClassUID == dcmuid.DICOSThreatDetectionReportStorage
    assert ds.file_meta.TransferSyntaxUID == dcmuid.ExplicitVRLittleEndian
    assert ds.Modality == "TDR" and ds.TDRType == "MACHINE"
    assert ds.AlarmDecision == "ALARM" and ds.AlarmDecisionTime == "20260304050630.250000"
    assert ds.NumberOfTotalObjects == len(ds.ThreatSequence) == len(alerts) == 2
    assert ds.NumberOfAlarmObjects == 1
    assert ds.TotalProcessingTime == pytest.approx(123.4)
    assert (ds.PatientID, ds.OOIType) == (BAG_TAG, "BAGGAGE")  # DICOS keeps the OOI ID in Patient ID

    expected_image = stored_as(scan), tdr_uid(scan.scan_id)  # a scan not from DICOM: as write_dicom would store it
    scanned = ds.ReferencedStudySequence[0]  # DICOS: Referenced Scans Sequence
    assert (scanned.ReferencedSOPClassUID, scanned.ReferencedSOPInstanceUID) == expected_image
    for item, alert in zip(ds.ThreatSequence, alerts, strict=True):
        assert item.PotentialThreatObjectID == alert.id
        representation = item.PTORepresentationSequence[0]
        image = representation.ReferencedInstanceSequence[0]
        assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == expected_image
        voxels = representation.ThreatROIVoxelSequence[0]
        assert (list(voxels.ThreatROIBase), list(voxels.ThreatROIExtents)) == roi(alert)
        assessment = item.ATDAssessmentSequence[0]
        assert assessment.ThreatCategory == THREAT_CATEGORY[alert.dicos_category]
        assert assessment.ATDAssessmentFlag == ("THREAT" if alert.alarm else "UNKNOWN")
        assert assessment.ATDAssessmentProbability == pytest.approx(alert.score)
        assert assessment.ThreatCategoryDescription.startswith(alert.label)
        for model in alert.models:  # who found it, down to the artifact
            assert f"{model.name} {model.version} sha256 {model.sha256}" in assessment.ThreatCategoryDescription
    assert [a.ThreatCategory for item in ds.ThreatSequence for a in item.ATDAssessmentSequence] == \
        ["EXPLOSIVE", "PI"]

    algorithm = list(ds.ThreatDetectionAlgorithmAndVersion)
    assert algorithm[0] == "nii" and f"-calibration={PROFILE}" in algorithm
    for model in MODELS:  # every model that ran, found something or not
        assert f"-{model.name}={model.version} sha256:{model.sha256[:16]}" in algorithm


@pytest.mark.parametrize("case", CASES)
def test_masks_become_threat_roi_bitmaps(tmp_path, case):
    scan, alerts = CASES[case]()
    ds = pydicom.dcmread(written(tmp_path, scan, alerts))
    masked, boxed = (item.PTORepresentationSequence[0] for item in ds.ThreatSequence)
    voxels = masked.ThreatROIVoxelSequence[0]
    np.testing.assert_array_equal(bitmap_mask(voxels.ThreatROIBitmap, voxels.ThreatROIExtents),
                                  mask_in_roi(alerts[0], scan))
    assert not boxed.ThreatROIVoxelSequence[0].ThreatROIBitmap  # no mask: present (DICOS requires it) but empty
    # What rules measured; -1 marks what nothing measured, where DICOS requires a value.
    measured = alerts[0].measurements
    assert masked.Mass == pytest.approx(measured["mass_g"])
    assert masked.Density == pytest.approx(measured.get("density_g_cm3", -1))
    assert (boxed.Mass, boxed.Density) == (-1, -1)


@pytest.mark.filterwarnings("ignore::UserWarning")  # write_dicom's own headers are not under test here
def test_scan_from_dicos_is_referenced_by_its_own_uids(tmp_path):
    source = tmp_path / "ct.dcm"
    write_dicom(make_scan(ScanKind.CT_VOLUME), source)
    scan = read_scan(source)
    header = pydicom.dcmread(source, stop_before_pixels=True)
    ds = tdr_of(scan, [])
    scanned = ds.ReferencedStudySequence[0]
    assert scanned.ReferencedSOPInstanceUID == scan.scan_id == header.SOPInstanceUID
    assert scanned.ReferencedSOPClassUID == dcmuid.DICOSCTImageStorage
    assert ds.StudyInstanceUID == header.StudyInstanceUID  # the report joins the scan's study
    assert ds.FrameOfReferenceUID == header.FrameOfReferenceUID
    assert ds.PatientID == "BT123"  # make_scan's bag tag, kept in write_dicom's metadata block

    source.unlink()  # a file gone since: the scan's own UID still, the rest derived
    ds = tdr_of(scan, [])
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == scan.scan_id
    assert ds.StudyInstanceUID == tdr_uid(scan.scan_id, "study")


def test_clear_scan_reports_no_objects_but_names_the_scan(tmp_path):
    scan, _ = radiograph()
    ds = pydicom.dcmread(written(tmp_path, scan, []))
    assert ds.AlarmDecision == "CLEAR"
    assert ds.NumberOfTotalObjects == ds.NumberOfAlarmObjects == 0
    assert len(ds.ThreatSequence) == 0
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == tdr_uid(scan.scan_id)


def test_uids_are_valid_and_the_same_for_the_same_analysis():
    scan, alerts = volume()
    ds = tdr_of(scan, alerts)
    # Ours: all but the standard's SOP classes and transfer syntax, and pydicom's implementation class.
    ours = [uid for uid in uids(ds)
            if not uid.startswith("1.2.840.10008.") and uid != dcmuid.PYDICOM_IMPLEMENTATION_UID]
    assert ours and all(uid.startswith("2.25.") and UID(uid).is_valid for uid in ours)
    assert tdr_of(scan, alerts, created=datetime(2027, 1, 1)).SOPInstanceUID == ds.SOPInstanceUID
    assert tdr_of(scan, alerts, models=[DETECTOR]).SOPInstanceUID != ds.SOPInstanceUID
    assert tdr_of(scan, alerts, profile_id="other").SOPInstanceUID != ds.SOPInstanceUID
    other = scan.replace(counts=np.ones_like(scan.counts))
    assert tdr_of(other, alerts).SeriesInstanceUID != ds.SeriesInstanceUID
    assert tdr_uid("a", "b") != tdr_uid("ab")


def long_text() -> tuple[Scan, list[Alert], str]:
    """A bag tag and an explanation far over their VRs' lengths, non-ASCII, with backslashes."""
    scan, alerts = radiograph()
    # In LO, a backslash would split the value in two; control characters
    # (a sidecar's bag tag) are in no text VR.
    tag = "Gepäck\\\u0000\u001b" + "9" * 100
    mask = np.ones(scan.spatial_shape, bool)
    alerts += fuse_regions([Region("knife", 0.7, (20, 15, 40, 25), DETECTOR, mask=mask,  # box over the edge
                                   explanation="C:\\scans ünïcode " * 900)])
    return scan.replace(metadata={"bag_tag": tag}), alerts, "p" * 100


def test_text_is_cut_to_its_vr():
    scan, alerts, profile = long_text()
    ds = tdr_of(scan, alerts, profile_id=profile)
    assert ds.PatientID.startswith("Gepäck/9") and len(ds.PatientID.encode()) == 64  # bytes, as validators count
    assert all(len(value.encode()) <= 64 for value in ds.ThreatDetectionAlgorithmAndVersion)
    description = ds.ThreatSequence[-1].ATDAssessmentSequence[0].ThreatCategoryDescription
    assert "C:\\scans" in description and len(description.encode()) <= 10240
    assert len(ds.StudyID) <= 16
    assert not ds.ThreatSequence[-1].PTORepresentationSequence[0].ThreatROIVoxelSequence[0].ThreatROIBitmap


@pytest.mark.parametrize("changes, message", [
    ({"decision": "MAYBE"}, "decision"),
    ({"processing_ms": -1.0}, "processing_ms"),
    ({"processing_ms": float("nan")}, "processing_ms"),
])
def test_bad_arguments_are_refused(changes, message):
    scan, alerts = radiograph()
    with pytest.raises(ValueError, match=message):
        tdr_of(scan, alerts, **changes)


def test_box_of_the_wrong_dimension_is_refused():
    scan, _ = volume()
    _, flat_alerts = radiograph()
    with pytest.raises(ValueError, match="6-value boxes"):
        tdr_of(scan, flat_alerts)


# -- an independent validator ------------------------------------------------


@requires_dciodvfy
@pytest.mark.parametrize("case", [*CASES, "clear", "long text"])
def test_report_passes_dciodvfy(tmp_path, case):
    if case in CASES:
        scan, alerts = CASES[case]()
        ds = tdr_of(scan, alerts)
    elif case == "clear":
        ds = tdr_of(radiograph()[0], [])
    else:
        scan, alerts, profile = long_text()
        ds = tdr_of(scan, alerts, profile_id=profile)
    write_tdr(ds, tmp_path / "tdr.dcm")
    _, errors = dciodvfy(tmp_path / "tdr.dcm")
    # This dicom3tools has no DICOS IOD tables, so it cannot find the TDR's;
    # it still checks every attribute against its VR and the dictionary.
    assert [line for line in errors if "Information Object Not found" not in line] == []


# -- a DICOS toolkit reads it ------------------------------------------------


def dicos_toolkit():
    """pyDICOS (the toolkit's binding) and pydicos (its Python loaders), or skip the test."""
    try:
        import pyDICOS
        import pydicos
    except ImportError as exc:  # not installed, or a wheel for another platform
        pytest.skip(f"pyDICOS cannot be imported: {exc}")
    return pyDICOS, pydicos


def toolkit_read(pyDICOS, path: Path):
    """Read a TDR with Stratovan's toolkit, which checks it against DICOS as it reads: no complaint allowed."""
    tdr, log = pyDICOS.TDR(), pyDICOS.ErrorLog()
    read = tdr.Read(pyDICOS.Filename(str(path)), log, None)
    complaints = log.GetErrorLog().Get()
    assert read and not complaints, complaints
    return tdr


@pytest.mark.parametrize("case", CASES)
def test_pydicos_reads_the_report(tmp_path, case):
    pyDICOS, pydicos = dicos_toolkit()
    scan, alerts = CASES[case]()
    path = written(tmp_path, scan, alerts)
    tdr = toolkit_read(pyDICOS, path)
    assert tdr.GetTDRType() == pyDICOS.TDR.TDR_TYPE.enumMachine
    assert tdr.GetAlarmDecision() == pyDICOS.TDR.ALARM_DECISION.enumAlarm
    assert tdr.GetNumPTOs() == len(alerts) and tdr.GetNumAlarmObjects() == 1
    assert tdr.GetOOIType() == pyDICOS.OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage
    assert tdr.GetOOIID().Get() == BAG_TAG

    data = pydicos.TDRLoader(path).get_data()
    assert data["ATR"]["manufacturer"] == "nii" and data["ATR"]["parameters"]["calibration"] == PROFILE
    assert data["ATR"]["parameters"][DETECTOR.name].startswith(DETECTOR.version)
    for pto, alert in zip(data["PTOs"], alerts, strict=True):
        assert pto["ID"] == alert.id
        # Stratovan's toolkit gives the ROI of baggage PTOs only; these are baggage.
        assert ([pto["Base"][a] for a in "xyz"], [pto["Extent"][a] for a in "xyz"]) == roi(alert)
        assert pto["Assessment"]["probability"] == pytest.approx(alert.score)
        assert pto["Assessment"]["flag"] == (pyDICOS.TDR.ASSESSMENT_FLAG.enumThreat if alert.alarm
                                             else pyDICOS.TDR.ASSESSMENT_FLAG.enumUnknown)
    assert [pto["Assessment"]["category"] for pto in data["PTOs"]] == [
        pyDICOS.TDR.THREAT_CATEGORY.enumExplosive, pyDICOS.TDR.THREAT_CATEGORY.enumProhibitedItem]
    np.testing.assert_array_equal(data["PTOs"][0]["Bitmap"] == 1, mask_in_roi(alerts[0], scan))


# -- and the converse: a DICOS toolkit's CT into nii -------------------------


def pydicos_ct(path: str | Path, *, jpeg_lossless: bool = False) -> Path:
    """Write a small DICOS CT with pyDICOS (Stratovan's toolkit); skip the test without it.

    A ``PYDICOS_SHAPE`` volume of zeros with ``PYDICOS_DENSE`` in
    ``PYDICOS_BLOCK``, voxel spacing ``PYDICOS_SPACING``, one bag with OOI
    ID ``PYDICOS_OOI_ID``. Explicit VR Little Endian, or lossless JPEG as
    pyDICOS's own ``CTLoader`` writes.
    """
    pyDICOS, _ = dicos_toolkit()
    CT = pyDICOS.CT
    ct = CT(CT.OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage, CT.OOI_IMAGE_CHARACTERISTICS.enumHighEnergy,
            CT.IMAGE_FLAVOR.enumVolume, CT.PHOTOMETRIC_INTERPRETATION.enumMonochrome2)
    ct.SetOOIID(pyDICOS.DcsLongString(PYDICOS_OOI_ID))
    ct.SetImageAcquisitionDateAndTime(pyDICOS.DcsDate(2026, 3, 4), pyDICOS.DcsTime(5, 6, 7, 0))
    ct.SetImageAcquisitionDuration(5.2)  # the toolkit refuses an ORIGINAL image acquired in no time
    ct.SetNumberOfSections(1)
    section = ct.GetSectionByIndex(0)
    section.SetPlaneOrientation(pyDICOS.Vector3Dfloat(1, 0, 0), pyDICOS.Vector3Dfloat(0, 1, 0))
    section.SetPositionInMM(0, 0, 0)
    slice_mm, row_mm, col_mm = PYDICOS_SPACING
    section.SetSpacingInMM(col_mm, row_mm, slice_mm)  # the toolkit's order: x, y, z
    section.SetSliceThickness(slice_mm)
    counts = np.zeros(PYDICOS_SHAPE, np.uint16)
    counts[PYDICOS_BLOCK] = PYDICOS_DENSE
    pixels = section.GetPixelData()
    depth, height, width = PYDICOS_SHAPE
    pixels.Allocate(pyDICOS.Volume.IMAGE_DATA_TYPE.enumUnsigned16Bit, width, height, depth)
    pixels.set_data(pixels, counts)
    syntax = CT.TRANSFER_SYNTAX.enumLosslessJPEG if jpeg_lossless else CT.TRANSFER_SYNTAX.enumLittleEndianExplicit
    log = pyDICOS.ErrorLog()
    if not ct.Write(pyDICOS.Filename(str(path)), log, syntax):
        raise RuntimeError(f"pyDICOS could not write {path}: {log.GetErrorLog().Get()}")
    return Path(path)


@stratovan_uids
@pytest.mark.parametrize("jpeg_lossless", [False, True], ids=["explicit-little-endian", "lossless-jpeg"])
def test_nii_reads_a_pydicos_ct(tmp_path, jpeg_lossless):
    path = pydicos_ct(tmp_path / "bag.dcs", jpeg_lossless=jpeg_lossless)
    scan = read_scan(path)
    assert scan.kind is ScanKind.CT_VOLUME and scan.counts.shape == PYDICOS_SHAPE
    assert scan.spacing_mm == pytest.approx(PYDICOS_SPACING)
    expected = np.zeros(PYDICOS_SHAPE, np.uint16)
    expected[PYDICOS_BLOCK] = PYDICOS_DENSE
    np.testing.assert_array_equal(scan.counts, expected)
    assert scan.scan_id == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


@stratovan_uids
def test_report_on_a_pydicos_ct_refers_to_it_and_pydicos_reads_it(tmp_path):
    pyDICOS, _ = dicos_toolkit()
    path = pydicos_ct(tmp_path / "bag.dcs")
    scan = read_scan(path)
    box = (PYDICOS_BLOCK[2].start, PYDICOS_BLOCK[1].start, PYDICOS_BLOCK[0].start,
           PYDICOS_BLOCK[2].stop, PYDICOS_BLOCK[1].stop, PYDICOS_BLOCK[0].stop)
    alerts = fuse_regions([Region("explosive", 0.95, box, RULE)])
    report = written(tmp_path, scan, alerts)
    ds, ct = pydicom.dcmread(report), pydicom.dcmread(path, stop_before_pixels=True)
    image = ds.ThreatSequence[0].PTORepresentationSequence[0].ReferencedInstanceSequence[0]
    # The CT's own UIDs, leading zeros and all: a reference must match.
    assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (ct.SOPClassUID, ct.SOPInstanceUID)
    assert (ds.StudyInstanceUID, ds.PatientID, ds.OOIType) == (ct.StudyInstanceUID, PYDICOS_OOI_ID, "BAGGAGE")
    tdr = toolkit_read(pyDICOS, report)
    assert tdr.GetNumPTOs() == 1 and tdr.GetOOIID().Get() == PYDICOS_OOI_ID
