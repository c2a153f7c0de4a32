"""Cases: what officers found, tied to scans, with every change in the audit log."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from nii.serve import audit
from nii.serve.app import create_app
from nii.serve.auth import User
from nii.serve.cases import CaseError, add_attachment, add_note, add_scans, audit_target, get_case, open_case, update_case
from nii.serve.intake import accept_scan
from nii.serve.service import Service, ServiceConfig
from nii.serve.store import Store
from tests.serve_support import BACKENDS, PASSWORDS, add_users, analyse, open_store, sample_uploads

OP, SUP, DEV = User("op", "operator"), User("sup", "supervisor"), User("dev", "model_developer")
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 100
PDF = b"%PDF-1.4\n" + b"x" * 50


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    store = open_store(tmp_path / "data", request.param)
    add_users(store)
    yield store
    store.engine.dispose()


def scan(store, stem="bag-threat"):
    return accept_scan(store, sample_uploads(stem), source="http", username=None).scan_id


def test_a_case_records_findings_references_notes_and_attachments(store):
    bag, parcel = scan(store), scan(store, "parcel-dicos-dx")
    with store.transaction() as conn:
        case = open_case(store, conn, OP, [bag], category="CONTRABAND", description="cigarettes in the lining",
                         quantity="2.4 kg", seized=True, declaration_number="DE-2026-0042")
    assert (case.status, case.opened_by, case.scan_ids, case.seized) == ("open", "op", (bag,), True)
    with store.transaction() as conn:
        add_scans(store, conn, OP, case.case_id, [parcel, bag])
        add_note(store, conn, OP, case.case_id, "passenger declared nothing")
        add_attachment(store, conn, OP, case.case_id, "../../photo 1.jpg", JPEG)
        add_attachment(store, conn, OP, case.case_id, "receipt.pdf", PDF)
        case = update_case(store, conn, OP, case.case_id, status="referred", quantity="2.5 kg")
    assert case.scan_ids == tuple(sorted([bag, parcel])) and case.status == "referred"
    assert [n["text"] for n in case.notes] == ["passenger declared nothing"]
    assert [(a["name"], a["media_type"]) for a in case.attachments] == [("photo_1.jpg", "image/jpeg"),
                                                                         ("receipt.pdf", "application/pdf")]
    assert store.blobs.get(case.attachments[0]["sha256"]) == JPEG
    with store.read() as conn:
        history = audit.entries(conn, target=audit_target(case.case_id))
    assert [e.action for e in history] == ["case_open", "case_add_scans", "case_note", "case_attachment",
                                           "case_attachment", "case_update"]
    assert '"quantity":"2.5 kg"' in history[-1].detail and '"was"' in history[-1].detail


def test_references_default_to_what_the_scan_carries(store, tmp_path):
    """The sample bag's sidecar names its bag tag; a case on it starts with that tag."""
    bag = analyse(store, sample_uploads("bag-clear"))
    with store.transaction() as conn:
        case = open_case(store, conn, OP, [bag])
    assert case.bag_tag == "2385964878"


def test_closed_cases_reopen_only_by_a_supervisor(store):
    bag = scan(store)
    with store.transaction() as conn:
        case_id = open_case(store, conn, OP, [bag]).case_id
        update_case(store, conn, OP, case_id, status="closed")
    parcel = scan(store, "parcel-dicos-dx")
    for change in [lambda conn: update_case(store, conn, OP, case_id, status="open"),
                   lambda conn: update_case(store, conn, SUP, case_id, description="edited after closing"),
                   lambda conn: add_note(store, conn, SUP, case_id, "one more thing"),
                   lambda conn: add_attachment(store, conn, OP, case_id, "late.jpg", JPEG),
                   lambda conn: add_scans(store, conn, OP, case_id, [parcel])]:
        with pytest.raises(CaseError) as err, store.transaction() as conn:
            change(conn)
        assert err.value.status == 409 and "closed" in str(err.value)
    with store.read() as conn:
        assert get_case(conn, case_id).scan_ids == (bag,)
    with store.transaction() as conn:
        assert update_case(store, conn, SUP, case_id, status="open").status == "open"


@pytest.mark.parametrize("call, status", [
    (lambda s, c, b: open_case(s, c, DEV, [b]), 403),
    (lambda s, c, b: open_case(s, c, OP, []), 422),
    (lambda s, c, b: open_case(s, c, OP, ["no-such-scan"]), 404),
    (lambda s, c, b: open_case(s, c, OP, [b], category="SNACKS"), 422),
    (lambda s, c, b: open_case(s, c, OP, [b], seized="yes"), 422),
    (lambda s, c, b: open_case(s, c, OP, [b], quantity="x" * 65), 422),
    (lambda s, c, b: open_case(s, c, OP, [b], colour="red"), 422),
    (lambda s, c, b: get_case(c, 999), 404),
    (lambda s, c, b: add_attachment(s, c, OP, open_case(s, c, OP, [b]).case_id, "x.exe", b"MZ\x90\x00"), 422),
    (lambda s, c, b: add_note(s, c, OP, open_case(s, c, OP, [b]).case_id, "   "), 422),
])
def test_bad_case_changes_are_refused_with_a_reason(store, call, status):
    bag = scan(store)
    with pytest.raises(CaseError) as err, store.transaction() as conn:
        call(store, conn, bag)
    assert err.value.status == status and "\n" not in str(err.value)


def test_cases_over_the_api(tmp_path):
    store = Store.open(tmp_path)
    add_users(store)
    bag = scan(store)
    client = TestClient(create_app(Service(store, ServiceConfig(workers=1))))

    def login(user):
        token = client.post("/api/token", data={"username": user, "password": PASSWORDS[user]}).json()
        return {"Authorization": f"Bearer {token['access_token']}"}

    op, dev = login("op"), login("dev")
    assert client.post("/api/cases", json={"scan_ids": [bag]}, headers=dev).status_code == 403
    assert client.post("/api/cases", json={"scan_ids": []}, headers=op).status_code == 422
    opened = client.post("/api/cases", json={"scan_ids": [bag], "category": "PROHIBITED_ITEM", "seized": True},
                         headers=op)
    assert opened.status_code == 201
    case_id = opened.json()["case_id"]
    reply = client.patch(f"/api/cases/{case_id}", json={"status": "referred", "description": "knife"}, headers=op)
    assert reply.json()["status"] == "referred" and reply.json()["category"] == "PROHIBITED_ITEM"
    assert client.post(f"/api/cases/{case_id}/notes", json={"text": "handed to police"}, headers=op).status_code == 201
    attached = client.post(f"/api/cases/{case_id}/attachments", files={"file": ("photo.jpg", JPEG)}, headers=op)
    attachment = attached.json()["attachments"][0]
    download = client.get(f"/api/cases/{case_id}/attachments/{attachment['id']}", headers=dev)
    assert download.content == JPEG and download.headers["content-type"] == "image/jpeg"
    listed = client.get("/api/cases", params={"scan_id": bag}, headers=dev).json()["cases"]
    assert [c["case_id"] for c in listed] == [case_id]
    assert client.get("/api/cases", params={"status": "closed"}, headers=dev).json()["cases"] == []
    assert client.get(f"/api/cases/{case_id}", headers=dev).json()["notes"][0]["text"] == "handed to police"
    assert client.get("/api/cases/12345", headers=dev).status_code == 404
    assert client.get("/api/cases").status_code == 401
