"""A batch run's RESULTS folder: Parquet parts, the manifest, and the merged tables.

Layout::

    RESULTS/
      manifest.jsonl          what was done, with which models and profiles (append-only)
      parts/scans-000001.parquet, parts/alerts-000001.parquet, ...
      scans.parquet           one row per scan (all parts, merged at the end)
      alerts.parquet          one row per alert
      outputs/<scan id>/      result.json, annotated.png, tdr.dcm (with --outputs)

Results are committed a part at a time: a part's two files are written
under temporary names, fsynced and renamed into place, and only then does a
``part`` line listing its scans go into the manifest, fsynced. The manifest
is the commit log: a part it does not list (the run was killed between the
rename and the line) is deleted when the next run opens RESULTS, and its
scans are analysed again; a torn last line is cut off. So whenever the run
is killed, every scan is in exactly one committed part or in none.

The manifest's first line records the pipeline (every model's name, version
and sha256, its options, the operating point and every calibration
profile); a run whose pipeline differs is refused rather than mixed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The blob store's durable rename needs the same folder fsync.
from nii.files import fsync_dir

__all__ = ["ALERTS_SCHEMA", "MANIFEST", "SCANS_SCHEMA", "TABLES", "DoneSet", "Manifest", "ManifestSummary",
           "ResultsError", "read_manifest", "summarise_manifest", "utc_now"]

MANIFEST = "manifest.jsonl"
PARTS = "parts"
SCHEMA_TAG = "nii-batch/1"

#: One row per scan. ``key`` names the archive item the same way on every
#: run; ``error`` is the one-line reason a scan could not be analysed
#: (decision and the rest are then null). ``models`` lists the models that
#: judged the scan as ``name version``; ``profile_id`` the calibration
#: profile (``scanner/vN/hash``).
SCANS_SCHEMA = pa.schema([
    ("key", pa.string()), ("scan_id", pa.string()), ("path", pa.string()), ("format", pa.string()),
    ("kind", pa.string()), ("scanner_id", pa.string()), ("acquired_at", pa.string()),
    ("decision", pa.string()), ("alert_count", pa.int32()), ("alarm_count", pa.int32()),
    ("models", pa.string()), ("profile_id", pa.string()), ("operating_point", pa.string()),
    ("error", pa.string()), ("elapsed_ms", pa.float64()), ("outputs", pa.string()),
])
#: One row per alert, as in result.json: box ``(x0, y0, x1, y1)`` (CT:
#: ``(x0, y0, z0, x1, y1, z1)``) in the calibrated scan's pixels, ends
#: exclusive; ``alarm`` False for an advisory; ``models`` the source models.
ALERTS_SCHEMA = pa.schema([
    ("key", pa.string()), ("scan_id", pa.string()), ("path", pa.string()), ("alert_id", pa.int32()),
    ("class", pa.string()), ("dicos_category", pa.string()), ("score", pa.float64()), ("alarm", pa.bool_()),
    ("severity", pa.string()), ("box", pa.list_(pa.float64())), ("label", pa.string()), ("models", pa.string()),
    ("zeff", pa.float64()), ("mass_g", pa.float64()), ("explanation", pa.string()),
])
#: ``RESULTS/<name>.parquet`` -> its schema.
TABLES: dict[str, pa.Schema] = {"scans": SCANS_SCHEMA, "alerts": ALERTS_SCHEMA}


class ResultsError(ValueError):
    """RESULTS cannot take this run; ``str(err)`` is one line saying why."""


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


class DoneSet:
    """The keys of scans already done, in 16 bytes each.

    A Python set of path strings costs ~150 bytes a scan; a sorted array of
    128-bit digests keeps a resumed run over ten million scans under
    200 MB, with a chance of a false "done" below 1e-24.
    """

    def __init__(self, digests: Iterable[np.ndarray] = ()) -> None:
        parts = [np.asarray(d, dtype="S16") for d in digests]
        self._sorted = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype="S16")
        self._recent: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __contains__(self, key: str) -> bool:
        digest = _digest(key)
        if digest in self._recent:
            return True
        # Through the array's own dtype: an "S16" element drops trailing
        # zero bytes when read out, so the raw digest would never equal it.
        wanted = np.array(digest, dtype="S16")[()]
        i = int(np.searchsorted(self._sorted, wanted))
        return i < len(self._sorted) and self._sorted[i] == wanted

    def add(self, key: str) -> None:
        self._recent.add(_digest(key))
        if len(self._recent) >= 65536:  # fold into the compact array now and then
            self._sorted = np.union1d(self._sorted, np.array(sorted(self._recent), dtype="S16"))
            self._recent.clear()


def _write_table_atomically(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as written:
        os.fsync(written.fileno())
    os.replace(tmp, path)


def _describe_pipeline(pipeline: Mapping[str, Any]) -> str:
    models = ", ".join(f"{m['name']} {m['version']}" for m in pipeline.get("models", ()))
    profiles = ", ".join(pipeline.get("profiles", {}).values()) or "none"
    return f"models {models}; profiles {profiles}"


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    def identities(pipeline: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        return [(m["name"], m["version"], m["sha256"]) for m in pipeline.get("models", ())]

    if identities(old) != identities(new) or old.get("profiles") != new.get("profiles"):
        return f"it holds {_describe_pipeline(old)}; this run has {_describe_pipeline(new)}"
    changed = [f"{a['name']} {key}" for a, b in zip(old["models"], new["models"])
               for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    changed += sorted(k for k in (set(old) | set(new)) - {"models", "config", "fingerprint"}
                      if old.get(k) != new.get(k))
    return f"the same models, but {', '.join(changed) or 'its settings'} differ"


class Manifest:
    """The RESULTS folder of one batch, held open (and locked) by one run.

    Use :meth:`open`; see the module docstring for what is kept where.

    Attributes
    ----------
    folder : Path
    header : dict
        The first line: the pipeline this RESULTS was made with.
    done : DoneSet
        Keys of the scans in committed parts.
    scans_done : int
        How many scans the committed parts hold.
    last_part : int
        Number of the last committed part (0 for none).
    merged_part : int
        ``last_part`` when the tables were last merged (-1 for never).
    """

    def __init__(self, folder: Path, lock: IO[bytes]) -> None:
        self.folder = folder
        self._lock = lock
        self._state = ManifestSummary()
        self.done = DoneSet()

    # The replayed counts live in one ManifestSummary, shared with the
    # read-only summarise_manifest; these read them as plain attributes.
    header = property(lambda self: self._state.header)
    scans_done = property(lambda self: self._state.scans_done)
    last_part = property(lambda self: self._state.last_part)
    merged_part = property(lambda self: self._state.merged_part)

    @classmethod
    def open(cls, folder: str | os.PathLike, pipeline: Mapping[str, Any]) -> Manifest:
        """Open RESULTS for a run of ``pipeline``, recovering from a killed run.

        Parameters
        ----------
        folder : path-like
            RESULTS (created when missing).
        pipeline : mapping
            What the run analyses with (:func:`nii.batch.run.pipeline_identity`);
            its ``fingerprint`` must match the one RESULTS was made with.

        Raises
        ------
        ResultsError
            Another run is writing RESULTS, RESULTS was made with another
            pipeline, or its manifest is damaged before its last line.
        """
        folder = Path(folder)
        # Only a batch run's own RESULTS is carried on (and its strays tidied):
        # any other folder's files are not ours to overwrite or delete.
        if folder.is_dir() and not (folder / MANIFEST).exists():
            strays = sorted(p.name for p in folder.iterdir() if p.name not in (PARTS, ".lock", ".todo"))
            strays += [f"{PARTS}/{p.name}" for p in (folder / PARTS).glob("*")] if (folder / PARTS).is_dir() else []
            if strays:
                raise ResultsError(f"{folder} is not a batch run's RESULTS (no {MANIFEST}) and holds "
                                   f"{', '.join(strays[:3])}{'...' if len(strays) > 3 else ''}; "
                                   "use a new or empty --out")
        (folder / PARTS).mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ResultsError(f"{folder}: another nii batch run is writing it; wait for it or use another --out") \
                from None
        manifest = cls(folder, lock)
        try:
            manifest._recover(pipeline)
        except BaseException:
            manifest.close()
            raise
        return manifest

    def _recover(self, pipeline: Mapping[str, Any]) -> None:
        path = self.folder / MANIFEST
        digests: list[np.ndarray] = []
        good_bytes = 0
        if path.exists():
            with path.open("rb") as lines:
                for number, line in enumerate(lines, start=1):
                    try:
                        if not line.endswith(b"\n"):
                            raise ValueError("torn")
                        record = json.loads(line)
                    except ValueError:
                        if lines.read(1):  # not the last line: not a torn write
                            raise ResultsError(f"{path}: line {number} is damaged; the manifest cannot be "
                                               "trusted, so neither can RESULTS") from None
                        break
                    try:
                        self._state.add(record)
                        if record.get("event") == "part":
                            digests.append(np.array([_digest(entry[0]) for entry in record["scans"]], dtype="S16"))
                    except (AttributeError, KeyError, TypeError, ValueError):
                        raise ResultsError(f"{path}: line {number} is not a manifest record; the manifest "
                                           "cannot be trusted, so neither can RESULTS") from None
                    good_bytes += len(line)
            if good_bytes < path.stat().st_size:  # a line torn by a kill: its part is an orphan
                with path.open("r+b") as manifest:
                    manifest.truncate(good_bytes)
                    os.fsync(manifest.fileno())
        self.done = DoneSet(digests)
        if not self.header:
            self._state.add({"event": "batch", "schema": SCHEMA_TAG, "created_at": utc_now(), "pipeline": dict(pipeline)})
            self.append(self.header)
        elif self.header.get("schema") != SCHEMA_TAG:
            raise ResultsError(f"{path}: written by another version of nii batch ({self.header.get('schema')})")
        elif self.header["pipeline"].get("fingerprint") != pipeline.get("fingerprint"):
            raise ResultsError(f"{self.folder} was made with another pipeline: "
                               f"{_differences(self.header['pipeline'], pipeline)}; use another --out")
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        for path in (self.folder / PARTS).iterdir():
            number = path.stem.rpartition("-")[2]
            if path.name.startswith(".") or not number.isdigit() or int(number) > self.last_part:
                path.unlink()

    def append(self, record: Mapping[str, Any]) -> None:
        """Add one line to the manifest, on disk before this returns."""
        with (self.folder / MANIFEST).open("a", encoding="utf-8") as manifest:
            manifest.write(json.dumps(record, separators=(",", ":")) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())

    def part_path(self, table: str, part: int) -> Path:
        return self.folder / PARTS / f"{table}-{part:06d}.parquet"

    def commit_part(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Write one part (the scans and alerts of ``records``) and record it; return its number.

        ``records`` are :func:`nii.batch.analyse.analyse_item` results.
        """
        part = self.last_part + 1
        scans = [r["scan"] for r in records]
        alerts = [row for r in records for row in r["alerts"]]
        for table, rows in (("scans", scans), ("alerts", alerts)):
            _write_table_atomically(pa.Table.from_pylist(rows, schema=TABLES[table]), self.part_path(table, part))
        fsync_dir(self.folder / PARTS)
        self.append({"event": "part", "part": part, "at": utc_now(), "alerts": len(alerts),
                     "scans": [[s["key"], s["scan_id"], s.get("profile_id"), s["error"]] for s in scans]})
        self._state.last_part = part
        self._state.scans_done += len(scans)
        for s in scans:
            self.done.add(s["key"])
        return part

    @property
    def merged(self) -> bool:
        """Whether ``scans.parquet`` and ``alerts.parquet`` hold every committed part."""
        return self.merged_part == self.last_part and all(
            (self.folder / f"{table}.parquet").exists() for table in TABLES)

    def merge(self) -> None:
        """Write ``scans.parquet`` and ``alerts.parquet`` from the parts, one part in memory at a time."""
        for table, schema in TABLES.items():
            target = self.folder / f"{table}.parquet"
            tmp = target.with_name(f".{target.name}.tmp")
            with pq.ParquetWriter(tmp, schema) as writer:
                for part in range(1, self.last_part + 1):
                    writer.write_table(pq.read_table(self.part_path(table, part), schema=schema))
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
            os.replace(tmp, target)
        fsync_dir(self.folder)
        self.append({"event": "merged", "part": self.last_part, "scans": self.scans_done, "at": utc_now()})
        self._state.merged_part = self.last_part

    def close(self) -> None:
        """Release RESULTS for the next run."""
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def read_manifest(folder: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The manifest's records, for reports (a torn last line is left out)."""
    with (Path(folder) / MANIFEST).open("rb") as lines:
        for line in lines:
            if line.endswith(b"\n"):
                yield json.loads(line)


@dataclasses.dataclass
class ManifestSummary:
    """What a RESULTS folder's manifest says, read without locking it.

    ``header`` is the first line (empty when there is no manifest); the
    other fields are :class:`Manifest`'s attributes of the same names.
    """

    header: dict[str, Any] = dataclasses.field(default_factory=dict)
    scans_done: int = 0
    last_part: int = 0
    merged_part: int = -1

    def add(self, record: Mapping[str, Any]) -> None:
        """Take one manifest record into account."""
        event = record.get("event")
        if event == "batch":
            self.header = dict(record)
        elif event == "part":
            self.last_part = int(record["part"])
            self.scans_done += len(record["scans"])
        elif event == "merged":
            self.merged_part = int(record["part"])


def summarise_manifest(folder: str | os.PathLike) -> ManifestSummary:
    """Replay a RESULTS folder's manifest (for diff and for reports); a folder without one gives an empty summary."""
    summary = ManifestSummary()
    if (Path(folder) / MANIFEST).is_file():
        for record in read_manifest(folder):
            summary.add(record)
    return summary
