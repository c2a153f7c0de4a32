"""``nii batch run``: re-analyse an archive into Parquet tables, resumably.

The run, as a recipe:

1. **Pipeline.** Read the config and name what it runs
   (:func:`pipeline_identity`): every model's version and sha256, its
   options, every calibration profile. This is the fingerprint RESULTS is
   bound to.
2. **RESULTS.** Open and lock it (:class:`~nii.batch.results.Manifest`);
   a part a killed run left uncommitted is dropped, and a RESULTS made with
   another pipeline is refused.
3. **To do.** Stream the archives (:func:`~nii.batch.sources.iter_archive`)
   into a spool on disk, leaving out what the manifest lists as done and
   what was listed twice. Its length is the progress bar's total.
4. **Analyse.** The engine runs :func:`~nii.batch.analyse.analyse_item` on
   every spooled scan; records come back in any order and are committed a
   part of ``chunk_size`` scans at a time.
5. **Merge.** The parts become ``scans.parquet`` and ``alerts.parquet``.

Memory is that of a part and the engine's few scans in flight, plus 16
bytes a scan already done; it does not grow with the archive otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nii.batch.analyse import OUTPUTS_FOLDER
from nii.batch.engines import make_engine
from nii.batch.results import DoneSet, Manifest, utc_now
from nii.batch.sources import ArchiveItem, check_archives, iter_archive

__all__ = ["BatchSummary", "pipeline_identity", "run_batch"]

TODO = ".todo"
# Spool lines per file: Ray Data reads each file as its own block.
_SPOOL_LINES = 2000
# Error reasons kept apart in the summary; the rest are counted together.
_MAX_REASONS = 100


def pipeline_identity(config: str | os.PathLike | None = None, *, outputs: bool = False) -> dict[str, Any]:
    """What a run analyses with, and its fingerprint, without loading any model.

    Parameters
    ----------
    config : path-like, optional
        Pipeline config (the shipped one when None).
    outputs : bool
        Whether per-scan outputs are written (a RESULTS has them for every
        scan or for none).

    Returns
    -------
    dict
        ``models`` (name, version, sha256 and the config's settings for
        each), ``profiles`` (scanner -> profile id), ``operating_point``,
        ``min_overlap``, ``outputs``, ``config`` (the file) and
        ``fingerprint`` (sha256 of all but ``config``).

    Raises
    ------
    ValueError
        A bad config, an unregistered model, an unreadable profile.
    """
    from nii.calibrate.profile import load_profile
    from nii.detect.registry import list_models, resolve_model
    from nii.pipeline import load_pipeline_config

    pipeline = load_pipeline_config(config)
    registered = list_models(pipeline.models_root)
    models = []
    for choice in pipeline.models:
        name, version = resolve_model(choice.name, choice.version, pipeline.models_root)
        models.append({"name": name, "version": version, "sha256": registered[name][version],
                       "options": dict(choice.options), "scan_kinds": choice.scan_kinds,
                       "skip_scanners": list(choice.skip_scanners), "alarm_thresholds": dict(choice.alarm_thresholds)})
    profiles = {path.parent.name: load_profile(path).profile_id
                for path in sorted(pipeline.calibration_root.glob("*/profile.npz"))}
    identity = {"models": models, "profiles": profiles, "operating_point": pipeline.operating_point,
                "min_overlap": pipeline.min_overlap, "outputs": bool(outputs)}
    canonical = json.dumps(identity, sort_keys=True, default=str)
    # As the manifest will read it back (tuples as lists), so that a refusal
    # names only what really differs.
    identity = json.loads(canonical)
    return {**identity, "config": str(pipeline.source), "fingerprint": hashlib.sha256(canonical.encode()).hexdigest()}


@dataclasses.dataclass
class BatchSummary:
    """What one ``nii batch run`` did.

    Parameters
    ----------
    results : Path
    engine : str
    workers : int
    analysed : int
        Scans analysed by this run (errors included).
    alarms, errors : int
        Of those, how many alarmed, and how many could not be analysed.
    reasons : dict of str to int
        Why, most frequent first.
    already_done : int
        Scans of the archives that RESULTS held before this run.
    listed_twice : int
        Archive items this run saw more than once (analysed once).
    seconds : float
        Wall time of the analysis, from starting the workers to the last
        scan (listing and merging not included).
    total : int
        Scans in RESULTS now.
    """

    results: Path
    engine: str
    workers: int
    analysed: int = 0
    alarms: int = 0
    errors: int = 0
    reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    already_done: int = 0
    listed_twice: int = 0
    seconds: float = 0.0
    total: int = 0

    @property
    def scans_per_s(self) -> float:
        return self.analysed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "results": str(self.results), "scans_per_s": round(self.scans_per_s, 2)}

    def text(self) -> str:
        """The summary ``nii batch run`` prints."""
        if not self.analysed:
            return (f"nothing to do: all {self.already_done} scans of the archives are already in {self.results} "
                    f"({self.total} scans in all)")
        lines = [f"{self.analysed} scans analysed in {self.seconds:.1f} s ({self.scans_per_s:.2f} scans/s, "
                 f"{self.engine} engine, {self.workers} worker{'s' if self.workers != 1 else ''}): {self.alarms} ALARM, "
                 f"{self.analysed - self.alarms - self.errors} CLEAR, {self.errors} errors"]
        if self.already_done or self.listed_twice:
            lines.append(f"skipped {self.already_done} already in RESULTS and {self.listed_twice} listed twice")
        for reason, count in self.reasons.items():
            lines.append(f"  {count:>6} x {reason}")
        lines.append(f"{self.results}: {self.total} scans in scans.parquet and alerts.parquet")
        return "\n".join(lines)


class _Tally:
    """Counts decisions and error reasons as records come in."""

    def __init__(self, summary: BatchSummary) -> None:
        self.summary = summary
        self.reasons: collections.Counter[str] = collections.Counter()

    def add(self, record: dict[str, Any]) -> None:
        scan = record["scan"]
        self.summary.analysed += 1
        if scan["error"] is not None:
            self.summary.errors += 1
            reason = scan["error"] if scan["error"] in self.reasons or len(self.reasons) < _MAX_REASONS \
                else "(other reasons)"
            self.reasons[reason] += 1
        elif scan["decision"] == "ALARM":
            self.summary.alarms += 1

    def finish(self) -> None:
        self.summary.reasons = dict(self.reasons.most_common())


def _spool(folder: Path, items: Iterable[ArchiveItem], done: DoneSet, summary: BatchSummary,
           progress: bool) -> tuple[list[Path], int]:
    """Write the items not yet done to ``folder`` (files of lines); return the files and the count."""
    from tqdm import tqdm

    shutil.rmtree(folder, ignore_errors=True)
    files: list[Path] = []
    seen = DoneSet()
    out = None
    try:
        with tqdm(desc="listing", unit="scan", disable=not progress, leave=False) as bar:
            written = 0
            for item in items:
                bar.update(1)
                if item.key in done:
                    summary.already_done += 1
                    continue
                if item.key in seen:
                    summary.listed_twice += 1
                    continue
                seen.add(item.key)
                if written % _SPOOL_LINES == 0:
                    if out is not None:
                        out.close()
                    folder.mkdir(exist_ok=True)
                    files.append(folder / f"todo-{len(files) + 1:06d}.jsonl")
                    out = files[-1].open("w", encoding="utf-8")
                out.write(item.to_json() + "\n")
                written += 1
    finally:
        if out is not None:
            out.close()
    return files, written


def run_batch(archives: Sequence[str | os.PathLike], results: str | os.PathLike, *,
              config: str | os.PathLike | None = None, engine: str = "local", workers: int | None = None,
              outputs: bool = False, chunk_size: int = 256, ray_address: str | None = None,
              progress: bool = True) -> BatchSummary:
    """Analyse every scan of ``archives`` not yet in ``results``; see the module docstring.

    Parameters
    ----------
    archives : sequence of path-like
        Folders, list files and service data folders
        (:mod:`nii.batch.sources`).
    results : path-like
        RESULTS: created, or carried on from where a previous run stopped.
    config : path-like, optional
        Pipeline config (the shipped one when None).
    engine : {"local", "ray"}
        Where the scans are analysed (:mod:`nii.batch.engines`).
    workers : int, optional
        Processes or actors (default: the cores, or the cluster's GPUs).
    outputs : bool
        Also write each scan's result JSON, annotated image and TDR under
        ``results/outputs/``.
    chunk_size : int
        Scans per committed part: at most this much work is redone after a
        kill.
    ray_address : str, optional
        The Ray cluster (``--engine ray``); a local instance when None.
    progress : bool
        Show progress bars (listing, then scans with rate and ETA).

    Returns
    -------
    BatchSummary

    Raises
    ------
    ValueError
        A missing archive, a bad config, an unknown engine, or a RESULTS
        that is locked or made with another pipeline; one line each.
    OSError
        RESULTS or an output cannot be written. Parts committed so far
        stay; the next run carries on after them.
    """
    from tqdm import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    archives = check_archives(archives)
    identity = pipeline_identity(config, outputs=outputs)
    results = Path(results)
    runner = make_engine(engine, {"config": identity["config"],
                                  "outputs_root": str(results / OUTPUTS_FOLDER) if outputs else None,
                                  "models": [f"{m['name']} {m['version']} {m['sha256']}" for m in identity["models"]]},
                         workers=workers, ray_address=ray_address)
    manifest = Manifest.open(results, identity)
    todo_folder = results / TODO
    try:
        summary = BatchSummary(results, runner.name, runner.workers or 0)
        # RESULTS inside an archive folder holds annotated PNGs: never scans to analyse.
        todo, pending = _spool(todo_folder, iter_archive(archives, skip=[results]), manifest.done, summary, progress)
        if not (pending or summary.already_done or summary.listed_twice):
            raise ValueError(f"no scans found in {', '.join(str(a) for a in archives)} "
                             "(linked folders are followed; notes and other runs' RESULTS are left out)")
        if pending:
            manifest.append({"event": "run", "at": utc_now(), "archives": [str(a) for a in archives],
                             "engine": runner.name, "workers": runner.workers, "pending": pending,
                             "already_done": summary.already_done})
            _analyse(runner, todo, manifest, summary, chunk_size=chunk_size,
                     bar=tqdm(total=pending, desc="batch", unit="scan", disable=not progress, smoothing=0.1))
            summary.workers = runner.workers or 0
        if not manifest.merged:
            manifest.merge()
        summary.total = manifest.scans_done
        return summary
    finally:
        shutil.rmtree(todo_folder, ignore_errors=True)
        manifest.close()


def _analyse(runner: Any, todo: list[Path], manifest: Manifest, summary: BatchSummary, *, chunk_size: int,
             bar: Any) -> None:
    """Run the engine over the spool, committing a part every ``chunk_size`` records."""
    tally = _Tally(summary)
    chunk: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for record in runner.records(todo):
            chunk.append(record)
            tally.add(record)
            bar.update(1)
            bar.set_postfix(alarms=summary.alarms, errors=summary.errors, refresh=False)
            if len(chunk) >= chunk_size:
                committing, chunk = chunk, []
                manifest.commit_part(committing)
    finally:
        # Stopped by Ctrl-C or a failing engine: what came back is complete
        # and is kept, so the next run need not redo it.
        summary.seconds = time.perf_counter() - started
        bar.close()
        tally.finish()
        if chunk:
            manifest.commit_part(chunk)
