"""The one per-scan step of a batch run, and the callable class that holds the pipeline.

:func:`analyse_item` turns one :class:`~nii.batch.sources.ArchiveItem` into
the rows of ``scans.parquet`` and ``alerts.parquet`` by calling
:meth:`nii.pipeline.Pipeline.analyze`, the same code path as ``nii analyze``
and the service. A scan that cannot be analysed becomes a row whose
``error`` says why; it never stops the run.

:class:`ScanAnalyser` is the batch-inference habit of Ray Data: a callable
class that builds the pipeline (loads the models) once per worker, and whose
``__call__`` maps a batch of NumPy arrays to a batch of NumPy arrays. The
local engine's worker processes and the Ray engine's actors both run it.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nii.batch.sources import ArchiveItem

if TYPE_CHECKING:
    from nii.pipeline import Pipeline, ScanResult
    from nii.serve.store import Store

__all__ = ["INPUT_COLUMN", "OUTPUT_COLUMN", "OUTPUTS_FOLDER", "ScanAnalyser", "analyse_item", "failed_record",
           "limit_threads"]

#: The batch column holding one :meth:`ArchiveItem.to_json` line per scan
#: (``text``: what ``ray.data.read_text`` names it).
INPUT_COLUMN = "text"
#: The batch column holding one JSON record per scan: ``{"key", "scan",
#: "alerts"}`` with the rows of the two tables.
OUTPUT_COLUMN = "record"
#: Where ``--outputs`` puts each scan's folder, under RESULTS.
OUTPUTS_FOLDER = "outputs"


def limit_threads(threads: int) -> None:
    """Let this process use ``threads`` cores for torch, OpenCV and BLAS.

    Workers side by side that each spread over every core only fight over
    them; one share each is faster in total. Call it once the models are
    loaded: torch is limited only if a model brought it in (a config of
    rules alone never pays for importing it).
    """
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(threads)
    threadpool_limits(limits=threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=8)
def _store(data_dir: str) -> Store:
    from nii.serve.store import Store

    return Store.open(data_dir)


def _scan_row(item: ArchiveItem, result: ScanResult | None, *, error: str | None, elapsed_ms: float,
              outputs: str | None) -> dict[str, Any]:
    """One row of ``scans.parquet`` (:data:`nii.batch.results.SCANS_SCHEMA`)."""
    row: dict[str, Any] = {"key": item.key, "path": item.path, "scan_id": item.scan_id, "error": error,
                           "elapsed_ms": round(elapsed_ms, 2), "outputs": outputs}
    if result is not None:
        scan = result.scan
        row.update(
            scan_id=scan.scan_id,
            format=scan.source_format.value if scan.source_format else None,
            kind=scan.kind.value,
            scanner_id=scan.scanner_id or None,
            acquired_at=scan.acquired_at.isoformat() if scan.acquired_at else None,
            decision=result.decision,
            alert_count=len(result.alerts),
            alarm_count=sum(a.alarm for a in result.alerts),
            models=", ".join(f"{m.name} {m.version}" for m in result.models),
            profile_id=result.profile_id,
            operating_point=result.operating_point,
        )
    return row


def _alert_rows(item: ArchiveItem, result: ScanResult) -> list[dict[str, Any]]:
    """The rows of ``alerts.parquet`` for one scan (boxes in calibrated pixels, as in result.json)."""
    rows = []
    for alert in result.alerts:
        measurements = alert.measurements
        rows.append({
            "key": item.key, "path": item.path, "scan_id": result.scan.scan_id, "alert_id": alert.id,
            "class": alert.class_name, "dicos_category": alert.dicos_category, "score": float(alert.score),
            "alarm": bool(alert.alarm), "severity": alert.severity, "box": [float(v) for v in alert.box],
            "label": alert.label, "models": ", ".join(f"{m.name} {m.version}" for m in alert.models),
            "zeff": measurements.get("zeff"), "mass_g": measurements.get("mass_g"),
            "explanation": alert.explanation or None,
        })
    return rows


def analyse_item(pipeline: Pipeline, item: ArchiveItem, *, outputs_root: Path | None = None) -> dict[str, Any]:
    """Analyse one archive item into its table rows.

    Parameters
    ----------
    pipeline : Pipeline
    item : ArchiveItem
    outputs_root : Path, optional
        When given, the scan's :data:`~nii.annotate.result.OUTPUT_FILES`
        (result JSON, annotated image, TDR) go to
        ``outputs_root/<scan id>/``.

    Returns
    -------
    dict
        ``{"key": item.key, "scan": row, "alerts": [row, ...]}``; ``row["error"]``
        is the one-line reason when the scan could not be analysed.

    Raises
    ------
    OSError
        The outputs could not be written (a full disk is not a bad scan:
        the run stops, and the scan is analysed again when it resumes).
    """
    from nii.annotate.result import write_outputs
    from nii.pipeline import AnalysisError
    from nii.serve.intake import materialise, safe_name

    started = time.perf_counter()
    result, error = None, None
    try:
        if item.store is None:
            result = pipeline.analyze(item.source())
        else:  # the store keeps blobs by hash: the scan's files get their names back in a scratch folder
            with tempfile.TemporaryDirectory(prefix="nii-batch-") as scratch:
                result = pipeline.analyze(materialise(_store(item.store), item.scan_id, Path(scratch) / "scan"))
    except (AnalysisError, LookupError) as err:
        error = str(err)
    except Exception as err:  # noqa: BLE001 - one odd scan must not stop a months-long run
        error = f"unexpected {type(err).__name__}: {' '.join(str(err).split())}"
    outputs = None
    if result is not None and outputs_root is not None:
        folder = outputs_root / safe_name(result.scan.scan_id, 0)
        write_outputs(result, folder)
        outputs = f"{OUTPUTS_FOLDER}/{folder.name}"
    elapsed_ms = 1000.0 * (time.perf_counter() - started)
    return {"key": item.key,
            "scan": _scan_row(item, result, error=error, elapsed_ms=elapsed_ms, outputs=outputs),
            "alerts": _alert_rows(item, result) if result is not None else []}


def failed_record(item: ArchiveItem, reason: str) -> dict[str, Any]:
    """The record of a scan that could not be analysed at all (its worker died)."""
    return {"key": item.key, "scan": _scan_row(item, None, error=reason, elapsed_ms=0.0, outputs=None), "alerts": []}


class ScanAnalyser:
    """Analyses batches of archive items with one pipeline, built once.

    Parameters
    ----------
    config : str, optional
        Pipeline config file (the shipped one when None).
    models : sequence of str, optional
        ``"name version sha256"`` of every model the run was started with;
        a worker that finds others (a model republished mid-run) refuses
        to start rather than mix versions in one RESULTS.
    outputs_root : str, optional
        Where per-scan outputs go (see :func:`analyse_item`); none when None.
    threads : int, optional
        Cores this worker may use (:func:`limit_threads`).
    device : str, optional
        Where learned models run; their loaders' default when None.

    Raises
    ------
    ValueError
        The config is bad, or its models are not the ones named in ``models``.

    Examples
    --------
    >>> analyser = ScanAnalyser("configs/pipeline.toml")  # doctest: +SKIP
    >>> batch = {"text": np.array([ArchiveItem.from_source(s).to_json() for s in sources])}  # doctest: +SKIP
    >>> analyser(batch)["record"]  # doctest: +SKIP
    """

    def __init__(self, config: str | None = None, *, models: Sequence[str] | None = None,
                 outputs_root: str | None = None, threads: int | None = None, device: str | None = None) -> None:
        from nii.pipeline import Pipeline

        self.pipeline = Pipeline.from_config(config, device=device)
        if threads is not None:
            limit_threads(threads)
        found = [f"{m.name} {m.version} {m.sha256}" for m in self.pipeline.identities]
        if models is not None and found != list(models):
            raise ValueError(f"the models changed since the run started: {', '.join(found)} instead of "
                             f"{', '.join(models)}")
        self.outputs_root = Path(outputs_root) if outputs_root else None

    def analyse(self, item: ArchiveItem) -> dict[str, Any]:
        """One item's record (:func:`analyse_item` with this worker's pipeline)."""
        return analyse_item(self.pipeline, item, outputs_root=self.outputs_root)

    def __call__(self, batch: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
        """``{INPUT_COLUMN: item lines}`` to ``{OUTPUT_COLUMN: record lines}``."""
        records = [json.dumps(self.analyse(ArchiveItem.from_json(line))) for line in batch[INPUT_COLUMN]]
        return {OUTPUT_COLUMN: np.array(records, dtype=object)}
