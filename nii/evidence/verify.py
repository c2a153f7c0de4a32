"""Check an evidence package (``nii evidence verify``).

What is checked, in order: the signature of ``manifest.json``'s exact bytes
with the key the package carries, and that key's fingerprint against the one
the manifest names; then each file the manifest lists, in its order (present
once, size, sha256); then that nothing unlisted is present; and, when a
trusted key is given, that the package was signed with it.

What a forger can and cannot do
-------------------------------
* Change, add, remove or duplicate any file without the signing key: caught
  (a hash, an unlisted or repeated name, or the signature fails).
* Change files and re-sign with a key of their own, replacing
  ``public-key.pem``: the package is then internally consistent, so only a
  trusted key (``--public-key`` or the site's ``--data``) catches it. Without
  one, verification says so and prints the fingerprint to compare with the
  one the site published.
* Hold the site key (anyone who can read ``site-signing-key.pem``): can sign
  anything, with any ``created_at``. The signature proves a package came from
  whoever holds the key, not when, nor that the database was honest at export;
  the audit excerpt's ``through_hash`` lets that be checked against the live
  log. An older genuine export of the same case also verifies: the newest
  ``created_at`` wins, and each export is itself an audit entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nii.evidence.keys import fingerprint
from nii.evidence.package import FORMAT, EvidenceError

__all__ = ["Verification", "verify_package"]

_SIGNED = ("manifest.json", "manifest.sig")
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Verification:
    """What :func:`verify_package` found.

    ``problems`` holds one line per problem, the first first; ``trusted`` is
    True when the signer is the trusted key, False when it is another, None
    when no trusted key was given.
    """

    files: int
    fingerprint: str | None
    manifest_sha256: str | None
    problems: tuple[str, ...]
    trusted: bool | None
    #: What the manifest says of the site's audit log at export (None for
    #: packages made before it said so).
    audit_chain: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.trusted is not False


def _read(archive: zipfile.ZipFile, name: str, limit: int) -> bytes | None:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > limit:
        return None
    return archive.read(info)


def _digest(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with archive.open(info) as member:
        for chunk in iter(lambda: member.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_signature(manifest_bytes: bytes | None, signature: bytes | None,
                     pem: bytes | None) -> tuple[Ed25519PublicKey | None, str | None]:
    """The signer's key, or None and why not."""
    for name, value in zip(("manifest.json", "manifest.sig", "public-key.pem"), (manifest_bytes, signature, pem)):
        if value is None:
            return None, f"MISSING {name}: the package cannot be checked without it"
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        return None, "BAD SIGNATURE public-key.pem: not a readable public key (the file was changed)"
    if not isinstance(key, Ed25519PublicKey):
        return None, f"BAD SIGNATURE public-key.pem: an Ed25519 key was expected, got {type(key).__name__}"
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        return None, ("BAD SIGNATURE manifest.json: the signature does not match "
                      "(manifest.json, manifest.sig or public-key.pem was changed)")
    return key, None


def _listed(manifest_bytes: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        manifest = json.loads(manifest_bytes)
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, list) or not all(
                isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)
                and isinstance(f.get("size"), int) for f in files):
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"BAD MANIFEST manifest.json: not a {FORMAT} manifest"
    return manifest, None


def verify_package(path: str | os.PathLike, *, trusted_key: Ed25519PublicKey | None = None) -> Verification:
    """Check every hash and the signature of the evidence package at ``path``.

    Parameters
    ----------
    path : path
        The package (a zip from :func:`nii.evidence.export_case`).
    trusted_key : Ed25519PublicKey, optional
        The site's public key, obtained independently of the package. Without
        it a valid signature proves integrity, not origin.

    Returns
    -------
    Verification

    Raises
    ------
    EvidenceError
        The file is not a readable zip at all.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise EvidenceError(f"{path}: not a readable evidence package ({' '.join(str(err).split())[:160]})") from None
    problems: list[str] = []
    with archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        repeated = sorted({n for n in names if names.count(n) > 1})
        # zipfile reads the last of two members with one name; a second copy
        # could show one thing to one tool and another to the next.
        problems += [f"REPEATED {name}: the package holds it more than once" for name in repeated]
        try:
            manifest_bytes = _read(archive, "manifest.json", 64 << 20)
            signature = _read(archive, "manifest.sig", 1024)
            pem = _read(archive, "public-key.pem", 64 << 10)
        except (zipfile.BadZipFile, zlib.error, OSError) as err:
            manifest_bytes = signature = pem = None
            problems.append(f"UNREADABLE manifest: {' '.join(str(err).split())[:160]}")
        key, why = _check_signature(manifest_bytes, signature, pem)
        if why:
            problems.append(why)
        manifest, why = _listed(manifest_bytes) if manifest_bytes is not None else (None, None)
        if why:
            problems.append(why)
        signer = fingerprint(key) if key is not None else None
        if manifest is not None and key is not None and manifest.get("signer", {}).get("fingerprint") != signer:
            problems.append("BAD SIGNATURE public-key.pem: its fingerprint is not the signer the manifest names")
        listed: set[str] = set()
        for entry in manifest["files"] if manifest is not None else ():
            name = entry["path"]
            listed.add(name)
            if name in _SIGNED:
                continue  # covered by the signature, not by a hash of their own
            if name not in names:
                problems.append(f"MISSING {name}: listed in the manifest but not in the package")
                continue
            try:
                digest, size = _digest(archive, archive.getinfo(name))
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
                problems.append(f"MISMATCH {name}: unreadable ({' '.join(str(err).split())[:120]})")
                continue
            if size != entry["size"]:
                problems.append(f"MISMATCH {name}: size {size} bytes, the manifest says {entry['size']}")
            elif digest != entry["sha256"]:
                problems.append(f"MISMATCH {name}: sha256 differs")
        if manifest is not None:
            problems += [f"UNLISTED {name}: in the package but not in the manifest"
                         for name in dict.fromkeys(names) if name not in listed and name not in _SIGNED]
    trusted = None
    if trusted_key is not None and key is not None:
        trusted = signer == fingerprint(trusted_key)
    return Verification(
        files=len(listed | set(_SIGNED)) if manifest is not None else 0,
        fingerprint=signer,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest() if manifest_bytes is not None else None,
        problems=tuple(problems),
        trusted=trusted,
        audit_chain=manifest.get("audit_chain") if manifest is not None else None,
    )
