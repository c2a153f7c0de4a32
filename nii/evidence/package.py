"""Export one case as a signed evidence package (``nii evidence export``).

The package is a zip with a fixed layout::

    README.txt                        what each file is; how to check it without nii
    public-key.pem                    the site's Ed25519 public key
    case.json                         the case as stored; scan numbers -> scan ids
    scans/<n>/scan.json               the scan's row, its files as received, result hashes
    scans/<n>/original/<name>         the bytes exactly as received
    scans/<n>/annotated.png           the operator's annotated image
    scans/<n>/result.json             the result JSON
    scans/<n>/machine-tdr.dcm         the machine's DICOS TDR
    scans/<n>/decisions.json          officers' decisions, oldest first
    scans/<n>/operator-tdr-<id>.dcm   the officer's DICOS TDR of decision <id>
    audit.json                        audit entries about the case and its scans, and the chain check
    provenance.json                   models and calibration profiles used, and which are enclosed
    models/<name>-<version>/card.json, SHA256SUMS
    calibration/<scanner>/v<N>-<hash>/profile.npz (or profile-header.json when too large)
    attachments/<id>-<name>           photographs and documents of the search
    report.pdf                        the printable report
    manifest.json                     every file above: path, sha256, size; the signer's fingerprint
    manifest.sig                      Ed25519 signature of manifest.json's exact bytes

Every byte that goes in is hashed on the way; a blob whose bytes no longer
match the hash the database recorded stops the export, since a package must
never carry evidence already corrupt. The archive is written to a temporary
file beside ``out`` and renamed into place, so ``out`` is whole or absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

import nii
from nii.evidence.keys import fingerprint, public_pem
from nii.evidence.report import Block, render_report
from nii.serve import audit
from nii.serve.cases import ATTACHMENT_SUFFIXES, audit_target, get_case
from nii.serve.decisions import decisions_of
from nii.serve.intake import safe_name
from nii.serve.store import Store, audit as audit_table, results, scans, utc_now

__all__ = ["FORMAT", "EvidenceError", "Exported", "export_case"]

FORMAT = "nii-evidence/1"
#: Profiles larger than this go in as their header and hash only.
MAX_PROFILE_BYTES = 64 << 20
_CHUNK = 1 << 20


class EvidenceError(ValueError):
    """An evidence package cannot be made or read; ``str(err)`` is one line."""


@dataclasses.dataclass(frozen=True)
class Exported:
    """What :func:`export_case` wrote."""

    path: Path
    files: int
    fingerprint: str
    manifest_sha256: str
    #: The site's audit log as checked at export: ``intact``, ``broken_at``,
    #: ``reason``, ``through_seq`` (also in the signed manifest).
    audit_chain: Mapping[str, Any]
    #: (model or profile, why) for each one a result names that could not
    #: be enclosed (provenance.json says the same).
    not_enclosed: tuple[tuple[str, str], ...] = ()


class _Writer:
    """Adds members to the open zip, hashing each, in manifest order."""

    def __init__(self, archive: zipfile.ZipFile, created: tuple[int, ...]) -> None:
        self.archive = archive
        self.created = created
        self.listed: list[dict[str, Any]] = []

    def _info(self, path: str) -> zipfile.ZipInfo:
        if path in {m["path"] for m in self.listed} or path.startswith("/") or ".." in path.split("/"):
            raise EvidenceError(f"package path {path!r} is repeated or unsafe")
        info = zipfile.ZipInfo(path, date_time=self.created)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        return info

    def add(self, path: str, data: bytes) -> str:
        self.archive.writestr(self._info(path), data)
        digest = hashlib.sha256(data).hexdigest()
        self.listed.append({"path": path, "sha256": digest, "size": len(data)})
        return digest

    def add_json(self, path: str, value: Any) -> str:
        return self.add(path, (json.dumps(value, indent=1, ensure_ascii=False, sort_keys=False) + "\n").encode())

    def add_blob(self, path: str, store: Store, sha256: str) -> None:
        """Copy a blob in chunks (original scans may be gigabytes), checking it is still what was stored."""
        source = store.blobs.path(sha256)
        size = source.stat().st_size
        digest = hashlib.sha256()
        with open(source, "rb") as data, self.archive.open(self._info(path), "w", force_zip64=size >= 1 << 31) as out:
            for chunk in iter(lambda: data.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise EvidenceError(f"blob {sha256} (for {path}) no longer matches its hash: the data folder is "
                                "corrupt or was changed; refusing to package it")
        self.listed.append({"path": path, "sha256": sha256, "size": size})


def _member_name(name: str, index: int) -> str:
    # Names from the database were made safe at intake; make sure again,
    # since a path in the zip is what a reader's unzip will write.
    return safe_name(str(name), index)


def _audit_excerpt(conn: sa.engine.Connection, targets: list[str]) -> dict[str, Any]:
    about = [audit.AuditEntry(**row._mapping) for row in conn.execute(
        sa.select(audit_table).where(audit_table.c.target.in_(targets)).order_by(audit_table.c.seq))]
    through = about[-1].seq if about else 0
    checked, broken = audit.verify_chain(audit.entries(conn, limit=through)) if through else (0, None)
    head = conn.execute(sa.select(audit_table.c.hash).where(audit_table.c.seq == through)).scalar() if through else None
    return {
        "targets": targets,
        "chain": {
            "checked_entries": checked,
            "through_seq": through,
            "through_hash": head,
            "intact": broken is None,
            "broken_at": None if broken is None else broken.seq,
            "reason": None if broken is None else broken.reason,
            "about": "entries 1..through_seq of the site's log were checked at export; through_hash can be "
                     "compared with the live log (nii audit verify --package) or a later export",
        },
        # detail_json is the exact text each entry's hash covers.
        "entries": [{**e.to_dict(), "detail_json": e.detail} for e in about],
    }


def _enclose_models(writer: _Writer, model_lines: list[str], models_root: Path | None) -> list[dict[str, Any]]:
    from nii.detect.registry import MODELS_ROOT, ModelArtifactError, open_artifact

    listed: list[dict[str, Any]] = []
    for line in dict.fromkeys(model_lines):
        name, version, sha256 = (line.split() + ["", "", ""])[:3]
        entry: dict[str, Any] = {"name": name, "version": version, "sha256": sha256, "enclosed": False}
        try:
            artifact = open_artifact(name, version, models_root or MODELS_ROOT)
        except (ModelArtifactError, KeyError, OSError, ValueError) as err:
            entry["note"] = f"not enclosed: {' '.join(str(err).split())[:200]}"
        else:
            if artifact.identity.sha256 != sha256:
                entry["note"] = (f"not enclosed: the registry's {name} {version} is {artifact.identity.sha256}, "
                                 "not the artifact that produced the alerts")
            else:
                folder = f"models/{_member_name(name, 0)}-{_member_name(version, 0)}"
                writer.add(f"{folder}/card.json", artifact.read("card.json"))
                # SHA256SUMS's own sha256 is the artifact identity the alerts name.
                writer.add(f"{folder}/SHA256SUMS", (artifact.folder / "SHA256SUMS").read_bytes())
                entry.update(enclosed=True, folder=folder)
        listed.append(entry)
    return listed


def _enclose_profiles(writer: _Writer, profile_ids: list[str], calibration_root: Path | None) -> list[dict[str, Any]]:
    from nii.calibrate.profile import CALIBRATION_ROOT, ProfileError, default_profile_path, find_profile, load_profile

    listed: list[dict[str, Any]] = []
    for profile_id in dict.fromkeys(profile_ids):
        scanner = profile_id.split("/", 1)[0]
        entry: dict[str, Any] = {"profile_id": profile_id, "enclosed": False}
        root = calibration_root or CALIBRATION_ROOT
        # The profile the result names: the current one, or one a rebuild superseded.
        path = find_profile(profile_id, root) or default_profile_path(scanner, root)
        try:
            profile = load_profile(path)
            data = path.read_bytes()
        except (ProfileError, OSError, ValueError) as err:
            entry["note"] = f"not enclosed: {' '.join(str(err).split())[:200]}"
            listed.append(entry)
            continue
        if profile.profile_id != profile_id:
            entry["note"] = (f"not enclosed: the site's profile for {scanner} is now {profile.profile_id}, "
                             "and no superseded copy of the one the result names is kept")
        else:
            # One folder per profile, not per scanner: a case can span a
            # recalibration, and then names two profiles of one scanner.
            version_and_hash = profile_id.split("/", 1)[-1].replace("/", "-")
            folder = f"calibration/{_member_name(scanner, 0)}/{_member_name(version_and_hash, 0)}"
            header = {"scanner_id": profile.scanner_id, "version": profile.version,
                      "created_at": profile.created_at.isoformat(), "kind": profile.kind,
                      "content_hash": profile.content_hash, "file_sha256": hashlib.sha256(data).hexdigest(),
                      "file_size": len(data)}
            if len(data) <= MAX_PROFILE_BYTES:
                writer.add(f"{folder}/profile.npz", data)
            else:
                writer.add_json(f"{folder}/profile-header.json", header)
            entry.update(enclosed=True, folder=folder, **header)
        listed.append(entry)
    return listed


def _readme(case_id: int, key_fingerprint: str) -> bytes:
    return f"""Evidence package of case {case_id}, made by nii {nii.__version__} ({FORMAT}).

