"""The site's signing key: one Ed25519 key per service data folder.

The private key lives in ``DATA/site-signing-key.pem`` (PKCS #8, unencrypted,
mode 0600), created on the first export. Its protection is the file system's:
anyone who can read that file can sign packages in the site's name, so keep
it out of shared backups and publish its fingerprint (``nii evidence key``)
where a court can find it independently of any package.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nii.files import fsync_dir, written_temp_file

__all__ = ["SITE_KEY_NAME", "fingerprint", "load_private_key", "load_public_key", "public_pem", "site_key"]

SITE_KEY_NAME = "site-signing-key.pem"


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key: what a site publishes and a court compares."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), as the package carries it."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file.

    Raises
    ------
    ValueError
        The file is not an unencrypted Ed25519 private key in PEM.
    OSError
        The file cannot be read.
    """
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: an Ed25519 key was expected, got {type(key).__name__}")
    return key


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """Read a trusted Ed25519 public key from PEM; a private key file gives its public half.

    Raises
    ------
    ValueError
        The file holds no Ed25519 key in PEM.
    OSError
        The file cannot be read.
    """
    path = Path(path)
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a PEM public key ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: an Ed25519 key was expected, got {type(key).__name__}")
    return key


def site_key(data_dir: str | os.PathLike, *, create: bool = True) -> Ed25519PrivateKey:
    """The site key of a data folder, made (mode 0600) on first use when ``create``.

    Raises
    ------
    FileNotFoundError
        No key and ``create`` is False.
    ValueError
        The key file is not an Ed25519 private key.
    """
    path = Path(data_dir) / SITE_KEY_NAME
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"{path}: no site key (the first `nii evidence export` makes one)")
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = written_temp_file(path.parent, pem, prefix=".key-")  # mode 0600
        try:
            # link, not rename: it fails if another export made the key
            # meanwhile, and then that key is the site's, not ours.
            os.link(tmp, path)
        except FileExistsError:
            return load_private_key(path)
        finally:
            tmp.unlink()
        fsync_dir(path.parent)
        return key
    return load_private_key(path)
