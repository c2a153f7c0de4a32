"""The one error type readers raise, and the guard that enforces it."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = [
    "ScanReadError",
    "CorruptScanError",
    "UnsupportedScanError",
    "ScanTooLargeError",
    "refuse_on_error",
]


class ScanReadError(ValueError):
    """A scan could not be read. ``str(err)`` is one line: ``path: reason``.

    Readers raise only this type (or a subclass), so callers such as the CLI,
    the service and batch re-analysis can refuse one file and go on.
    """

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        # A reason from a third-party library may span lines; we promise one.
        self.reason = " ".join(str(reason).split()) or "unreadable"
        self.path = path
        super().__init__(f"{path}: {self.reason}" if path else self.reason)


class CorruptScanError(ScanReadError):
    """Truncated or corrupt data, a sidecar that does not match, NaN/inf."""


class UnsupportedScanError(ScanReadError):
    """A well-formed file we do not handle: format, modality, transfer syntax."""


class ScanTooLargeError(ScanReadError):
    """The header claims more pixels than the configured budget allows."""


@contextlib.contextmanager
def refuse_on_error(what: str, path: str | None) -> Iterator[None]:
    """Turn any failure inside the block into :class:`CorruptScanError`.

    Decoders (pydicom, OpenCV, tifffile, NumPy) raise a zoo of exception
    types on hostile bytes; this is the single boundary where they become our
    typed one-line error. Our own :class:`ScanReadError` passes through.
    """
    try:
        yield
    except ScanReadError as err:
        if err.path is None and path is not None:
            raise type(err)(err.reason, path=path) from None
        raise
    except MemoryError:
        raise ScanTooLargeError(f"{what}: not enough memory to decode", path=path) from None
    except Exception as exc:  # noqa: BLE001 - this is the boundary by design
        detail = str(exc) or type(exc).__name__
        raise CorruptScanError(f"{what}: {detail}", path=path) from None
