"""Evidence packages: a case exported, signed, and any changed byte caught (issue #10)."""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
import sqlite3
import stat
import zipfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nii.cli import main
from nii.serve import audit
from nii.evidence import EvidenceError, export_case, fingerprint, site_key, verify_package
from nii.calibrate.profile import CALIBRATION_ROOT, load_profile
from nii.evidence.keys import SITE_KEY_NAME
from nii.evidence.package import _Writer, _enclose_profiles
from nii.serve.auth import User
from nii.serve.cases import add_attachment, add_note, open_case
from nii.serve.decisions import record_decision
from nii.serve.intake import Upload
from nii.serve.store import Store
from tests.serve_support import SAMPLES, add_users, analyse

OP = User("op", "operator")
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2
SIGNED = {"manifest.json", "manifest.sig", "public-key.pem"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A real case: a DICOS CT bag analysed by the service, a confirmed threat, a photograph."""
    data = tmp_path_factory.mktemp("data")
    store = Store.open(data)
    add_users(store)
    original = (SAMPLES / "bag-dicos-ct.dcm").read_bytes()
    scan_id = analyse(store, [Upload("bag-dicos-ct.dcm", original)])
    with store.transaction() as conn:
        record_decision(store, conn, OP, scan_id, "threat", category="EXPLOSIVE", note="sheet in the lining")
        case_id = open_case(store, conn, OP, [scan_id], category="EXPLOSIVE", description="sheet explosive",
                            quantity="130 g", seized=True).case_id
        add_note(store, conn, OP, case_id, "passenger declared nothing")
        add_attachment(store, conn, OP, case_id, "../search photo.jpg", JPEG)
    package = data.parent / "case.zip"
    exported = export_case(store, case_id, package, key=site_key(data))
    yield {"store": store, "data": data, "case_id": case_id, "scan_id": scan_id, "original": original,
           "package": package, "exported": exported}
    store.engine.dispose()


# Where the shipped ct-baggage profile goes in a package: one folder per profile ("v1-<hash>").
PROFILE_FOLDER = load_profile(CALIBRATION_ROOT / "ct-baggage" / "profile.npz").profile_id.split("/", 1)[1].replace("/", "-")


def rewritten(source, target, change):
    """Copy the package, passing each member's (name, bytes) through ``change``; None drops it."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            kept = change(info.filename, old.read(info))
            if kept is not None:
                new.writestr(info.filename, kept)
    return target


def flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def test_export_holds_the_case_exactly_and_verifies(case):
    result = verify_package(case["package"])
    assert result.ok and result.problems == () and result.trusted is None
    assert result.fingerprint == case["exported"].fingerprint
    with zipfile.ZipFile(case["package"]) as archive:
        names = set(archive.namelist())
        assert archive.read("scans/1/original/bag-dicos-ct.dcm") == case["original"]
        manifest = json.loads(archive.read("manifest.json"))
        decisions = json.loads(archive.read("scans/1/decisions.json"))
        excerpt = json.loads(archive.read("audit.json"))
        assert archive.read("report.pdf").startswith(b"%PDF-")
        assert archive.read("attachments/1-search_photo.jpg") == JPEG
    assert {"README.txt", "case.json", "scans/1/scan.json", "scans/1/annotated.png", "scans/1/result.json",
            "scans/1/machine-tdr.dcm", "provenance.json", "models/rule-ct-density-1.0.0/card.json",
            f"calibration/ct-baggage/{PROFILE_FOLDER}/profile.npz"} <= names
    assert {m["path"] for m in manifest["files"]} | {"manifest.json", "manifest.sig"} == names
    assert manifest["case_id"] == case["case_id"] and manifest["signer"]["fingerprint"] == result.fingerprint
    assert [(d["username"], d["outcome"], d["category"]) for d in decisions] == [("op", "threat", "EXPLOSIVE")]
    assert excerpt["chain"]["intact"] and {e["action"] for e in excerpt["entries"]} >= {
        "submit", "analyse", "decide", "case_open", "case_note", "case_attachment"}
    key_file = case["data"] / SITE_KEY_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_profile_replaced_by_a_rebuild_is_still_enclosed(case, tmp_path):
    from nii.calibrate.profile import build_profile, save_profile

    root = tmp_path / "calibration"
    used = load_profile(CALIBRATION_ROOT / "ct-baggage" / "profile.npz")  # the one the case's result names
    save_profile(used, root / "ct-baggage" / "profile.npz")
    save_profile(build_profile(CALIBRATION_ROOT / "ct-baggage", version=used.version + 1),
                 root / "ct-baggage" / "profile.npz")
    export_case(case["store"], case["case_id"], tmp_path / "case.zip", key=site_key(case["data"]),
                calibration_root=root)
    with zipfile.ZipFile(tmp_path / "case.zip") as archive:
        enclosed = tmp_path / "enclosed.npz"
        enclosed.write_bytes(archive.read(f"calibration/ct-baggage/{PROFILE_FOLDER}/profile.npz"))
        provenance = json.loads(archive.read("provenance.json"))
    assert load_profile(enclosed).profile_id == used.profile_id
    listed = [p for p in provenance["calibration"] if p["profile_id"] == used.profile_id]
    assert listed and listed[0]["enclosed"], provenance
    # A case spanning the recalibration names both profiles of the scanner: both go in, side by side.
    rebuilt = load_profile(root / "ct-baggage" / "profile.npz")
    with zipfile.ZipFile(tmp_path / "both.zip", "w") as archive:
        enclosed = _enclose_profiles(_Writer(archive, (2026, 1, 1, 0, 0, 0)), [used.profile_id, rebuilt.profile_id], root)
    assert [(p["profile_id"], p["enclosed"]) for p in enclosed] == [(used.profile_id, True), (rebuilt.profile_id, True)]
    assert len({p["folder"] for p in enclosed}) == 2


def test_one_changed_byte_in_any_file_fails_naming_it(case, tmp_path):
    with zipfile.ZipFile(case["package"]) as archive:
        names = archive.namelist()
    assert len(names) >= 15
    for name in names:
        bad = rewritten(case["package"], tmp_path / "bad.zip",
                        lambda n, data: flipped(data) if n == name else data)
        result = verify_package(bad)
        assert not result.ok, name
        first = result.problems[0]
        if name in SIGNED:
            assert "SIGNATURE" in first, (name, first)
        else:
            assert first == f"MISMATCH {name}: sha256 differs", (name, first)


def test_raw_byte_flips_in_stored_data_never_pass(case, tmp_path):
    """Corrupting a member's compressed bytes on disk (not via zipfile) is caught too.

    The zip's own metadata (timestamps, version fields) is not evidence and not covered.
    """
    data = case["package"].read_bytes()
    with zipfile.ZipFile(case["package"]) as archive:
        infos = archive.infolist()
    for info in infos:
        name_length, extra_length = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
            int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
        offset = info.header_offset + 30 + name_length + extra_length + info.compress_size // 2
        bad = tmp_path / "raw.zip"
        bad.write_bytes(data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:])
        try:
            assert not verify_package(bad).ok, info.filename
        except EvidenceError:
            pass


