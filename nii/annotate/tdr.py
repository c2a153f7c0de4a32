"""The DICOS Threat Detection Report (TDR) of a machine analysis.

DICOS (NEMA IIC 1) is DICOM for security screening; its Threat Detection
Report IOD (SOP Class 1.2.840.10008.5.1.4.1.1.501.3) is how an automated
threat detection algorithm hands its findings to a screening system: one
*potential threat object* (PTO) per alert, each with a region of interest in
the voxels of the scanned image and the algorithm's assessment of it.

:func:`machine_tdr` builds the report as a :class:`pydicom.Dataset`;
:func:`write_tdr` writes it as a Part 10 file (:func:`tdr_bytes` as bytes),
and :func:`read_tdr` reads one back. What goes where:

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

An officer's decision is a TDR too: :func:`operator_tdr` builds one of TDR
Type ``OPERATOR`` from the machine TDR it decides on. It repeats the machine
TDR's object of inspection, scan and frame of reference as they are, adds
the machine TDR to the Referenced Scans Sequence after the scanned image,
and names the officer in the Operator Identification Sequence. The Alarm
Decision follows :data:`ALARM_DECISION`. A confirmed threat carries the
machine's alarmed PTOs (their regions as the machine found them) with the
officer's assessment, each pointing back at the machine's PTO through the
Referenced PTO Sequence (4010,1076) and its Referenced TDR Instance
Sequence (4010,1077), the reference DICOS defines from one TDR's PTO to
another's. Operator TDRs on one machine TDR form one series; a reversal
refers to the decision it supersedes and takes the next Instance Number.

Every UID nii makes here comes from :func:`tdr_uid`: ``2.25.<integer>``,
the same for the same inputs, valid (no leading zeros), and under no
organisation's root. UIDs of the scanned image (its SOP instance, study and
frame of reference, when it came from DICOM) are repeated as they are, valid
or not: a reference must match what it refers to.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import io
import json
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import BinaryIO

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

__all__ = ["ALARM_DECISION", "DICOS_VERSION", "THREAT_CATEGORY", "machine_tdr", "operator_tdr", "read_tdr",
           "tdr_bytes", "tdr_uid", "write_tdr"]

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

# An officer's outcome (nii.serve.decisions.Outcome) to the DICOS Alarm
# Decision of the operator TDR.
ALARM_DECISION: Mapping[str, str] = {
    "threat": "ALARM",
    "clear": "CLEAR",
    # The officer orders a search when the image neither clears the object
    # nor shows a threat: the search decides. DICOS's third defined term,
    # UNKNOWN ("unable to make a decision"), says that; ALARM would claim a
    # threat the officer has not confirmed, and it is not CLEAR, so nothing
    # downstream releases the object on it.
    "search": "UNKNOWN",
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

# What an operator TDR repeats of the machine TDR, as it is: the OOI, the
# General Scan (Referenced Scans Sequence included) and Frame of Reference
# modules. The PTO regions it copies are in the same image.
_SAME_AS_MACHINE = (
    "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "OOIType",
    "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "ScanType", "ReferencedStudySequence",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
)

# Operator ids are nii user names, issued by the nii service; DICOM keeps
# coding scheme designators that begin "99" for private schemes like this.
_OPERATOR_ID_ISSUER = "99NII"
# DICOS Identification Encoding Type (context DCS4) of an id typed in as text.
_TEXT_ENCODING = {"CodeValue": "100001", "CodingSchemeDesignator": "DCS", "CodeMeaning": "Text Encoding"}

# The namespace of nii's name-based UUIDs (RFC 9562 version 5), drawn once at random.
_UID_NAMESPACE = uuid.UUID("11cb77bf-50fe-430d-98e3-1a221658ddff")

# Longest value of each text VR used here (DICOM PS3.5 table 6.2-1), in bytes.
_MAX_CHARS = {"SH": 16, "LO": 64, "LT": 10240}
# Control characters no text VR allows in UTF-8 (ISO_IR 192) text; LT keeps
# its line breaks (LF, FF, CR). A tab becomes a space.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


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
    threats = [_threat_item(alert, scan, source, processing_ms, created) for alert in alerts]
    _report(ds, "MACHINE", decision, created, threats=threats, alarms=sum(1 for a in alerts if a.alarm),
            processing_ms=processing_ms)
    # Name, version, then "-key=value" parameters: how DICOS toolkits lay
    # out and parse this attribute.
    ds.ThreatDetectionAlgorithmAndVersion = [
        "nii",
        _nii_version(),
        _text(f"-calibration={profile_id}", "LO"),
        *(_text(f"-{m.name}={m.version} sha256:{m.sha256[:16]}", "LO") for m in models),
    ]
    return ds


def operator_tdr(machine: Dataset, *, outcome: str, operator: str, decided: datetime, category: str | None = None,
                 note: str | None = None, supersedes: Dataset | None = None) -> Dataset:
    """Build the DICOS Threat Detection Report of an officer's decision on a machine TDR.

    Parameters
    ----------
    machine : pydicom.Dataset
        The machine TDR decided on (:func:`machine_tdr`, or :func:`read_tdr`
        of its file). Its object of inspection, scan, frame of reference and
        scanned image are repeated as they are, so the two reports agree.
    outcome : {"clear", "search", "threat"}
        The officer's outcome; its Alarm Decision is :data:`ALARM_DECISION`'s.
    operator : str
        The officer's user name: their id and name in the Operator
        Identification Sequence.
    decided : datetime
        When the officer decided. A naive time is scanner-local, as DICOM
        times are; an aware one also gives its UTC offset in the DT values
        (Alarm Decision Time), while DA and TM values are in its own zone.
    category : str, optional
        With ``"threat"`` only, and required there: one of
        :data:`THREAT_CATEGORY`'s keys (nii's names; DICOS spells
        PROHIBITED_ITEM "PI").
    note : str, optional
        The officer's note: the Threat Category Description of each
        confirmed PTO, cut to LT's 10240 bytes. A clear or search report
        has no PTO, and DICOS has no free text at report level, so its note
        stays with the decision, not in the report.
    supersedes : pydicom.Dataset, optional
        The operator TDR of the decision this one reverses (a supervisor's
        reversal). It must be on the same machine TDR; this report refers
        to it too and takes the next Instance Number in the series.

    Returns
    -------
    pydicom.Dataset
        With file meta, ready for :func:`write_tdr`. TDR Type ``OPERATOR``;
        no PTO for clear or search; for a threat, each PTO the machine
        alarmed on (region and measurements as the machine found them)
        assessed ``THREAT`` in ``category`` and referring to the machine's
        PTO, or one PTO in the scanned image, without a region, when the
        machine alarmed on none. The SOP Instance UID depends on the
        machine TDR, the operator, the time, the outcome and the category.

    Raises
    ------
    TypeError
        If ``machine`` or ``supersedes`` is not a Dataset, ``operator`` not
        a string, or ``decided`` not a datetime.
    ValueError
        If ``machine`` is not a machine TDR with a SOP instance, scan and
        referenced scan; ``outcome`` is not clear, search or threat;
        ``operator`` is blank; a threat has no known category or another
        outcome has one; or ``supersedes`` is not an operator TDR on
        ``machine``.

    Examples
    --------
    >>> officer = operator_tdr(machine, outcome="threat", operator="op",  # doctest: +SKIP
    ...                        decided=datetime(2026, 3, 4, 5, 7), category="EXPLOSIVE")
    >>> officer.TDRType, officer.AlarmDecision  # doctest: +SKIP
    ('OPERATOR', 'ALARM')
    """
    _check_tdr(machine, "machine", "MACHINE")
    outcome = str(getattr(outcome, "value", outcome))  # an Outcome enum member or its value
    if outcome not in ALARM_DECISION:
        raise ValueError(f"outcome must be one of {', '.join(ALARM_DECISION)}, got {outcome!r}")
    if not isinstance(operator, str):
        raise TypeError(f"operator must be a user name (str), got {type(operator).__name__}")
    if not operator.strip():
        raise ValueError("operator must be a user name, got a blank one")
    if not isinstance(decided, datetime):
        raise TypeError(f"decided must be a datetime, got {type(decided).__name__}")
    if outcome == "threat" and category not in THREAT_CATEGORY:
        raise ValueError(f"a confirmed threat needs a category, one of {', '.join(THREAT_CATEGORY)}; got {category!r}")
    if outcome != "threat" and category is not None:
        raise ValueError(f"a category goes with a confirmed threat only, got {category!r} with {outcome!r}")
    if supersedes is not None:
        _check_tdr(supersedes, "supersedes", "OPERATOR")
        if str(machine.SOPInstanceUID) not in _referenced_instances(supersedes):
            raise ValueError(f"supersedes decides on another machine TDR, not {machine.SOPInstanceUID}")

    ds = _new_dataset(tdr_uid(machine.SOPInstanceUID, operator, decided.isoformat(), outcome, category or "",
                              "operator tdr"), decided)
    for keyword in _SAME_AS_MACHINE:
        if keyword in machine:
            ds.add(copy.deepcopy(machine.data_element(keyword)))
    # The Referenced Scans Sequence lists every instance a TDR builds on;
    # DICOS toolkits put a referenced TDR there too. The scanned image
    # stays first, where readers look for it.
    ds.ReferencedStudySequence.append(_reference_to(machine))
    if supersedes is not None:
        ds.ReferencedStudySequence.append(_reference_to(supersedes))
    _series(ds, tdr_uid(machine.SOPInstanceUID, "operator tdr series"),
            number=int(machine.get("SeriesNumber") or 1) + 1, started=decided)
    instance = 1
    if supersedes is not None:
        # One series holds the decisions on a machine TDR: it started with
        # the first, and each reversal is its next instance.
        ds.SeriesDate, ds.SeriesTime = supersedes.SeriesDate, supersedes.SeriesTime
        instance = int(supersedes.get("InstanceNumber") or 1) + 1
    _equipment(ds)
    threats = _confirmed_threats(machine, THREAT_CATEGORY[category], note, decided) if outcome == "threat" else []
    # nii does not time the officer's review (it does not see when the
    # officer first looked), but DICOS readers require a processing time.
    _report(ds, "OPERATOR", ALARM_DECISION[outcome], decided, threats=threats, alarms=len(threats),
            processing_ms=0.0, instance=instance)
    ds.OperatorIdentificationSequence = [_operator_identification(operator, machine)]
    return ds


def write_tdr(dataset: Dataset, target: str | os.PathLike | BinaryIO) -> None:
    """Write a TDR as a DICOM Part 10 file, Explicit VR Little Endian.

    Parameters
    ----------
    dataset : pydicom.Dataset
        From :func:`machine_tdr` or :func:`operator_tdr`.
    target : str, os.PathLike or binary file object
        Output file, overwritten if it exists; or an open, writable binary
        file (:func:`tdr_bytes` writes into a :class:`io.BytesIO`).

    Raises
    ------
    OSError
        If the file cannot be written.
    """
    dataset.file_meta = _file_meta(dataset.SOPClassUID, dataset.SOPInstanceUID)
    pydicom.dcmwrite(target, dataset, enforce_file_format=True)


def tdr_bytes(dataset: Dataset) -> bytes:
    """A TDR as the bytes of its Part 10 file (:func:`write_tdr`), for a blob store or the network.

    Parameters
    ----------
    dataset : pydicom.Dataset
        From :func:`machine_tdr` or :func:`operator_tdr`.

    Returns
    -------
    bytes
    """
    buffer = io.BytesIO()
    write_tdr(dataset, buffer)
    return buffer.getvalue()


def read_tdr(source: bytes | str | os.PathLike) -> Dataset:
    """Read a DICOS TDR from the bytes of its Part 10 file, or from the file.

    Parameters
    ----------
    source : bytes, str or os.PathLike
        What :func:`tdr_bytes` gave, or a file :func:`write_tdr` wrote.

    Returns
    -------
    pydicom.Dataset

    Raises
    ------
    ValueError
        If it is not a DICOM file, or not a Threat Detection Report.
    OSError
        If the file cannot be read.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except InvalidDicomError as err:
        raise ValueError(f"not a DICOM Part 10 file: {err}") from None
    if ds.get("SOPClassUID") != dcmuid.DICOSThreatDetectionReportStorage:
        raise ValueError(f"not a DICOS Threat Detection Report: SOP class {ds.get('SOPClassUID')}")
    return ds


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
    _series(ds, tdr_uid(scan.scan_id, "tdr series"), number=1, started=created)
    ds.FrameOfReferenceUID = source.get("FrameOfReferenceUID") or tdr_uid(scan.scan_id, "frame of reference")
    ds.PositionReferenceIndicator = ""


