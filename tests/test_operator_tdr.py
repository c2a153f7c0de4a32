"""The officer's decision as a DICOS TDR of type OPERATOR: what it holds, a validator, a DICOS toolkit, the service.

The machine TDRs decided on come from :mod:`tests.test_tdr`'s scenes, read
back from their bytes as the service reads them from its blob store.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset
from pydicom.uid import UID

from nii.annotate.tdr import operator_tdr, read_tdr, tdr_bytes, write_tdr
from nii.serve.app import create_app
from nii.serve.auth import User
from nii.serve.decisions import decisions_of, record_decision
from nii.serve.service import Service, ServiceConfig
from nii.serve.store import Store, audit, results
from tests.conftest import dciodvfy, requires_dciodvfy
from tests.serve_support import PASSWORDS, add_users, sample_uploads
from tests.test_tdr import BAG_TAG, CASES, dicos_toolkit, radiograph, tdr_of, toolkit_read

DECIDED = datetime(2026, 3, 4, 5, 9, 0, 500000)
NOTE = "wires and a battery taped to the block"
# Written here, not taken from the module, so a changed mapping fails.
EXPECTED_DECISION = {"clear": "CLEAR", "search": "UNKNOWN", "threat": "ALARM"}
OUTCOMES = list(EXPECTED_DECISION)
OP, SUP = User("op", "operator"), User("sup", "supervisor")


def machine_of(case: str = "radiograph", *, alerts: bool = True) -> Dataset:
    """A machine TDR as the service holds it: written to bytes and read back."""
    scan, found = CASES[case]()
    return read_tdr(tdr_bytes(tdr_of(scan, found if alerts else [])))


def officer(machine: Dataset, outcome: str = "threat", **changes) -> Dataset:
    options = {"operator": "op", "decided": DECIDED, "category": "EXPLOSIVE" if outcome == "threat" else None,
               "note": NOTE, **changes}
    return operator_tdr(machine, outcome=outcome, **options)


def reference(item: Dataset) -> tuple[str, str]:
    return str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)


def alarmed_ids(machine: Dataset) -> list[int]:
    return [item.PotentialThreatObjectID for item in machine.ThreatSequence
            if item.ATDAssessmentSequence[0].ATDAssessmentFlag == "THREAT"]


def advisories_only() -> Dataset:
    """A machine TDR whose PTOs are all advisories: the radiograph's, its alarmed PTO taken out."""
    machine = machine_of()
    machine.ThreatSequence = [item for item in machine.ThreatSequence
                              if item.PotentialThreatObjectID not in alarmed_ids(machine)]
    return machine


# -- what the report holds ---------------------------------------------------


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_report_repeats_the_machine_report_names_the_officer_and_refers_to_it(outcome):
    machine = machine_of()
    ds = read_tdr(tdr_bytes(officer(machine, outcome)))
    assert ds.SOPClassUID == dcmuid.DICOSThreatDetectionReportStorage and ds.Modality == "TDR"
    assert ds.TDRType == "OPERATOR" and ds.AlarmDecision == EXPECTED_DECISION[outcome]
    assert ds.AlarmDecisionTime == "20260304050900.500000"
    assert "ThreatDetectionAlgorithmAndVersion" not in ds  # the officer decided, not an algorithm
    for keyword in ("PatientID", "IssuerOfPatientID", "TypeOfPatientID", "OOIType", "StudyInstanceUID", "StudyID",
                    "StudyDate", "StudyTime", "FrameOfReferenceUID"):
        assert ds[keyword].value == machine[keyword].value, keyword
    assert ds.PatientID == BAG_TAG
    image, machine_tdr = ds.ReferencedStudySequence  # DICOS: Referenced Scans; the image stays first
    assert reference(image) == reference(machine.ReferencedStudySequence[0])
    assert machine_tdr.ReferencedSOPInstanceUID == machine.SOPInstanceUID
    assert machine_tdr.ReferencedSOPClassUID == dcmuid.DICOSThreatDetectionReportStorage
    assert ds.SOPInstanceUID != machine.SOPInstanceUID and ds.SeriesInstanceUID != machine.SeriesInstanceUID
    assert ds.InstanceNumber == 1 and ds.SeriesNumber == machine.SeriesNumber + 1

    (operator,) = ds.OperatorIdentificationSequence
    officer_id, encoding = operator.PersonIdentificationCodeSequence
    assert (officer_id.CodeValue, officer_id.CodeMeaning) == ("op", "op")
    assert (encoding.CodeValue, encoding.CodingSchemeDesignator) == ("100001", "DCS")  # DICOS: typed-in text
    assert operator.InstitutionName  # DICOS requires the organisation
    if outcome != "threat":
        assert ds.NumberOfTotalObjects == ds.NumberOfAlarmObjects == len(ds.ThreatSequence) == 0


