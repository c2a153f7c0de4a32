"""The service's storage on SQLite and on PostgreSQL: same code, same behaviour."""

from __future__ import annotations

import re
import threading

import pytest
import sqlalchemy as sa

from nii.serve import audit
from nii.serve.auth import AuthError, Permission, User, add_user, authenticate, issue_token, revoke_token, user_for_token
from nii.serve.decisions import DecisionError, decisions_of, record_decision
from nii.serve.intake import IntakeError, IntakeLimits, Upload, accept_scan, materialise, safe_name
from nii.serve.store import MIGRATIONS, BlobStore, Store, StoreError, schema_migrations, scan_files, scans
from tests.serve_support import BACKENDS, add_users, open_store, sample_uploads

from datetime import timedelta


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Store:
    store = open_store(tmp_path / "data", request.param)
    yield store
    store.engine.dispose()


def test_migrations_run_once_and_record_their_versions(store, tmp_path):
    from nii.serve.store import migrate

    assert migrate(store.engine) == []  # already applied by Store.open
    with store.transaction() as conn:
        versions = sorted(conn.execute(sa.select(schema_migrations.c.version)).scalars())
    assert versions == [m[0] for m in MIGRATIONS]


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store.open(tmp_path)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_unreachable_database_is_one_line(tmp_path):
    with pytest.raises(StoreError, match="database") as err:
        Store.open(tmp_path, "postgresql+psycopg://nobody:secret@127.0.0.1:9/none")
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


def test_blobs_are_content_addressed_and_written_once(tmp_path):
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"scan bytes")
    assert blobs.put(b"scan bytes") == digest
    assert blobs.get(digest) == b"scan bytes"
    assert blobs.path(digest).parent.name == digest[:2]
    assert not list(tmp_path.rglob(".incoming-*"))
    with pytest.raises(ValueError, match="sha256"):
        blobs.path("../../etc/passwd")


def test_a_scan_is_accepted_once_and_its_bytes_kept_exactly(store, tmp_path):
    uploads = sample_uploads("bag-clear")
    first = accept_scan(store, uploads, source="http", username="op")
    again = accept_scan(store, uploads, source="hotfolder", username=None)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.scan_id == again.scan_id and first.status == "queued"
    with store.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scans)).scalar() == 1
        files = store.files_of(conn, first.scan_id)
    assert {f.name: store.blobs.get(f.sha256) for f in files} == {u.name: u.data for u in uploads}
    source = materialise(store, first.scan_id, tmp_path / "out")
    assert source.path.name == "bag-clear.json"


def test_one_file_under_any_name_is_read_at_intake_and_again_from_the_store(store, tmp_path):
    dicos = sample_uploads("parcel-dicos-dx")[0]
    accepted = accept_scan(store, [Upload("parcel.txt", dicos.data)], source="http", username="op")
    source = materialise(store, accepted.scan_id, tmp_path / "out")  # what a worker does to analyse it
    assert source.path.name == "parcel.txt"


def test_a_different_image_under_a_held_scan_id_is_refused_not_called_a_duplicate(store):
    sidecar, raw = sample_uploads("bag-clear")
    first = accept_scan(store, [sidecar, raw], source="http", username="op")
    # Other bytes, same pixels (a sender that re-wrote the header): the same scan.
    reworded = Upload(sidecar.name, sidecar.data.replace(b'"bag_tag"', b'"lane": "3", "bag_tag"'))
    assert accept_scan(store, [reworded, raw], source="dicom", username=None).duplicate
    # Same id, other pixels: a scanner re-using ids. Neither image may be lost.
    pixels = bytearray(raw.data)
    pixels[1000] ^= 0xFF
    with pytest.raises(IntakeError, match="a different image is already held under scan id") as err:
        accept_scan(store, [sidecar, Upload(raw.name, bytes(pixels))], source="http", username="op")
    assert err.value.conflict and "\n" not in str(err.value)
    with store.transaction() as conn:
        files = store.files_of(conn, first.scan_id)
    assert {f.name: store.blobs.get(f.sha256) for f in files} == {sidecar.name: sidecar.data, raw.name: raw.data}