def _series(ds: Dataset, instance: UID, *, number: int, started: datetime) -> None:
    """General Series module of a TDR series."""
    ds.Modality = "TDR"
    ds.SeriesInstanceUID = instance
    ds.SeriesNumber = number
    ds.SeriesDate, ds.SeriesTime = _da(started), _tm(started)
    ds.AcquisitionStatus = "SUCCESSFUL"


def _equipment(ds: Dataset) -> None:
    """General Equipment: nii. The machine's location, id and calibration are type 2, left empty."""
    for keyword in ("Manufacturer", "InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
                    "DateOfLastCalibration", "TimeOfLastCalibration"):
        setattr(ds, keyword, "")
    ds.ManufacturerModelName = "nii"
    ds.SoftwareVersions = _nii_version()


def _report(ds: Dataset, tdr_type: str, decision: str, decided: datetime, *, threats: Sequence[Dataset], alarms: int,
            processing_ms: float, instance: int = 1) -> None:
    """Threat Detection Report module and Threat Sequence: what was decided, when, about which objects.

    Who decided (the algorithm, or the operator) is the caller's to add.
    """
    ds.InstanceNumber = instance
    ds.ContentDate, ds.ContentTime = _da(decided), _tm(decided)
    ds.TDRType = tdr_type
    ds.AlarmDecision = decision
    ds.AlarmDecisionTime = DT(decided)
    ds.AbortFlag = "SUCCESS"
    ds.NumberOfTotalObjects = len(threats)
    ds.NumberOfAlarmObjects = alarms
    ds.TotalProcessingTime = float(processing_ms)
    ds.AdditionalScreeningPerformed = "NO"
    # ROI coordinates are in the referenced image's own voxels: scale 1.
    ds.add_new(_IMAGE_SCALE_REPRESENTATION, "FD", 1.0)
    ds.DICOSVersion = DICOS_VERSION
    ds.ThreatSequence = list(threats)


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
    # An advisory is below the operating point but kept for the officer:
    # the machine has not cleared it, so UNKNOWN rather than NO_THREAT.
    assessment = _assessment(category, "THREAT" if alert.alarm else "UNKNOWN", _description(alert),
                             probability=float(alert.score))
    item = dataset_item(PotentialThreatObjectID=alert.id, PTORepresentationSequence=[representation],
                 ATDAssessmentSequence=[assessment])
    # Per-PTO processing time: nii times the analysis as a whole, which
    # found every PTO, so each gets its span.
    _processing_span(item, created, processing_ms)
    return item