@pytest.mark.parametrize("case", CASES)
def test_a_confirmed_threat_carries_the_alarmed_ptos_in_the_officers_category(case):
    machine = machine_of(case)
    ds = officer(machine, category="PROHIBITED_ITEM")
    ids = alarmed_ids(machine)
    assert len(ids) == 1 < len(machine.ThreatSequence)  # the scene has an advisory too: not confirmed
    assert [item.PotentialThreatObjectID for item in ds.ThreatSequence] == ids
    assert ds.NumberOfTotalObjects == ds.NumberOfAlarmObjects == 1
    (item,) = ds.ThreatSequence
    mine = next(m for m in machine.ThreatSequence if m.PotentialThreatObjectID == ids[0])
    assert item.PTORepresentationSequence == mine.PTORepresentationSequence  # region and image as the machine's
    (assessment,) = item.ATDAssessmentSequence
    assert (assessment.ThreatCategory, assessment.ATDAssessmentFlag) == ("PI", "THREAT")
    assert assessment.ThreatCategoryDescription == NOTE
    assert "ATDAssessmentProbability" not in assessment  # an officer gives no score
    (pto,) = item.ReferencedPTOSequence  # DICOS's reference from a PTO to another TDR's
    assert pto.PotentialThreatObjectID == ids[0]
    (referred,) = pto.ReferencedTDRInstanceSequence
    assert reference(referred) == (dcmuid.DICOSThreatDetectionReportStorage, machine.SOPInstanceUID)


def test_a_threat_the_machine_did_not_alarm_on_is_one_pto_in_the_scanned_image():
    for machine in (machine_of(alerts=False), advisories_only()):
        ds = officer(machine, note=None)
        (item,) = ds.ThreatSequence
        assert item.PotentialThreatObjectID == 1 and "ReferencedPTOSequence" not in item
        (representation,) = item.PTORepresentationSequence
        assert reference(representation.ReferencedInstanceSequence[0]) == reference(machine.ReferencedStudySequence[0])
        assert "ThreatROIVoxelSequence" not in representation  # nii does not know where the officer looked
        (assessment,) = item.ATDAssessmentSequence
        assert assessment.ThreatCategory == "EXPLOSIVE" and "ThreatCategoryDescription" not in assessment


def test_each_decision_has_its_own_uid_and_the_same_decision_the_same():
    machine = machine_of()
    first = officer(machine)
    assert officer(machine).SOPInstanceUID == first.SOPInstanceUID
    others = [officer(machine, decided=DECIDED + timedelta(seconds=1)), officer(machine, operator="sup"),
              officer(machine, "clear"), officer(machine, category="CONTRABAND"), officer(machine_of("volume"))]
    found = {first.SOPInstanceUID, *(ds.SOPInstanceUID for ds in others)}
    assert len(found) == 1 + len(others)
    assert all(UID(uid).startswith("2.25.") and UID(uid).is_valid for uid in found)
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_note_is_cut_to_the_vr_length_and_long_user_names_fit():
    note = "C:\\bag ünïcode " * 1000  # 16000 bytes, over LT's 10240
    operator = "customs.officer." + "x" * 40
    ds = officer(machine_of(), note=note, operator=operator)
    description = ds.ThreatSequence[0].ATDAssessmentSequence[0].ThreatCategoryDescription
    assert note.startswith(description) and 10230 < len(description.encode()) <= 10240  # bytes, whole characters
    code = ds.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert code.CodeMeaning == operator and len(code.CodeValue) == 16  # Code Value is SH
    other = officer(machine_of(), operator="customs.officer." + "y" * 40)
    assert other.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0].CodeValue != code.CodeValue