def test_extra_missing_and_repeated_files_fail(case, tmp_path):
    extra = rewritten(case["package"], tmp_path / "extra.zip", lambda n, d: d)
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("scans/1/original/planted.dcm", b"not what the scanner sent")
    assert verify_package(extra).problems == ("UNLISTED scans/1/original/planted.dcm: in the package but not in "
                                              "the manifest",)
    missing = rewritten(case["package"], tmp_path / "missing.zip", lambda n, d: None if n == "audit.json" else d)
    assert verify_package(missing).problems[0].startswith("MISSING audit.json")
    repeated = rewritten(case["package"], tmp_path / "repeated.zip", lambda n, d: d)
    with pytest.warns(UserWarning), zipfile.ZipFile(repeated, "a") as archive:
        archive.writestr("scans/1/result.json", b"{}")
    assert verify_package(repeated).problems[0].startswith("REPEATED scans/1/result.json")


def test_a_package_re_signed_by_another_key_fails_only_against_the_trusted_key(case, tmp_path):
    forger = Ed25519PrivateKey.generate()
    pem = forger.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with zipfile.ZipFile(case["package"]) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    manifest["signer"]["fingerprint"] = fingerprint(forger.public_key())
    for entry in manifest["files"]:
        if entry["path"] == "public-key.pem":
            entry.update(sha256=hashlib.sha256(pem).hexdigest(), size=len(pem))
    forged_manifest = json.dumps(manifest).encode()
    replacements = {"manifest.json": forged_manifest, "manifest.sig": forger.sign(forged_manifest),
                    "public-key.pem": pem}
    forged = rewritten(case["package"], tmp_path / "forged.zip", lambda n, d: replacements.get(n, d))
    assert verify_package(forged).problems == ()  # internally consistent: integrity alone cannot tell
    site = site_key(case["data"], create=False).public_key()
    assert verify_package(forged, trusted_key=site).trusted is False
    assert not verify_package(forged, trusted_key=site).ok
    assert verify_package(case["package"], trusted_key=site).ok