def _assessment(category: str, flag: str, description: str | None, *, probability: float | None = None) -> Dataset:
    """One ATD Assessment Sequence item; without a description or probability where none is given."""
    return dataset_item(
        ThreatCategory=category,
        ThreatCategoryDescription=_text(description, "LT") if description else None,
        ATDAbilityAssessment="NO_INTERFERENCE",
        ATDAssessmentFlag=flag,
        ATDAssessmentProbability=probability,
    )


def _processing_span(item: Dataset, end: datetime, processing_ms: float) -> None:
    """A PTO's processing start, end and time, which DICOS readers require of every PTO."""
    item.add_new(_PTO_PROCESSING_START, "DT", DT(end - timedelta(milliseconds=processing_ms)))
    item.add_new(_PTO_PROCESSING_END, "DT", DT(end))
    item.add_new(_PTO_PROCESSING_MS, "FL", float(processing_ms))


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


# -- the officer's report ------------------------------------------------------


def _check_tdr(dataset: Dataset, name: str, tdr_type: str) -> None:
    """Refuse what is not a TDR of ``tdr_type`` with what an operator TDR repeats of it."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"{name} must be a pydicom Dataset, got {type(dataset).__name__}")
    if dataset.get("SOPClassUID") != dcmuid.DICOSThreatDetectionReportStorage or dataset.get("TDRType") != tdr_type:
        raise ValueError(f"{name} must be a DICOS TDR of type {tdr_type}; got SOP class "
                         f"{dataset.get('SOPClassUID')} and TDR type {dataset.get('TDRType')!r}")
    missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID", "ReferencedStudySequence") if not dataset.get(k)]
    if missing:
        raise ValueError(f"{name} lacks {', '.join(missing)}")


def _reference_to(dataset: Dataset) -> Dataset:
    """A SOP Instance Reference to a dataset."""
    return dataset_item(ReferencedSOPClassUID=dataset.SOPClassUID, ReferencedSOPInstanceUID=dataset.SOPInstanceUID)


def _referenced_instances(dataset: Dataset) -> set[str]:
    """SOP Instance UIDs in a TDR's Referenced Scans Sequence."""
    return {str(item.get("ReferencedSOPInstanceUID", "")) for item in dataset.get("ReferencedStudySequence", [])}