def test_a_reversal_is_the_next_instance_and_refers_to_the_decision_it_supersedes():
    machine = machine_of()
    first = read_tdr(tdr_bytes(officer(machine, "search")))
    later = DECIDED + timedelta(minutes=3)
    ds = officer(machine, "threat", operator="sup", decided=later, supersedes=first)
    assert ds.InstanceNumber == 2 and ds.SeriesInstanceUID == first.SeriesInstanceUID
    assert (ds.SeriesDate, ds.SeriesTime) == (first.SeriesDate, first.SeriesTime)  # the series began with the first
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedStudySequence[1:]] == \
        [machine.SOPInstanceUID, first.SOPInstanceUID]
    with pytest.raises(ValueError, match="another machine TDR"):
        officer(machine_of("volume"), supersedes=first)


def test_an_aware_decision_time_carries_its_offset():
    ds = officer(machine_of(), decided=datetime(2026, 3, 4, 6, 9, tzinfo=timezone(timedelta(hours=1))))
    assert str(ds.AlarmDecisionTime) == "20260304060900+0100" and ds.ContentTime.startswith("0609")


@pytest.mark.parametrize("changes, error, message", [
    ({"outcome": "maybe"}, ValueError, "outcome"),
    ({"category": None}, ValueError, "category"),
    ({"category": "KNIFE"}, ValueError, "category"),
    ({"outcome": "clear", "category": "EXPLOSIVE"}, ValueError, "category"),
    ({"operator": " "}, ValueError, "operator"),
    ({"operator": None}, TypeError, "operator"),
    ({"decided": "2026-03-04"}, TypeError, "decided"),
    ({"machine": "tdr.dcm"}, TypeError, "machine"),
    ({"machine": "operator"}, ValueError, "MACHINE"),
    ({"supersedes": "machine"}, ValueError, "OPERATOR"),
])
def test_bad_arguments_are_refused(changes, error, message):
    machine = machine_of()
    options = {"outcome": "threat", "operator": "op", "decided": DECIDED, "category": "EXPLOSIVE", **changes}
    if options.get("machine") == "operator":
        options["machine"] = officer(machine)
    if options.get("supersedes") == "machine":
        options["supersedes"] = machine
    target = options.pop("machine", machine)
    with pytest.raises(error, match=message):
        operator_tdr(target, **options)


def test_one_writer_for_files_and_bytes_and_the_reader_refuses_what_is_no_tdr(tmp_path):
    ds = officer(machine_of())
    write_tdr(ds, tmp_path / "operator.dcm")
    assert (tmp_path / "operator.dcm").read_bytes() == tdr_bytes(ds)
    assert read_tdr(tmp_path / "operator.dcm").SOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(ValueError, match="not a DICOM"):
        read_tdr(b"not a dicom file at all")


# -- an independent validator and a DICOS toolkit ------------------------------