manifest.json lists every other file of this package with its sha256 and size
(all but manifest.json and manifest.sig). manifest.sig is the Ed25519
signature of manifest.json's exact bytes by the site key in public-key.pem,
whose fingerprint (sha256 of the raw 32-byte key) is
    {key_fingerprint}
Compare that fingerprint with the one the site publishes: a valid signature
by any other key proves only that nothing changed since that key signed.

To check without nii:
    openssl pkeyutl -verify -pubin -inkey public-key.pem -rawin -in manifest.json -sigfile manifest.sig
    sha256sum each file and compare it with manifest.json
With nii:
    nii evidence verify PACKAGE --public-key SITE-PUBLIC-KEY.pem

scans/<n>/original/ holds each scan's files exactly as the scanner sent them;
the report (report.pdf) is a rendering for reading; the JSON files are the record.
""".encode()


def _alert_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    for alert in record.get("alerts", []):
        model = alert.get("model") or {}
        lines.append(f"#{alert.get('id')} {alert.get('class')} ({alert.get('dicos_category')}), score "
                     f"{alert.get('score')}, {alert.get('severity')}; model {model.get('name')} "
                     f"{model.get('version')} ({str(model.get('sha256'))[:16]})"
                     + (f": {alert['explanation']}" if alert.get("explanation") else ""))
    return lines or ["no alerts"]


def _report(case: dict[str, Any], scans_info: list[dict[str, Any]], provenance: dict[str, Any],
            excerpt: dict[str, Any], listed: list[dict[str, Any]], key_fingerprint: str, created_at: str) -> bytes:
    text = lambda value: "-" if value in (None, "") else str(value)  # noqa: E731
    blocks: list[Block] = [
        ("title", f"Evidence package: case {case['case_id']}"),
        ("text", f"Exported {created_at} by nii {nii.__version__}. Signed with the site key {key_fingerprint}."),
        ("heading", "Case"),
        ("text", f"Status {case['status']}; opened {case['opened_at']} by {case['opened_by']}; "
                 f"last changed {case['updated_at']}."),
        ("heading", "Findings"),
        ("text", f"Category: {text(case['category'])}\nDescription: {text(case['description'])}\n"
                 f"Quantity: {text(case['quantity'])}\nSeized: {'yes' if case['seized'] else 'no'}"),
        ("heading", "References"),
        ("text", f"Bag tag: {text(case['bag_tag'])}\nContainer number: {text(case['container_number'])}\n"
                 f"Declaration number: {text(case['declaration_number'])}"),
    ]
    if case["notes"]:
        blocks.append(("heading", "Notes"))
        blocks += [("text", f"{n['at']} {n['username']}: {n['text']}") for n in case["notes"]]
    for info in scans_info:
        row = info["scan"]
        blocks += [("heading", f"Scan {info['number']}: {row['scan_id']}"),
                   ("text", f"Received {row['received_at']} via {row['source']}; scanner {text(row['scanner_id'])}, "
                            f"{text(row['kind'])}, acquired {text(row['acquired_at'])}; machine decision "
                            f"{text(row['decision'])} ({text(row['status'])}).")]
        blocks += [("small", f"original {f['name']}: {f['size']} bytes, sha256 {f['sha256']}") for f in info["files"]]
        if info.get("annotated") is not None:
            blocks.append(("image", info["annotated"]))
        if info.get("record") is not None:
            blocks.append(("text", "Alerts:"))
            blocks += [("small", line) for line in _alert_lines(info["record"])]
            blocks.append(("small", f"calibration profile {info['record'].get('calibration_profile')}"))
        blocks.append(("text", "Decisions:"))
        blocks += [("small", f"#{d['id']} {d['decided_at']} {d['username']}: {d['outcome']}"
                             + (f" {d['category']}" if d["category"] else "")
                             + (f" (reverses #{d['supersedes']})" if d["supersedes"] else "")
                             + (f"; {d['note']}" if d["note"] else "")) for d in info["decisions"]]
        if not info["decisions"]:
            blocks.append(("small", "none recorded"))
    blocks.append(("heading", "Models and calibration"))
    blocks += [("small", f"model {m['name']} {m['version']} sha256 {m['sha256']}"
                         + ("" if m["enclosed"] else f" ({m['note']})")) for m in provenance["models"]]
    blocks += [("small", f"calibration {p['profile_id']}" + ("" if p["enclosed"] else f" ({p['note']})"))
               for p in provenance["calibration"]]
    if case["attachments"]:
        blocks.append(("heading", "Attachments"))
        blocks += [("small", f"{a['name']} ({a['media_type']}, {a['size']} bytes) added {a['added_at']} by "
                             f"{a['added_by']}; sha256 {a['sha256']}") for a in case["attachments"]]
    chain = excerpt["chain"]
    blocks += [("heading", "Audit log"),
               ("text", f"{len(excerpt['entries'])} entries about this case and its scans. The log's hash chain "
                        + (f"was intact through entry {chain['through_seq']} (hash {chain['through_hash']})"
                           if chain["intact"] else f"was BROKEN at entry {chain['broken_at']}: {chain['reason']}")
                        + " at export.")]
    blocks.append(("heading", "Files of this package"))
    blocks += [("small", f"{m['path']}  {m['size']} bytes  sha256 {m['sha256']}") for m in listed]
    blocks.append(("text", "This report is a rendering for reading and printing. The files above, listed with "
                           "their hashes in manifest.json and signed in manifest.sig with the site key, are the "
                           "record; `nii evidence verify` checks every hash and the signature."))
    return render_report(blocks, footer=f"case {case['case_id']}, site key {key_fingerprint[:23]}...")


def _roots(models_root: str | os.PathLike | None,
           calibration_root: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    """The models and calibration folders: as given, else the shipped pipeline config's."""
    if models_root is None or calibration_root is None:
        from nii.pipeline import load_pipeline_config

        config = load_pipeline_config()
        models_root = models_root if models_root is not None else config.models_root
        calibration_root = calibration_root if calibration_root is not None else config.calibration_root
    return Path(models_root), Path(calibration_root)