def _alarmed(item: Dataset) -> bool:
    """Whether a Threat Sequence item is one its TDR alarmed on."""
    return any(a.get("ATDAssessmentFlag") in ("THREAT", "HIGH_THREAT") for a in item.get("ATDAssessmentSequence", []))


def _confirmed_threats(machine: Dataset, category: str, note: str | None, decided: datetime) -> list[Dataset]:
    """Threat Sequence of a confirmed threat, in DICOS ``category``.

    Each PTO the machine alarmed on, its representation (referenced image,
    region, measurements) as the machine's, referring to the machine's PTO.
    When the machine alarmed on none, the officer saw what it did not: one
    PTO in the scanned image, without a region, since nii does not record
    where the officer looked.
    """
    alarmed = [item for item in machine.get("ThreatSequence", []) if _alarmed(item)]
    if alarmed:
        machine_tdr_ref = _reference_to(machine)
        threats = [dataset_item(
            PotentialThreatObjectID=item.PotentialThreatObjectID,
            PTORepresentationSequence=copy.deepcopy(item.PTORepresentationSequence),
            ReferencedPTOSequence=[dataset_item(PotentialThreatObjectID=item.PotentialThreatObjectID,
                                                ReferencedTDRInstanceSequence=[copy.deepcopy(machine_tdr_ref)])],
        ) for item in alarmed]
    else:
        image = copy.deepcopy(machine.ReferencedStudySequence[0])
        threats = [dataset_item(PotentialThreatObjectID=1,
                                PTORepresentationSequence=[dataset_item(ReferencedInstanceSequence=[image])])]
    for item in threats:
        item.ATDAssessmentSequence = [_assessment(category, "THREAT", note)]
        _processing_span(item, decided, 0.0)
    return threats