@requires_dciodvfy
@pytest.mark.parametrize("outcome", [*OUTCOMES, "threat, long note", "threat, control characters", "threat, missed"])
def test_report_passes_dciodvfy(tmp_path, outcome):
    if outcome == "threat, long note":
        ds = officer(machine_of("volume"), note="ü\\" * 9000, operator="o" * 64)
    elif outcome == "threat, control characters":  # as typed or pasted into the viewer's note
        ds = officer(machine_of("volume"), note="wires\u0000 to\ta\u001b[1m battery\r\nsee photo\u007f", operator="o\u0001p")
    elif outcome == "threat, missed":
        ds = officer(machine_of(alerts=False))
    else:
        ds = officer(machine_of("volume"), outcome)
    write_tdr(ds, tmp_path / "operator.dcm")
    _, errors = dciodvfy(tmp_path / "operator.dcm")
    # As for the machine TDR: no DICOS IOD tables in dicom3tools, every attribute still checked.
    assert [line for line in errors if "Information Object Not found" not in line] == []


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("outcome", OUTCOMES)
def test_pydicos_reads_the_report(tmp_path, outcome, case):
    pyDICOS, pydicos = dicos_toolkit()
    machine = machine_of(case)
    path = tmp_path / "operator.dcm"
    write_tdr(officer(machine, outcome), path)
    tdr = toolkit_read(pyDICOS, path)  # the toolkit checks DICOS as it reads: no complaint allowed
    decision = pyDICOS.TDR.ALARM_DECISION
    assert tdr.GetTDRType() == pyDICOS.TDR.TDR_TYPE.enumOperator
    assert tdr.GetAlarmDecision() == {"clear": decision.enumClear, "search": decision.enumUnknownAlarmDecision,
                                      "threat": decision.enumAlarm}[outcome]
    expected = alarmed_ids(machine) if outcome == "threat" else []
    assert tdr.GetNumPTOs() == tdr.GetNumAlarmObjects() == len(expected)
    assert tdr.GetOOIID().Get() == BAG_TAG
    data = pydicos.TDRLoader(path).get_data()
    assert [pto["ID"] for pto in data["PTOs"]] == expected
    for pto in data["PTOs"]:
        assert pto["Assessment"]["category"] == pyDICOS.TDR.THREAT_CATEGORY.enumExplosive
        assert pto["Assessment"]["flag"] == pyDICOS.TDR.ASSESSMENT_FLAG.enumThreat
        assert pto["Assessment"]["description"] == NOTE


def test_pydicos_reads_a_threat_the_machine_did_not_alarm_on(tmp_path):
    pyDICOS, _ = dicos_toolkit()
    write_tdr(officer(machine_of(alerts=False)), tmp_path / "operator.dcm")
    tdr = toolkit_read(pyDICOS, tmp_path / "operator.dcm")
    assert tdr.GetAlarmDecision() == pyDICOS.TDR.ALARM_DECISION.enumAlarm and tdr.GetNumPTOs() == 1


# -- the service ---------------------------------------------------------------


@pytest.fixture
def analysed(tmp_path_factory):
    """A running service with the DICOS CT bag analysed: the service and the scan id.

    One per test: each records its own decisions, and a first decision by
    an operator must find the scan undecided, whatever ran before it.
    """
    store = Store.open(tmp_path_factory.mktemp("data"))
    add_users(store)
    service = Service(store, ServiceConfig(workers=1, dicom_port=0))
    service.start()
    scan_id = service.submit(sample_uploads("bag-dicos-ct"), source="http", username=None).scan_id
    assert service.wait_until_idle(180)
    yield service, scan_id
    service.stop()


def stored_tdr(store: Store, sha256: str | None) -> Dataset:
    assert sha256 is not None
    return read_tdr(store.blobs.get(sha256))


