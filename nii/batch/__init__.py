"""Batch re-analysis of archived scans: ``nii batch run`` and ``nii batch diff``.

When a new model or threshold is approved, customs re-runs it over months of
archived scans to find what the old one missed. :func:`run_batch` streams an
archive (folders, list files, the service's store) through the same
:meth:`nii.pipeline.Pipeline.analyze` as ``nii analyze`` and the service,
on a local process pool or on Ray Data, into Parquet tables
(``scans.parquet``, ``alerts.parquet``) that a killed run carries on from.
:func:`diff_runs` compares two runs scan by scan for sign-off.

Examples
--------
>>> summary = run_batch(["archive/2025-q4"], "runs/q4-v2", config="site-v2.toml")  # doctest: +SKIP
>>> print(summary.text())  # doctest: +SKIP
>>> print(diff_text(diff_runs("runs/q4-v1", "runs/q4-v2")))  # doctest: +SKIP
"""

import importlib
from typing import Any

# Where each public name lives. Loaded on first use: a worker process needs
# the analyser only, not pyarrow or the diff (and SciPy behind it).
_HOMES = {
    "ScanAnalyser": "analyse", "analyse_item": "analyse",
    "RunDiff": "diff", "ScanDiff": "diff", "diff_runs": "diff", "diff_text": "diff", "match_alerts": "diff",
    "ENGINES": "engines",
    "ALERTS_SCHEMA": "results", "SCANS_SCHEMA": "results", "ResultsError": "results",
    "BatchSummary": "run", "pipeline_identity": "run", "run_batch": "run",
    "ArchiveItem": "sources", "iter_archive": "sources",
}

__all__ = [
    "ALERTS_SCHEMA",
    "ENGINES",
    "SCANS_SCHEMA",
    "ArchiveItem",
    "BatchSummary",
    "ResultsError",
    "RunDiff",
    "ScanAnalyser",
    "ScanDiff",
    "analyse_item",
    "diff_runs",
    "diff_text",
    "iter_archive",
    "match_alerts",
    "pipeline_identity",
    "run_batch",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'nii.batch' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nii.batch.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
