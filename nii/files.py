"""Durable file writes: what is said to be written survives a crash, whole or not at all.

The service's blob store, the evidence site key and the calibration profiles
all write this way: the bytes go to a temporary file in the target's folder,
are flushed to disk, take their name by a rename (or link), and the folder
entry itself is then flushed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "replace_file", "written_temp_file"]


def written_temp_file(folder: Path, data: bytes, *, prefix: str) -> Path:
    """``data`` in a new file of ``folder`` (mode 0600), flushed to disk.

    The caller gives it its name (rename or link) and then calls
    :func:`fsync_dir`; until then a crash leaves only a stray temp file.
    """
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def fsync_dir(folder: Path) -> None:
    """Make a rename or new file in ``folder`` durable (the directory entry itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` as ``path``, replacing any file there, durably and never half-written.

    A reader meanwhile sees the old file or the new one. ``mode`` is the new
    file's permission bits (0600 by default: only this user reads it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = written_temp_file(path.parent, data, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