def export_case(store: Store, case_id: int, out: str | os.PathLike, *, key: Ed25519PrivateKey,
                models_root: str | os.PathLike | None = None,
                calibration_root: str | os.PathLike | None = None,
                exported_by: str | None = None) -> Exported:
    """Write the evidence package of case ``case_id`` to ``out``, signed with ``key``.

    Parameters
    ----------
    store : Store
        The service's store.
    case_id : int
    out : path
        The archive to write (replaced atomically if it exists).
    key : Ed25519PrivateKey
        The site key (:func:`nii.evidence.keys.site_key`).
    models_root, calibration_root : path, optional
        Where the models and calibration profiles that produced the results
        live (default: the shipped ``models/`` and ``calibration/``).
    exported_by : str, optional
        Who exported, for the audit entry the export appends.

    Returns
    -------
    Exported

    Raises
    ------
    CaseError
        No such case.
    EvidenceError
        A stored blob no longer matches its hash.
    OSError
        ``out`` cannot be written.
    """
    out = Path(out)
    created_at = utc_now()
    key_fingerprint = fingerprint(key.public_key())
    stamp = tuple(int(part) for part in (created_at[:4], created_at[5:7], created_at[8:10], created_at[11:13],
                                         created_at[14:16], created_at[17:19]))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw, store.read() as conn:
            with zipfile.ZipFile(raw, "w", allowZip64=True) as archive:
                writer = _Writer(archive, stamp)
                summary = _write_members(writer, store, conn, case_id, key, key_fingerprint, created_at,
                                         _roots(models_root, calibration_root))
                not_enclosed = summary.pop("not_enclosed")  # provenance.json already lists them
                manifest = {
                    "format": FORMAT, "case_id": case_id, "created_at": created_at,
                    "nii_version": nii.__version__,
                    "signer": {"algorithm": "Ed25519", "fingerprint": key_fingerprint},
                    "files": list(writer.listed),
                    **summary,
                }
                manifest_bytes = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()
                writer.add("manifest.json", manifest_bytes)
                writer.add("manifest.sig", key.sign(manifest_bytes))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    with store.transaction() as conn:
        # Handing evidence out is itself part of the case's history.
        audit.append(store, conn, username=exported_by, action="evidence_export", target=audit_target(case_id),
                     detail={"manifest_sha256": manifest_sha256, "signer": key_fingerprint,
                             "files": len(writer.listed), "file": out.name})
    return Exported(out, len(writer.listed), key_fingerprint, manifest_sha256, summary["audit_chain"], not_enclosed)


