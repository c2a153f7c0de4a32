"""The hot folder: scans a scanner drops into a watched directory are picked up once.

A scanner writes files into the folder (a file, a raw sidecar with its data
file, or a sub-folder holding one CT series). Once every file of a scan has
stopped changing for ``settle_seconds`` it is submitted through the same
intake as every other way in. Then:

- accepted (or already known: same scan id): its files move to ``done/``;
- refused: they move to ``quarantine/`` beside ``<name>.reason.txt``, which
  holds the one-line reason.

Half of a raw pair (a sidecar, or a ``.raw``/``.bin``/``.dat`` data file)
waits ``pair_timeout_s`` for the other half. Any other file that is no
scan (notes, stray JSON) is submitted as it is once it has waited as long,
and so ends in ``done/`` or ``quarantine/`` like the rest. A quarantined
file that changes afterwards (a writer that paused longer than the settle
time) goes back into the folder to be tried again.

Nothing is deleted, so nothing is lost. A crash between submitting and
moving is harmless: at the next start the file is submitted again, the
intake sees the same scan id, and the file moves to ``done/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nii.ingest import ScanReadError, ScanSource, find_scans
from nii.ingest.raw import DATA_SUFFIXES
from nii.serve.intake import IntakeError, source_files, uploads_of
from nii.serve.service import Service

__all__ = ["DONE", "QUARANTINE", "HotFolder"]

DONE = "done"
QUARANTINE = "quarantine"
log = logging.getLogger("nii.serve.hotfolder")
# How long a quarantined file is watched for a writer that had only paused;
# after that it stays where it is (so the watch list does not grow for ever).
_PAUSED_WRITER_S = 300.0



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
    pair_timeout_s : float
        How long half a raw pair, or a file that is no scan, waits (once
        settled) before it is submitted as it is, and so quarantined with
        its reason instead of waiting forever.
    """

    def __init__(self, service: Service, folder: str | Path, *, settle_seconds: float = 1.0,
                 poll_seconds: float = 0.25, pair_timeout_s: float = 30.0) -> None:
        self.service, self.folder = service, Path(folder)
        self.settle_seconds, self.poll_seconds, self.pair_timeout_s = settle_seconds, poll_seconds, pair_timeout_s
        for sub in (DONE, QUARANTINE):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        # there -> (from, size, mtime_ns, when): watched for a paused writer's
        # next bytes for _PAUSED_WRITER_S, then forgotten.
        self._quarantined: dict[Path, tuple[Path, int, int, float]] = {}
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
        self._retry_what_changed_in_quarantine(now)
        claimed: set[Path] = set()
        for source in self._sources():
            files = source_files(source)
            claimed.update((source.path, *files))
            present = [f for f in files if f.exists()]
            if not present or not all(self._settled(f, now) for f in present):
                continue
            if self._half_a_pair(source, files, present) and not self._waited(present[0], now):
                continue
            self._submit(source, present)
            handled += 1
        for path in self._strays(claimed):
            if self._settled(path, now) and self._waited(path, now):
                self._submit(ScanSource(path), [path])
                handled += 1
        self._seen = {p: v for p, v in self._seen.items() if p.exists()}
        return handled

    def _sources(self) -> list[ScanSource]:
        return list(find_scans([self.folder], skip=[self.folder / DONE, self.folder / QUARANTINE]))

    def _strays(self, claimed: set[Path]) -> list[Path]:
        """Files no scan claims: what the walk leaves out (notes, other JSON) or not yet paired."""
        strays = []
        for folder, dirnames, filenames in os.walk(self.folder):
            top = Path(folder) == self.folder
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (top and d in (DONE, QUARANTINE)))
            strays += [Path(folder) / n for n in sorted(filenames)
                       if not n.startswith(".") and Path(folder) / n not in claimed]
        return strays

    @staticmethod
    def _half_a_pair(source: ScanSource, files: list[Path], present: list[Path]) -> bool:
        """A sidecar without its data file, or a raw data file without its sidecar (yet)."""
        if len(present) < len(files) or (source.path.suffix.lower() == ".json" and len(files) == 1):
            return True
        return not source.slices and source.path.suffix.lower() in DATA_SUFFIXES

    def _waited(self, path: Path, now: float) -> bool:
        return now - self._seen[path][2] >= self.pair_timeout_s

    def _retry_what_changed_in_quarantine(self, now: float) -> None:
        """Put back a quarantined file that changed since: its writer had only paused."""
        for there, (came_from, size, mtime_ns, when) in list(self._quarantined.items()):
            try:
                stat = there.stat()
            except FileNotFoundError:
                del self._quarantined[there]
                continue
            if now - when > _PAUSED_WRITER_S:
                del self._quarantined[there]
                continue
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns) and not came_from.exists():
                del self._quarantined[there]
                shutil.move(str(there), came_from)
                there.with_name(there.name + ".reason.txt").unlink(missing_ok=True)
                log.warning("hot folder: %s changed in quarantine (still being written); trying it again",
                            came_from.name)

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
            # An OSError names a path under the folder; the file's name is what the reader needs.
            reason = f"{Path(err.filename).name}: {err.strerror}" if isinstance(err, OSError) and err.filename \
                else str(err)
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
                if target.is_file():
                    stat = target.stat()
                    self._quarantined[target] = (path, stat.st_size, stat.st_mtime_ns, time.monotonic())
            self._seen.pop(path, None)


def _free_name(target: Path) -> Path:
    """``target``, or ``name-2.ext``... when a file of that name was moved before."""
    n, candidate = 2, target
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        n += 1
    return candidate