@pytest.mark.parametrize("uploads, reason", [
    ([], "no files"),
    ([Upload("x.png", b"not a png")], "unrecognised content"),
    (sample_uploads("bag-clear") + sample_uploads("container"), "hold 2 scans"),
    (sample_uploads("bag-clear")[:1], "No such file or directory: 'bag-clear.raw'"),
    ([sample_uploads("bag-clear")[0], Upload("renamed.raw", sample_uploads("bag-clear")[1].data)],
     "bag-clear.json names data_file bag-clear.raw, which was not sent"),
])
def test_unreadable_submissions_are_refused_with_their_reason(store, uploads, reason):
    with pytest.raises(IntakeError, match=reason) as err:
        accept_scan(store, uploads, source="http", username="op")
    assert "\n" not in str(err.value) and "/tmp" not in str(err.value)
    with store.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(scans)).scalar() == 0


def test_a_scan_named_like_an_api_path_is_refused(store, tmp_path):
    sidecar, raw = sample_uploads("bag-clear")
    named = Upload(sidecar.name, re.sub(rb'"scan_id": "[^"]*"', b'"scan_id": "events"', sidecar.data))
    with pytest.raises(IntakeError, match="a word of the service's API"):
        accept_scan(store, [named, raw], source="http", username="op")


def test_size_limits_refuse_before_reading(store):
    with pytest.raises(IntakeError, match="limit") as err:
        accept_scan(store, sample_uploads("bag-clear"), source="http", username=None,
                    limits=IntakeLimits(max_bytes=1000))
    assert err.value.too_large


def test_names_from_senders_never_become_paths():
    assert safe_name("../../etc/passwd", 0) == "passwd"
    assert safe_name("..\\..\\win.ini", 0) == "win.ini"
    assert safe_name(".hidden", 3) == "hidden"
    assert safe_name("", 3) == "file-3"
    assert "/" not in safe_name("a/b/c d?.dcm", 0)


def test_workers_never_claim_the_same_scan_twice(store):
    for stem in ("bag-clear", "bag-threat", "container", "parcel-dicos-dx"):
        accept_scan(store, sample_uploads(stem), source="http", username=None)
    claimed: list[str] = []

    def claim_all():
        while True:
            with store.transaction() as conn:
                scan_id = store.claim_scan(conn)
            if scan_id is None:
                return
            claimed.append(scan_id)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 4 and len(set(claimed)) == 4
    assert store.requeue_unfinished() and store.requeue_unfinished() == []


def test_passwords_roles_and_tokens(store):
    with store.transaction() as conn:
        user = add_user(store, conn, "op", "operator-pass", "operator")
        assert authenticate(conn, "op", "operator-pass") == user
        assert authenticate(conn, "op", "wrong-password") is None
        assert authenticate(conn, "nobody", "operator-pass") is None
        token = issue_token(conn, user, lifetime=timedelta(hours=1))
        expired = issue_token(conn, user, lifetime=timedelta(seconds=-1))
        stored = conn.exec_driver_sql("SELECT password_hash FROM users").scalar()
    assert stored.startswith("$argon2id$") and "operator-pass" not in stored
    with store.transaction() as conn:
        assert user_for_token(conn, token) == user
        assert user_for_token(conn, expired) is None
        revoke_token(conn, token)
        assert user_for_token(conn, token) is None
    assert not user.can(Permission.CHANGE_THRESHOLDS) and not user.can(Permission.REVERSE_DECISION)
    with store.transaction() as conn:
        for bad in [("x y", "operator-pass", "operator"), ("ok", "short", "operator"), ("ok", "long-enough", "king")]:
            with pytest.raises(AuthError):
                add_user(store, conn, *bad)


