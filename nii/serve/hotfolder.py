"""The hot folder: scans a scanner drops into a watched directory are picked up once.

A scanner writes files into the folder (a file, a raw sidecar with its data
file, or a sub-folder holding one CT series). Once every file of a scan has
stopped changing for ``settle_seconds`` it is submitted through the same
intake as every other way in. Then:

- accepted (or already known: same scan id): its files move to ``done/``;
- refused: they move to ``quarantine/`` beside ``<name>.reason.txt``, which
  holds the one-line reason.

Nothing is deleted, so nothing is lost. A crash between submitting and
moving is harmless: at the next start the file is submitted again, the
intake sees the same scan id, and the file moves to ``done/``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nii.ingest import ScanReadError, ScanSource, find_scans
from nii.serve.intake import IntakeError, source_files, uploads_of
from nii.serve.service import Service

__all__ = ["DONE", "QUARANTINE", "HotFolder"]

DONE = "done"
QUARANTINE = "quarantine"
log = logging.getLogger("nii.serve.hotfolder")

# A sidecar whose data file has not appeared after this long is submitted
# anyway, so it is quarantined with the reason instead of waiting forever.
_PAIR_TIMEOUT_S = 30.0


class HotFolder:
    """Watches ``folder`` and submits what settles there to ``service``.

    Parameters
    ----------
    service : Service
    folder : path
        Created if missing, with ``done/`` and ``quarantine/`` inside.
    settle_seconds : float
        How long a file's size and modification time must stay unchanged.
    poll_seconds : float
        How often the folder is listed.
    """

    def __init__(self, service: Service, folder: str | Path, *, settle_seconds: float = 1.0,
                 poll_seconds: float = 0.25) -> None:
        self.service, self.folder = service, Path(folder)
        self.settle_seconds, self.poll_seconds = settle_seconds, poll_seconds
        for sub in (DONE, QUARANTINE):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self._stop = threading.Event()

    def start(self) -> Callable[[], None]:
        """Watch in a background thread; return the function that stops it."""
        thread = threading.Thread(target=self._watch, name="nii-hot-folder", daemon=True)
        thread.start()

        def stop() -> None:
            self._stop.set()
            thread.join(10)

        return stop

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bad poll (a file vanished mid-read) must not end the watch
                log.exception("hot folder poll failed")
            self._stop.wait(self.poll_seconds)

    def poll(self) -> int:
        """Submit every scan that has settled; return how many were handled."""
        now = time.monotonic()
        handled = 0
        for source in self._sources():
            files = source_files(source)
            if not all(self._settled(f, now) for f in files):
                continue
            if source.path.suffix.lower() == ".json" and len(files) == 1 and \
                    now - self._seen[files[0]][2] < _PAIR_TIMEOUT_S:
                continue  # a sidecar whose data file is still on its way
            self._submit(source, files)
            handled += 1
        self._seen = {p: v for p, v in self._seen.items() if p.exists()}
        return handled

    def _sources(self) -> list[ScanSource]:
        return list(find_scans([self.folder], skip=[self.folder / DONE, self.folder / QUARANTINE]))

    def _settled(self, path: Path, now: float) -> bool:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        key = (stat.st_size, stat.st_mtime_ns)
        previous = self._seen.get(path)
        if previous is None or previous[:2] != key:
            self._seen[path] = (*key, now)
            return False
        return now - previous[2] >= self.settle_seconds

    def _submit(self, source: ScanSource, files: list[Path]) -> None:
        try:
            accepted = self.service.submit(uploads_of(source), source="hotfolder", username=None)
        except (IntakeError, ScanReadError, OSError) as err:
            reason = str(err)
            log.warning("hot folder: %s refused: %s", source.path.name, reason)
            self._move(source, files, QUARANTINE, reason)
            return
        log.info("hot folder: %s accepted as %s%s", source.path.name, accepted.scan_id,
                 " (already known)" if accepted.duplicate else "")
        self._move(source, files, DONE, None)

    def _move(self, source: ScanSource, files: list[Path], where: str, reason: str | None) -> None:
        target_dir = self.folder / where
        # A CT series dropped as a sub-folder moves as that folder.
        moving = [source.path] if source.slices and source.path != self.folder else files
        for path in moving:
            target = _free_name(target_dir / path.name)
            shutil.move(str(path), target)
            if reason is not None:
                target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
            self._seen.pop(path, None)


def _free_name(target: Path) -> Path:
    """``target``, or ``name-2.ext``... when a file of that name was moved before."""
    n, candidate = 2, target
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        n += 1
    return candidate