def test_cli_exit_codes(case, tmp_path, capsys):
    package = str(case["package"])
    assert main(["evidence", "verify", package]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and case["exported"].fingerprint in out and "not who signed it" in out
    assert main(["evidence", "verify", package, "--data", str(case["data"])]) == 0
    assert "NOTE" not in capsys.readouterr().out
    other = tmp_path / "other.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert main(["evidence", "verify", package, "--public-key", str(other)]) == 1
    assert capsys.readouterr().out.startswith("UNTRUSTED: signed by ")
    bad = rewritten(case["package"], tmp_path / "bad.zip",
                    lambda n, d: flipped(d) if n == "scans/1/result.json" else d)
    assert main(["evidence", "verify", str(bad)]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "MISMATCH scans/1/result.json: sha256 differs"
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    assert main(["evidence", "verify", str(junk)]) == 2
    assert "not a readable evidence package" in capsys.readouterr().err
    out_file = tmp_path / "again.zip"
    assert main(["evidence", "export", str(case["case_id"]), "--out", str(out_file), "--data", str(case["data"])]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out_file}: ")
    assert verify_package(out_file, trusted_key=site_key(case["data"], create=False).public_key()).ok
    assert main(["evidence", "export", "999", "--out", str(tmp_path / "none.zip"), "--data", str(case["data"])]) == 2
    assert "no case 999" in capsys.readouterr().err and not (tmp_path / "none.zip").exists()
    with pytest.raises(SystemExit) as refused:  # argparse's usage line, before any database
        main(["evidence", "export", str(2**63), "--out", str(tmp_path / "none.zip"), "--data", str(case["data"])])
    assert refused.value.code == 2 and f"must be within 1-{2**31 - 1}" in capsys.readouterr().err


def test_a_broken_audit_log_is_said_at_export_and_at_verify(case, tmp_path, capsys):
    data = tmp_path / "data"
    with _unguarded_copy(case["data"], data) as db:  # someone edits the log behind the service's back
        db.execute("UPDATE audit SET detail = '{\"outcome\": \"clear\"}' WHERE action = 'decide'")
    out = tmp_path / "tampered.zip"
    assert main(["evidence", "export", str(case["case_id"]), "--out", str(out), "--data", str(data)]) == 1
    assert "WARNING: the site's audit log was BROKEN at entry" in capsys.readouterr().err
    assert main(["evidence", "verify", str(out), "--data", str(data)]) == 0  # the package is what it says
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("OK: ") and lines[1].startswith("WARNING: the package is intact, but the site's")


def _unguarded_copy(data, folder):
    """A copy of the data folder whose audit log can be edited (the append-only triggers dropped)."""
    shutil.copytree(data, folder)
    db = sqlite3.connect(folder / "nii.sqlite3")
    for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"):
        db.execute(f'DROP TRIGGER "{trigger}"')
    return db


def test_audit_verify_holds_the_log_to_what_an_evidence_package_recorded(case, tmp_path, capsys):
    recorded = verify_package(case["package"]).audit_chain
    assert recorded["through_seq"] > 0 and len(recorded["through_hash"]) == 64
    assert main(["audit", "verify", "--data", str(case["data"]), "--package", str(case["package"])]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{case['package']}: agrees (entry {recorded['through_seq']} as exported)"

    with _unguarded_copy(case["data"], tmp_path / "cut") as db:  # the log's end, case entries included, removed
        db.execute("DELETE FROM audit WHERE seq >= ?", (recorded["through_seq"],))
    assert main(["audit", "verify", "--data", str(tmp_path / "cut"), "--package", str(case["package"])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("audit log intact")  # the chain alone cannot tell
    assert out[1].endswith(f"DISAGREES: the log ends at entry {recorded['through_seq'] - 1}, but entry "
                           f"{recorded['through_seq']} was recorded: entries were cut off its end")

    with _unguarded_copy(case["data"], tmp_path / "rebuilt") as db:  # a decision changed, every hash made again
        db.execute("UPDATE audit SET detail = '{\"outcome\": \"clear\"}' WHERE action = 'decide'")
        prev = audit.GENESIS
        for row in db.execute("SELECT seq, at, username, action, target, detail FROM audit ORDER BY seq").fetchall():
            digest = audit._entry_hash(*row, prev)
            db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, row[0]))
            prev = digest
    assert main(["audit", "verify", "--data", str(tmp_path / "rebuilt"), "--package", str(case["package"])]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("audit log intact") and "the log was rebuilt or changed since" in out[1]

    other = tmp_path / "other.zip"  # a package signed by some other key is no record of this site's log
    export_case(case["store"], case["case_id"], other, key=Ed25519PrivateKey.generate())
    assert main(["audit", "verify", "--data", str(case["data"]), "--package", str(other)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (f"{other}: not compared, the package does not verify "
                                                        "(not signed by this site's key)")


def test_export_warns_of_what_it_cannot_enclose_names_who_ran_it_and_keeps_an_earlier_package(case, tmp_path,
                                                                                                  capsys):
    pipeline = tmp_path / "pipeline.toml"  # a config whose calibration folder lacks the profile the result names
    (tmp_path / "calibration").mkdir()
    pipeline.write_text(f"calibration_root = '{tmp_path / 'calibration'}'\n[models.rule-ct-density]\n")
    out = tmp_path / "case.zip"
    code = main(["evidence", "export", str(case["case_id"]), "--out", str(out), "--data", str(case["data"]),
                 "--pipeline", str(pipeline)])
    assert code == 1 and out.exists()
    assert "WARNING: ct-baggage/v1/" in capsys.readouterr().err
    with case["store"].read() as conn:
        last = audit.entries(conn, target=f"case:{case['case_id']}")[-1]
    assert (last.action, last.username) == ("evidence_export", f"{getpass.getuser()}@cli")
    before = out.read_bytes()
    assert main(["evidence", "export", str(case["case_id"]), "--out", str(out), "--data", str(case["data"])]) == 2
    assert "exists; give the new package another name" in capsys.readouterr().err and out.read_bytes() == before


def test_an_attachment_is_named_in_the_package_by_what_its_bytes_are(case, tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    with case["store"].transaction() as conn:
        add_attachment(case["store"], conn, OP, case["case_id"], "photo.pdf", png)  # a PNG, named .pdf
    export_case(case["store"], case["case_id"], tmp_path / "case.zip", key=site_key(case["data"]))
    with zipfile.ZipFile(tmp_path / "case.zip") as archive:
        attached = [n for n in archive.namelist() if n.startswith("attachments/")]
        assert "attachments/1-search_photo.jpg" in attached  # a JPEG named .jpg keeps its name
        named = [n for n in attached if "photo.pdf" in n]
        assert named and named[0].endswith("photo.pdf.png") and archive.read(named[0]) == png


def test_the_report_draws_names_in_other_scripts_not_boxes():
    from PIL import ImageFont

    from nii.evidence.report import _font

    try:
        ImageFont.truetype("DejaVuSans.ttf", 20)
    except OSError:
        pytest.skip("DejaVu Sans is not installed (Debian: fonts-dejavu-core; .ci/run installs it)")
    font = _font(20)

    def glyph(text: str) -> bytes:
        return bytes(font.getmask(text))

    missing = glyph("\U0010fffd")  # a code point no font draws: the "box"
    # An officer's or a passenger's name as written: Polish, Greek, Russian, Hebrew, Arabic.
    assert [c for c in "éŁłΩжשع" if glyph(c) == missing] == []