def _write_members(writer: _Writer, store: Store, conn: sa.engine.Connection, case_id: int,
                   key: Ed25519PrivateKey, key_fingerprint: str, created_at: str,
                   roots: tuple[Path | None, Path | None]) -> dict[str, Any]:
    case = get_case(conn, case_id).to_dict()
    writer.add("README.txt", _readme(case_id, key_fingerprint))
    writer.add("public-key.pem", public_pem(key.public_key()))
    numbers = {scan_id: n for n, scan_id in enumerate(case["scan_ids"], 1)}
    writer.add_json("case.json", {**case, "scan_numbers": {str(n): s for s, n in numbers.items()}})
    scans_info: list[dict[str, Any]] = []
    model_lines: list[str] = []
    profile_ids: list[str] = []
    for scan_id, number in numbers.items():
        folder = f"scans/{number}"
        row = dict(conn.execute(sa.select(scans).where(scans.c.scan_id == scan_id)).first()._mapping)
        files = [dict(f._mapping) for f in store.files_of(conn, scan_id)]
        result = conn.execute(sa.select(results).where(results.c.scan_id == scan_id)).first()
        info: dict[str, Any] = {"number": number, "scan": row, "files": files, "annotated": None, "record": None}
        writer.add_json(f"{folder}/scan.json", {"scan": row, "files_as_received": files,
                                                "result": None if result is None else dict(result._mapping)})
        used: set[str] = set()
        for index, f in enumerate(files):
            name = _member_name(f["name"], index)
            while name in used:
                name = f"{index}-{name}"
            used.add(name)
            writer.add_blob(f"{folder}/original/{name}", store, f["sha256"])
        if result is not None:
            writer.add_blob(f"{folder}/annotated.png", store, result.annotated_sha256)
            writer.add_blob(f"{folder}/result.json", store, result.result_sha256)
            writer.add_blob(f"{folder}/machine-tdr.dcm", store, result.tdr_sha256)
            info["record"] = json.loads(store.blobs.get(result.result_sha256))
            info["annotated"] = Image.open(io.BytesIO(store.blobs.get(result.annotated_sha256)))
            model_lines += [line for line in result.models.splitlines() if line.strip()]
            if result.profile_id:
                profile_ids.append(result.profile_id)
        decided = [d.to_dict() for d in decisions_of(conn, scan_id)]
        info["decisions"] = decided
        writer.add_json(f"{folder}/decisions.json", decided)
        for d in decided:
            if d["operator_tdr_sha256"]:
                writer.add_blob(f"{folder}/operator-tdr-{int(d['id'])}.dcm", store, d["operator_tdr_sha256"])
        scans_info.append(info)
    excerpt = _audit_excerpt(conn, [audit_target(case_id), *numbers])
    writer.add_json("audit.json", excerpt)
    provenance = {"models": _enclose_models(writer, model_lines, roots[0]),
                  "calibration": _enclose_profiles(writer, profile_ids, roots[1])}
    writer.add_json("provenance.json", provenance)
    for index, attachment in enumerate(case["attachments"]):
        name = f"{int(attachment['id'])}-{_member_name(attachment['name'], index)}"
        # The suffix says what the bytes are (the type was read from them at
        # upload), whatever the sender called the file: photo.pdf is a PNG.
        suffixes = ATTACHMENT_SUFFIXES.get(attachment.get("media_type"), ())
        if suffixes and not name.lower().endswith(suffixes):
            name += suffixes[0]
        writer.add_blob(f"attachments/{name}", store, attachment["sha256"])
    writer.add("report.pdf", _report(case, scans_info, provenance, excerpt, list(writer.listed), key_fingerprint,
                                     created_at))
    # In the signed manifest too, so that verifying the package says it.
    chain = {k: excerpt["chain"][k] for k in ("intact", "broken_at", "reason", "through_seq", "through_hash")}
    missing = tuple((entry.get("profile_id") or f"model {entry.get('name')} {entry.get('version')}",
                     entry.get("note", "not enclosed"))
                    for entry in [*provenance["models"], *provenance["calibration"]] if not entry.get("enclosed"))
    return {"scans": {str(n): s for s, n in numbers.items()}, "audit_chain": chain, "not_enclosed": missing}
