"""The result JSON of one analysed scan, and writing a scan's output files.

:func:`result_record` is the JSON form of a :class:`~nii.pipeline.ScanResult`;
its published JSON Schema is ``nii/annotate/result.schema.json``
(:data:`RESULT_SCHEMA`). :func:`write_outputs` writes, into one folder per
scan:

``annotated.png``
    The operator rendering with the alerts (CT: slices and MIPs).
``result.json``
    :func:`result_record`.
``tdr.dcm``
    The DICOS Threat Detection Report (TDR type MACHINE).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

import nii
from nii.detect.fuse import Alert

if TYPE_CHECKING:
    from nii.pipeline import ScanResult

__all__ = ["RESULT_SCHEMA", "OUTPUT_FILES", "result_record", "alerts_in_scan_pixels", "write_outputs", "summary_line"]

RESULT_SCHEMA = Path(__file__).with_name("result.schema.json")
#: The files :func:`write_outputs` writes into each scan's folder.
OUTPUT_FILES = {"annotated": "annotated.png", "result": "result.json", "tdr": "tdr.dcm"}


def result_record(result: ScanResult) -> dict[str, Any]:
    """The result JSON: scan, calibration, models, alerts, decision, timings.

    Alert boxes are in the calibrated scan's pixels (square pixels; CT
    voxels), as is ``image_shape``.
    """
    scan = result.scan
    return {
        "schema": "nii-result/1",
        "nii_version": nii.__version__,
        "scan": {
            "id": scan.scan_id,
            "path": scan.source_path,
            "format": scan.source_format.value if scan.source_format else None,
            "kind": scan.kind.value,
            "modality": scan.modality,
            "scanner_id": scan.scanner_id,
            "acquired_at": scan.acquired_at.isoformat() if scan.acquired_at else None,
            "metadata": dict(scan.metadata),
        },
        "calibration_profile": result.profile_id,
        "image_shape": list(result.calibrated.opaque.shape),
        "models": [{"name": m.name, "version": m.version, "sha256": m.sha256} for m in result.models],
        "skipped_models": dict(result.skipped),
        "operating_point": result.operating_point,
        "alarm_thresholds": {name: dict(by_class) for name, by_class in result.alarm_thresholds.items()},
        "decision": result.decision,
        "alerts": [alert.to_dict() for alert in result.alerts],
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
    }


def alerts_in_scan_pixels(result: ScanResult) -> list[Alert]:
    """The alerts with boxes (and masks) mapped from the calibrated pixels
    back to the scan as acquired, which is what a TDR must reference.

    Line scans are resampled to square pixels during calibration, so the two
    grids differ along the belt.
    """
    calibrated_shape = result.calibrated.opaque.shape
    scan_shape = result.scan.spatial_shape
    if tuple(calibrated_shape) == tuple(scan_shape):
        return list(result.alerts)
    # Boxes are (x, y[, z]) starts then ends; shapes are ([z,] y, x).
    factors = [s / c for s, c in zip(reversed(scan_shape), reversed(calibrated_shape))]
    mapped = []
    for alert in result.alerts:
        half = len(alert.box) // 2
        box = tuple(v * factors[i % half] for i, v in enumerate(alert.box))
        sources = tuple(dataclasses.replace(s, mask=None if s.mask is None else cv2.resize(
            s.mask.astype(np.uint8), (scan_shape[-1], scan_shape[-2]), interpolation=cv2.INTER_NEAREST).astype(bool))
            for s in alert.sources)
        mapped.append(dataclasses.replace(alert, box=box, sources=sources))
    return mapped


def write_outputs(result: ScanResult, folder: str | os.PathLike) -> dict[str, Path]:
    """Write :data:`OUTPUT_FILES` for one scan into ``folder`` (created).

    Returns
    -------
    dict
        ``{"annotated": path, "result": path, "tdr": path}``.
    """
    from nii.annotate.tdr import machine_tdr, write_tdr
    from nii.ingest.image import encode_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / name for key, name in OUTPUT_FILES.items()}
    paths["annotated"].write_bytes(encode_image(result.annotated))
    paths["result"].write_text(json.dumps(result_record(result), indent=1) + "\n")
    tdr = machine_tdr(result.scan, alerts_in_scan_pixels(result), decision=result.decision, models=result.models,
                      profile_id=result.profile_id, processing_ms=sum(
                          v for k, v in result.timings_ms.items() if ":" not in k))
    write_tdr(tdr, paths["tdr"])
    return paths


def summary_line(result: ScanResult) -> str:
    """One human line: decision and the alarming alerts (then advisories)."""
    alarms = [a for a in result.alerts if a.alarm]
    advisories = len(result.alerts) - len(alarms)
    text = f"{result.decision}"
    if alarms:
        text += ": " + ", ".join(f"{a.class_name} {a.score:.2f} ({a.dicos_category})" for a in alarms)
    if advisories:
        text += f" [{advisories} advisor{'y' if advisories == 1 else 'ies'}]"
    return text