def test_only_a_supervisor_reverses_a_decision(store):
    add_users(store)
    scan_id = accept_scan(store, sample_uploads("bag-threat"), source="http", username=None).scan_id
    op, sup, dev = User("op", "operator"), User("sup", "supervisor"), User("dev", "model_developer")
    admin = User("boss", "admin")
    with store.transaction() as conn:
        first = record_decision(store, conn, op, scan_id, "search")
    for user, code in [(op, 403), (dev, 403), (admin, 403)]:
        with pytest.raises(DecisionError) as err, store.transaction() as conn:
            record_decision(store, conn, user, scan_id, "clear")
        assert err.value.status == code
    with store.transaction() as conn:
        reversal = record_decision(store, conn, sup, scan_id, "threat", category="CONTRABAND", note="found in lining")
        history = decisions_of(conn, scan_id)
    assert reversal.supersedes == first.id and [d.outcome for d in history] == ["search", "threat"]
    for kwargs, code in [({"outcome": "threat"}, 422), ({"outcome": "clear", "category": "OTHER"}, 422),
                         ({"outcome": "maybe"}, 422), ({"outcome": "threat", "category": "GUN"}, 422),
                         ({"outcome": "threat", "category": "CONTRABAND", "note": "same again"}, 409),
                         ({"outcome": "search"}, 422), ({"outcome": "search", "note": "   "}, 422)]:
        with pytest.raises(DecisionError) as err, store.transaction() as conn:
            record_decision(store, conn, sup, scan_id, **kwargs)
        assert err.value.status == code
    with pytest.raises(DecisionError) as err, store.transaction() as conn:
        record_decision(store, conn, sup, "no-such-scan", "clear")
    assert err.value.status == 404
    with store.read() as conn:
        assert len(decisions_of(conn, scan_id)) == 2
        assert [e.action for e in audit.entries(conn, target=scan_id)].count("reverse_decision") == 1


def test_audit_chain_detects_a_changed_entry(store):
    with store.transaction() as conn:
        for i in range(5):
            audit.append(store, conn, username="op", action="view", target=f"scan-{i}", detail={"i": i})
    with store.transaction() as conn:
        rows = audit.entries(conn)
    assert audit.verify_chain(rows) == (5, None)
    assert rows[0].prev_hash == audit.GENESIS and rows[1].prev_hash == rows[0].hash
    # The database refuses edits outright...
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.transaction() as conn:
        conn.execute(sa.text("UPDATE audit SET target = 'other' WHERE seq = 3"))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.transaction() as conn:
        conn.execute(sa.text("DELETE FROM audit WHERE seq = 3"))
    # ... and the chain still catches one made behind its back.
    import dataclasses

    forged = [dataclasses.replace(r, detail='{"i":99}') if r.seq == 3 else r for r in rows]
    checked, broken = audit.verify_chain(forged)
    assert (checked, broken.seq) == (2, 3) and "changed" in broken.reason
    removed = [r for r in rows if r.seq != 2]
    assert audit.verify_chain(removed)[1].seq == 3


def test_audit_appends_from_many_threads_stay_one_chain(store):
    def append_some():
        for _ in range(10):
            with store.transaction() as conn:
                audit.append(store, conn, username="op", action="view", target="x")

    threads = [threading.Thread(target=append_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.transaction() as conn:
        assert audit.verify_chain(audit.entries(conn)) == (40, None)


def test_an_older_database_is_brought_up_to_date(store, tmp_path):
    """A database made before version 3 gains the cases tables and the new columns."""
    from nii.serve.store import migrate

    with store.transaction() as conn:  # back to what version 2 made
        for table in ("case_attachments", "case_notes", "case_scans", "cases"):
            conn.exec_driver_sql(f"DROP TABLE {table}")
        conn.exec_driver_sql("ALTER TABLE decisions DROP COLUMN operator_tdr_sha256")
        conn.exec_driver_sql("ALTER TABLE scans DROP COLUMN lane")
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version == 3))
    assert migrate(store.engine) == [3]
    inspector = sa.inspect(store.engine)
    assert {"cases", "case_scans", "case_notes", "case_attachments"} <= set(inspector.get_table_names())
    assert "lane" in {c["name"] for c in inspector.get_columns("scans")}
    assert "operator_tdr_sha256" in {c["name"] for c in inspector.get_columns("decisions")}