def _operator_identification(operator: str, machine: Dataset) -> Dataset:
    """Operator Identification Sequence item, laid out as DICOS's Person Identification Macro.

    Two codes: the officer's id (Code Value), its issuer (Coding Scheme
    Designator) and the officer's name (Code Meaning); then how the id was
    read (typed-in text). nii knows an officer by user name, which is both
    id and name here. The organisation the officer answers for is required:
    the machine TDR's institution, unknown when it names none.
    """
    name = _text(operator, "LO")
    code = _text(operator, "SH")
    if code != operator:
        # Code Value is SH; its long form (Long Code Value, UC) is one DICOS
        # readers do not know. A longer name gets a stable 16-digit digest as
        # its id and stays whole in Code Meaning.
        code = hashlib.sha256(operator.encode("utf-8")).hexdigest()[:16]
    # Without Context Identifier: with it, DICOM requires Mapping Resource
    # and Context Group Version, for which nii has no authoritative values.
    return dataset_item(
        PersonIdentificationCodeSequence=[
            dataset_item(CodeValue=code, CodingSchemeDesignator=_OPERATOR_ID_ISSUER, CodeMeaning=name),
            dataset_item(**_TEXT_ENCODING),
        ],
        InstitutionName=_text(machine.get("InstitutionName") or "unknown", "LO"),
    )


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

    Control characters (from a sidecar, a note) are dropped. The length
    counts UTF-8 bytes, as validators do, and a cut never splits a character.
    """
    text = _NOT_TEXT.sub("", str(value).replace("\t", " "))
    if vr != "LT":  # LT is free text; in SH and LO a backslash would split the value in two
        text = " ".join(text.replace("\\", "/").split())
    return text.encode("utf-8")[: _MAX_CHARS[vr]].decode("utf-8", errors="ignore")


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S.%f")