def test_a_decision_on_an_analysed_scan_stores_its_operator_tdr(analysed):
    service, scan_id = analysed
    store = service.store
    with store.read() as conn:
        machine = stored_tdr(store, conn.execute(sa.select(results.c.tdr_sha256)
                                                 .where(results.c.scan_id == scan_id)).scalar())
    with store.transaction() as conn:
        first = record_decision(store, conn, OP, scan_id, "threat", category="EXPLOSIVE", note=NOTE)
    ds = stored_tdr(store, first.operator_tdr_sha256)
    assert (ds.TDRType, ds.AlarmDecision, ds.StudyInstanceUID) == ("OPERATOR", "ALARM", machine.StudyInstanceUID)
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedStudySequence] == \
        [machine.ReferencedStudySequence[0].ReferencedSOPInstanceUID, machine.SOPInstanceUID]
    assert [item.PotentialThreatObjectID for item in ds.ThreatSequence] == alarmed_ids(machine) != []
    for item in ds.ThreatSequence:
        assert item.ATDAssessmentSequence[0].ThreatCategory == "EXPLOSIVE"
        assert item.ReferencedPTOSequence[0].ReferencedTDRInstanceSequence[0].ReferencedSOPInstanceUID == \
            machine.SOPInstanceUID
    code = ds.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert code.CodeValue == "op"
    assert ds.AlarmDecisionTime.endswith(datetime.now().astimezone().strftime("%z"))  # local, with its offset

    with store.transaction() as conn:
        reversal = record_decision(store, conn, SUP, scan_id, "clear", note="a laptop battery, seen on the search")
        stored = {d.id: d.operator_tdr_sha256 for d in decisions_of(conn, scan_id)}
    again = stored_tdr(store, reversal.operator_tdr_sha256)
    assert (again.AlarmDecision, again.InstanceNumber, len(again.ThreatSequence)) == ("CLEAR", 2, 0)
    assert again.ReferencedStudySequence[-1].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert stored[first.id] == first.operator_tdr_sha256 and stored[reversal.id] == reversal.operator_tdr_sha256


def login(client: TestClient, user: str) -> dict[str, str]:
    reply = client.post("/api/token", data={"username": user, "password": PASSWORDS[user]})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def test_the_operator_tdr_is_served_and_its_download_audited(analysed):
    service, scan_id = analysed
    client = TestClient(create_app(service))
    sup, dev = login(client, "sup"), login(client, "dev")
    posted = client.post(f"/api/scans/{scan_id}/decisions", json={"outcome": "search", "note": "open it"},
                         headers=sup)
    assert posted.status_code == 201, posted.text
    decision = posted.json()
    path = f"/api/scans/{scan_id}/decisions/{decision['id']}/tdr.dcm"
    assert client.get(path).status_code == 401
    reply = client.get(path, headers=dev)  # anyone who may view
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/dicom"
    assert reply.content == service.store.blobs.get(decision["operator_tdr_sha256"])
    ds = read_tdr(reply.content)
    assert (ds.TDRType, ds.AlarmDecision) == ("OPERATOR", "UNKNOWN")
    with service.store.read() as conn:
        last = conn.execute(sa.select(audit).order_by(audit.c.seq.desc()).limit(1)).first()
    assert (last.username, last.action, last.target) == ("dev", "download", scan_id)
    assert '"decision":' in last.detail and '"tdr.dcm"' in last.detail
    assert client.get(f"/api/scans/{scan_id}/decisions/{decision['id'] + 99}/tdr.dcm", headers=dev).status_code == 404
    assert client.get(f"/api/scans/other/decisions/{decision['id']}/tdr.dcm", headers=dev).status_code == 404


def test_a_decision_before_the_result_has_no_operator_tdr(tmp_path):
    store = Store.open(tmp_path / "data")
    add_users(store)
    service = Service(store, ServiceConfig(workers=1, dicom_port=0))  # not started: the scan stays queued
    scan_id = service.submit(sample_uploads("bag-dicos-ct"), source="http", username=None).scan_id
    with store.transaction() as conn:
        decision = record_decision(store, conn, OP, scan_id, "threat", category="EXPLOSIVE")
    assert decision.operator_tdr_sha256 is None
    client = TestClient(create_app(service))
    reply = client.get(f"/api/scans/{scan_id}/decisions/{decision.id}/tdr.dcm", headers=login(client, "op"))
    assert reply.status_code == 404
