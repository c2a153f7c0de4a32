"""The DICOS Threat Detection Report (TDR) of a machine analysis.

DICOS (NEMA IIC 1) is DICOM for security screening; its Threat Detection
Report IOD (SOP Class 1.2.840.10008.5.1.4.1.1.501.3) is how an automated
threat detection algorithm hands its findings to a screening system: one
*potential threat object* (PTO) per alert, each with a region of interest in
the voxels of the scanned image and the algorithm's assessment of it.

:func:`machine_tdr` builds the report as a :class:`pydicom.Dataset`;
:func:`write_tdr` writes it as a Part 10 file. What goes where:

=========================  ==================================================
Module                     Attributes
=========================  ==================================================
Object of Inspection       OOI ID (bag tag, container number or scan id) and
                           its type and assigning authority, OOI Type
General Scan               Scan (Study) Instance UID: the scanned image's own
                           where its DICOM header says, Scan ID, date, time,
                           Scan Type; Referenced Scans Sequence
General Series             Modality ``TDR``, Series Instance UID, date, time,
                           Series Acquisition Status
Frame of Reference         the scanned image's where it has one
General Equipment          nii and its version (type 2 machine attributes
                           empty: nii is software, not a scanner)
Threat Detection Report    TDR Type ``MACHINE``, Threat Detection Algorithm
                           and Version (nii, calibration profile, each model
                           with version and sha256 prefix), Alarm Decision
                           and its time, Number of Total and Alarm Objects,
                           Total Processing Time, Abort Flag
Threat Sequence            per alert: PTO ID, referenced image, Threat ROI
                           Base, Extents and Bitmap, Mass, Density, Z
                           Effective, processing times, and an ATD
                           assessment (category, flag, probability, and a
                           description naming every model's full sha256)
SOP Common                 SOP class and instance, creation time, UTF-8
=========================  ==================================================

Threat ROI Base and Extents are ``(x, y, z)``: column, row and slice in the
voxels of the referenced image; a radiograph has one slice (``z = 0``,
extent 1). The Threat ROI Bitmap has one bit per voxel of the extents, x
fastest, least significant bit first.

Where DICOS and the DICOM data dictionary part ways, the file follows the
DICOS toolkit (Stratovan's, which pyDICOS wraps) so that DICOS consoles can
read it: the DICOS version in the file meta, Image Scale Representation as
FD, and the per-PTO processing times (4010,1080-1082), which the DICOM
dictionary does not list. A validator built on the DICOM dictionary
(dciodvfy) warns about these and reports no errors.

Every UID nii makes here comes from :func:`tdr_uid`: ``2.25.<integer>``,
the same for the same inputs, valid (no leading zeros), and under no
organisation's root. UIDs of the scanned image (its SOP instance, study and
frame of reference, when it came from DICOM) are repeated as they are, valid
or not: a reference must match what it refers to.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np
import pydicom
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pydicom.valuerep import DT

from nii.detect.fuse import ALARM, CLEAR, Alert
from nii.detect.regions import ModelIdentity
from nii.ingest.dicom import dataset_item
from nii.scan import Scan, ScanFormat, ScanKind

__all__ = ["DICOS_VERSION", "THREAT_CATEGORY", "machine_tdr", "tdr_uid", "write_tdr"]

DICOS_VERSION = "V03"

# nii's DICOS threat categories (nii.detect.regions.dicos_category) to the
# DICOS Threat Category defined terms: DICOS spells prohibited item "PI".
THREAT_CATEGORY: Mapping[str, str] = {
    "EXPLOSIVE": "EXPLOSIVE",
    "PROHIBITED_ITEM": "PI",
    "CONTRABAND": "CONTRABAND",
    "ANOMALY": "ANOMALY",
    "OTHER": "OTHER",
}

# What nii.ingest.dicom.write_dicom stores each kind as: the SOP class by
# which a scan that did not come from DICOM is referenced.
_STORED_AS = {
    ScanKind.SINGLE_ENERGY: dcmuid.DICOSDigitalXRayImageStorageForProcessing,
    ScanKind.DUAL_ENERGY: dcmuid.DICOSDigitalXRayImageStorageForProcessing,
    ScanKind.PSEUDO_COLOUR: dcmuid.SecondaryCaptureImageStorage,
    ScanKind.CT_VOLUME: dcmuid.DICOSCTImageStorage,
}

# scan.metadata keys that identify the object of inspection: its OOI Type,
# and the authority whose scheme such ids follow (IATA baggage licence
# plates, ISO 6346 container numbers registered with the BIC).
_OOI_IDS = {"bag_tag": ("BAGGAGE", "IATA"), "container_number": ("CARGO", "BIC")}

# Attributes of the scanned DICOM object that the TDR repeats, by VR; and
# the DICOS defined terms of the coded ones.
_SHARED = {
    "SOPClassUID": "UI",
    "SOPInstanceUID": "UI",
    "StudyInstanceUID": "UI",
    "FrameOfReferenceUID": "UI",
    "StudyID": "SH",
    "PatientID": "LO",  # OOI ID
    "IssuerOfPatientID": "LO",  # OOI ID Assigning Authority
    "TypeOfPatientID": "CS",  # OOI ID Type
    "OOIType": "CS",
}
_DEFINED_TERMS = {
    "TypeOfPatientID": {"TEXT", "RFID", "BARCODE", "MRP"},
    "OOIType": {"BAGGAGE", "CARGO", "PERSON", "ANIMAL", "BIO_SAMPLE", "OTHER"},
}

# Tags DICOS readers require that the DICOM data dictionary does not list,
# or lists with another VR (Image Scale Representation is DS there, FD in DICOS).
_DICOS_VERSION_META = 0x0002_0004
_PTO_PROCESSING_START, _PTO_PROCESSING_END, _PTO_PROCESSING_MS = 0x4010_1080, 0x4010_1081, 0x4010_1082
_IMAGE_SCALE_REPRESENTATION = 0x4010_1075

# DICOS requires Mass and Density of every baggage PTO; this marks a value
# nothing measured, as DICOS toolkits mark a probability not given.
_NOT_MEASURED = -1.0

# The namespace of nii's name-based UUIDs (RFC 9562 version 5), drawn once at random.
_UID_NAMESPACE = uuid.UUID("11cb77bf-50fe-430d-98e3-1a221658ddff")

# Longest value of each text VR used here (DICOM PS3.5 table 6.2-1), in bytes.
_MAX_CHARS = {"SH": 16, "LO": 64, "LT": 10240}


def tdr_uid(*parts: str) -> UID:
    """A UID derived from ``parts``: the same parts give the same UID.

    Parameters
    ----------
    *parts : str
        What the UID identifies, for example a scan id and a purpose.

    Returns
    -------
    pydicom.uid.UID
        ``2.25.`` and the integer of a name-based (version 5) UUID of the
        parts: the UUID form of DICOM PS3.5 B.2, so no component has a
        leading zero and no organisation root is claimed. (pydicom's
        ``generate_uid(prefix=None)`` makes this form only from a random
        UUID; with a prefix it joins its sources, so ``("a", "b")`` and
        ``("ab",)`` would collide.)

    Raises
    ------
    ValueError
        If no parts are given: that UID would identify nothing.

    Examples
    --------
    >>> tdr_uid("sha256:ab", "study") == tdr_uid("sha256:ab", "study")
    True
    >>> tdr_uid("sha256:ab").startswith("2.25.")
    True
    """
    if not parts:
        raise ValueError("tdr_uid needs at least one part")
    name = json.dumps([str(p) for p in parts])  # unambiguous: no two lists of parts give one name
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def machine_tdr(scan: Scan, alerts: Sequence[Alert], *, decision: str, models: Sequence[ModelIdentity],
                profile_id: str, processing_ms: float, created: datetime | None = None) -> Dataset:
    """Build the DICOS machine Threat Detection Report of one analysis.

    Parameters
    ----------
    scan : Scan
        The scan analysed; alert boxes and masks are in its pixel grid.
    alerts : sequence of Alert
        The fused alerts; each becomes one potential threat object (PTO).
    decision : {"ALARM", "CLEAR"}
        The scan's verdict at the operating point.
    models : sequence of ModelIdentity
        Every model and rule that ran, whether or not it found anything.
    profile_id : str
        The calibration profile the scan was calibrated with.
    processing_ms : float
        Wall time of the whole analysis, in milliseconds.
    created : datetime, optional
        When the decision was made; now if not given. A naive time is
        scanner-local, as DICOM times are.

    Returns
    -------
    pydicom.Dataset
        With file meta, ready for :func:`write_tdr`. The SOP Instance UID
        depends on the scan, the profile and the models only, so analysing
        the same scan the same way again gives the same UID.

    Raises
    ------
    ValueError
        If ``decision`` is not ALARM or CLEAR, ``processing_ms`` is negative
        or not finite, or an alert's id, category or box does not fit.
    """
    if decision not in (ALARM, CLEAR):
        raise ValueError(f"decision must be {ALARM} or {CLEAR}, got {decision!r}")
    if not (math.isfinite(processing_ms) and processing_ms >= 0):
        raise ValueError(f"processing_ms must be a finite, non-negative time, got {processing_ms!r}")
    created = created or datetime.now()
    source = _source_header(scan)
    ds = _new_dataset(tdr_uid(scan.scan_id, profile_id, *(m.sha256 for m in models), "tdr"), created)
    _object_of_inspection(ds, scan, source)
    _scan_and_series(ds, scan, source, created)
    _equipment(ds)
    _report(ds, alerts, decision, models, profile_id, processing_ms, created)
    ds.ThreatSequence = [_threat_item(alert, scan, source, processing_ms, created) for alert in alerts]
    return ds


def write_tdr(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write a TDR as a DICOM Part 10 file, Explicit VR Little Endian.

    Parameters
    ----------
    dataset : pydicom.Dataset
        From :func:`machine_tdr`.
    path : str or os.PathLike
        Output file; overwritten if it exists.

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    dataset.file_meta = _file_meta(dataset.SOPClassUID, dataset.SOPInstanceUID)
    dataset.save_as(path, enforce_file_format=True)


# -- modules -------------------------------------------------------------------


def _new_dataset(instance: UID, created: datetime) -> Dataset:
    """SOP Common module, and the file meta."""
    ds = Dataset()
    ds.file_meta = _file_meta(dcmuid.DICOSThreatDetectionReportStorage, instance)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: bag tags and labels need not be ASCII
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(created), _tm(created)
    ds.SOPClassUID = dcmuid.DICOSThreatDetectionReportStorage
    ds.SOPInstanceUID = instance
    return ds


def _file_meta(sop_class: UID, instance: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = dcmuid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = dcmuid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    # DICOS readers refuse a file whose meta does not name the DICOS version.
    meta.add_new(_DICOS_VERSION_META, "CS", DICOS_VERSION)
    return meta


def _object_of_inspection(ds: Dataset, scan: Scan, source: Mapping[str, str]) -> None:
    """OOI module: DICOS keeps the object's id in the DICOM Patient ID attributes.

    The id is the bag tag or container number in the scan's metadata, else
    the one in the scanned DICOS image, else the scan id.
    """
    key = next((k for k in _OOI_IDS if isinstance(scan.metadata.get(k), str) and scan.metadata[k].strip()), None)
    if key:
        ooi_id, (ooi_type, authority), id_type = scan.metadata[key], _OOI_IDS[key], "TEXT"
    elif source.get("PatientID"):
        ooi_id, id_type = source["PatientID"], source.get("TypeOfPatientID", "TEXT")
        ooi_type, authority = source.get("OOIType", "OTHER"), source.get("IssuerOfPatientID", "unknown")
    else:
        # A content hash is "sha256:" and 64 hex digits; the digits alone fit LO.
        ooi_id, ooi_type, authority, id_type = scan.scan_id.removeprefix("sha256:"), "OTHER", "nii", "TEXT"
    ds.PatientID = _text(ooi_id, "LO")
    ds.IssuerOfPatientID = _text(authority, "LO")
    ds.TypeOfPatientID = id_type
    ds.OOIType = ooi_type  # required, and DICOS has no "unknown": OTHER


def _scan_and_series(ds: Dataset, scan: Scan, source: Mapping[str, str], created: datetime) -> None:
    """General Scan (DICOM's study), General Series and Frame of Reference modules."""
    ds.StudyInstanceUID = source.get("StudyInstanceUID") or tdr_uid(scan.scan_id, "study")
    # Scan ID is SH (16 characters): the distinctive end of the UID or hash.
    ds.StudyID = source.get("StudyID") or _text(scan.scan_id[-16:], "SH")
    when = scan.acquired_at or created  # a scan without a clock gets the report's time
    ds.StudyDate, ds.StudyTime = _da(when), _tm(when)
    ds.ScanType = "OPERATIONAL"  # nii screens; test and calibration scans are not told apart
    ds.ReferencedStudySequence = [_referenced_image(scan, source)]  # DICOS: Referenced Scans
    ds.Modality = "TDR"
    ds.SeriesInstanceUID = tdr_uid(scan.scan_id, "tdr series")
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = _da(created), _tm(created)
    ds.AcquisitionStatus = "SUCCESSFUL"
    ds.FrameOfReferenceUID = source.get("FrameOfReferenceUID") or tdr_uid(scan.scan_id, "frame of reference")
    ds.PositionReferenceIndicator = ""


def _equipment(ds: Dataset) -> None:
    """General Equipment: nii. The machine's location, id and calibration are type 2, left empty."""
    for keyword in ("Manufacturer", "InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
                    "DateOfLastCalibration", "TimeOfLastCalibration"):
        setattr(ds, keyword, "")
    ds.ManufacturerModelName = "nii"
    ds.SoftwareVersions = _nii_version()


def _report(ds: Dataset, alerts: Sequence[Alert], decision: str, models: Sequence[ModelIdentity],
            profile_id: str, processing_ms: float, created: datetime) -> None:
    """Threat Detection Report module: who decided what, when, about how many objects."""
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = _da(created), _tm(created)
    ds.TDRType = "MACHINE"
    # Name, version, then "-key=value" parameters: how DICOS toolkits lay
    # out and parse this attribute.
    ds.ThreatDetectionAlgorithmAndVersion = [
        "nii",
        _nii_version(),
        _text(f"-calibration={profile_id}", "LO"),
        *(_text(f"-{m.name}={m.version} sha256:{m.sha256[:16]}", "LO") for m in models),
    ]
    ds.AlarmDecision = decision
    ds.AlarmDecisionTime = DT(created)
    ds.AbortFlag = "SUCCESS"
    ds.NumberOfTotalObjects = len(alerts)
    ds.NumberOfAlarmObjects = sum(1 for a in alerts if a.alarm)
    ds.TotalProcessingTime = float(processing_ms)
    ds.AdditionalScreeningPerformed = "NO"
    # ROI coordinates are in the referenced image's own voxels: scale 1.
    ds.add_new(_IMAGE_SCALE_REPRESENTATION, "FD", 1.0)
    ds.DICOSVersion = DICOS_VERSION


def _threat_item(alert: Alert, scan: Scan, source: Mapping[str, str], processing_ms: float,
                 created: datetime) -> Dataset:
    """One Threat Sequence item: the PTO, where it is, and what the machine thinks of it."""
    if not 0 < alert.id < 2**16:
        raise ValueError(f"alert id {alert.id} does not fit Potential Threat Object ID (US, 1 to 65535)")
    category = THREAT_CATEGORY.get(alert.dicos_category)
    if category is None:
        raise ValueError(f"alert {alert.id}: {alert.dicos_category!r} is not a DICOS threat category")
    base, extents = _roi(alert.box, scan)
    measured = alert.measurements
    representation = dataset_item(
        ReferencedInstanceSequence=[_referenced_image(scan, source)],
        ThreatROIVoxelSequence=[dataset_item(ThreatROIBase=base, ThreatROIExtents=extents,
                                      ThreatROIBitmap=_bitmap(alert, scan))],
        Mass=measured.get("mass_g", _NOT_MEASURED),  # grams
        Density=measured.get("density_g_cm3", _NOT_MEASURED),  # g/cm³
        ZEffective=measured.get("zeff"),
    )
    assessment = dataset_item(
        ThreatCategory=category,
        ThreatCategoryDescription=_text(_description(alert), "LT"),
        ATDAbilityAssessment="NO_INTERFERENCE",
        # An advisory is below the operating point but kept for the officer:
        # the machine has not cleared it, so UNKNOWN rather than NO_THREAT.
        ATDAssessmentFlag="THREAT" if alert.alarm else "UNKNOWN",
        ATDAssessmentProbability=float(alert.score),
    )
    item = dataset_item(PotentialThreatObjectID=alert.id, PTORepresentationSequence=[representation],
                 ATDAssessmentSequence=[assessment])
    # Per-PTO processing time: nii times the analysis as a whole, which
    # found every PTO, so each gets its span.
    item.add_new(_PTO_PROCESSING_START, "DT", DT(created - timedelta(milliseconds=processing_ms)))
    item.add_new(_PTO_PROCESSING_END, "DT", DT(created))
    item.add_new(_PTO_PROCESSING_MS, "FL", float(processing_ms))
    return item


def _roi(box: Sequence[float], scan: Scan) -> tuple[list[float], list[float]]:
    """Threat ROI Base and Extents, ``(x, y, z)`` voxels, from a 2D or 3D box."""
    ndim = scan.kind.spatial_ndim
    if len(box) != 2 * ndim:
        raise ValueError(f"a {scan.kind.value} scan needs {2 * ndim}-value boxes, got {tuple(box)}")
    start, end = [float(v) for v in box[:ndim]], [float(v) for v in box[ndim:]]
    if ndim == 2:
        start, end = [*start, 0.0], [*end, 1.0]
    return start, [e - s for s, e in zip(start, end)]


def _bitmap(alert: Alert, scan: Scan) -> bytes:
    """The alert's mask within its box, one bit per voxel, x fastest, LSB first.

    Empty (the bitmap is required but may be empty) when there is no mask,
    or when the box does not lie on whole voxels inside the image, since
    the bitmap must cover the extents exactly.
    """
    mask, box = alert.mask, [float(v) for v in alert.box]
    if mask is None or mask.shape != scan.spatial_shape or any(v != round(v) for v in box):
        return b""
    ndim = scan.kind.spatial_ndim
    start, end = [int(v) for v in box[:ndim]], [int(v) for v in box[ndim:]]
    # Boxes are (x, y[, z]); arrays are ([z,] y, x).
    inside = mask[tuple(slice(s, e) for s, e in zip(start[::-1], end[::-1]))]
    if min(start) < 0 or inside.shape != tuple(e - s for s, e in zip(start[::-1], end[::-1])):
        return b""
    bits = np.packbits(np.asarray(inside, dtype=bool).ravel(), bitorder="little").tobytes()
    return bits + b"\0" * (len(bits) % 2)  # OB values have even length


def _description(alert: Alert) -> str:
    """The label the officer sees, why it fired, and which models (full sha256) found it."""
    found_by = ", ".join(f"{m.name} {m.version} sha256 {m.sha256}" for m in alert.models)
    return "; ".join(p for p in (alert.label, alert.explanation, f"found by {found_by}") if p)


# -- the scanned image ---------------------------------------------------------


def _referenced_image(scan: Scan, source: Mapping[str, str]) -> Dataset:
    """SOP class and instance of the scanned image."""
    instance = UID(scan.scan_id) if _is_uid(scan.scan_id) else tdr_uid(scan.scan_id)
    return dataset_item(ReferencedSOPClassUID=source.get("SOPClassUID") or _STORED_AS[scan.kind],
                 ReferencedSOPInstanceUID=instance)


def _source_header(scan: Scan) -> dict[str, str]:
    """What the TDR shares with the DICOM object the scan was read from.

    Its SOP class, study, scan id, frame of reference and object of
    inspection, read again because :class:`~nii.scan.Scan` keeps only the
    SOP Instance UID. Empty when the scan is not from DICOM, or its file is
    gone or now holds another instance; values that do not fit their VR are
    left out.
    """
    if scan.source_format not in (ScanFormat.DICOM, ScanFormat.DICOS) or not scan.source_path:
        return {}
    try:
        header = pydicom.dcmread(scan.source_path, stop_before_pixels=True, specific_tags=list(_SHARED))
    except (OSError, InvalidDicomError):
        return {}
    if str(header.get("SOPInstanceUID", "")) != scan.scan_id:
        return {}
    found = {keyword: str(header.get(keyword) or "").strip() for keyword in _SHARED}
    return {keyword: value for keyword, value in found.items() if _fits(keyword, value)}


def _fits(keyword: str, value: str) -> bool:
    """Whether a value read from the scanned object can be repeated in the TDR as it is."""
    vr = _SHARED[keyword]
    if vr == "UI":
        return _is_uid(value)
    if keyword in _DEFINED_TERMS:
        return value in _DEFINED_TERMS[keyword]
    return 0 < len(value) <= _MAX_CHARS[vr] and "\\" not in value


def _is_uid(value: str) -> bool:
    """Whether a value is UID-shaped: digits and dots, at most 64.

    Not whether it is valid: some scanners write leading zeros, and a
    reference to their image must repeat its UID as it is to match.
    """
    return 0 < len(value) <= 64 and set(value) <= set("0123456789.")


# -- small helpers -------------------------------------------------------------


def _nii_version() -> str:
    try:
        return importlib.metadata.version("nii")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def _text(value: str, vr: str) -> str:
    """A value that fits its VR: SH and LO on one line, without backslash; at most the VR's length.

    The length counts UTF-8 bytes, as validators do, and a cut never splits
    a character.
    """
    text = str(value)
    if vr != "LT":  # LT is free text; in SH and LO a backslash would split the value in two
        text = " ".join(text.replace("\\", "/").split())
    return text.encode("utf-8")[: _MAX_CHARS[vr]].decode("utf-8", errors="ignore")


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S.%f")
