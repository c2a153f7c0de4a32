"""Pd and Pfa of a detector against the simulator's exact truth.

Physics rules are judged on simulated scans, where what is in the beam is
known: which threats (with their boxes and masses) and, for cargo, whether
the manifest was honest. A *target scan* holds at least one target (a
threat of a target category, at least ``min_mass_g``; or a manifest
mismatch of a target type). It is detected when a region overlaps a target
(manifest mismatches are whole-scan, so any region counts). A *clear scan*
holds no threat of any kind and an honest manifest, as in screening, where
the false alarm rate is measured on clear bags; any region on it is a false
alarm. Scans holding other threats, or only targets lighter than
``min_mass_g``, are left out (``n_excluded``): an explosive rule that fires
on a brick of cocaine has sent the officer to a real find.

Every scan goes through the pipeline's own path: read, calibrate with its
scanner's profile, detect.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nii.calibrate.correct import calibrate_with_scanner_profile
from nii.calibrate.profile import CALIBRATION_ROOT
from nii.detect.metrics import box_overlap
from nii.ingest import read_scan

__all__ = ["TruthScan", "read_truth", "evaluate_against_truth", "MANIFEST_PREFIX"]

# Targets named "manifest:<mismatch type>" are cargo manifest mismatches.
MANIFEST_PREFIX = "manifest:"


@dataclasses.dataclass(frozen=True)
class TruthScan:
    """One simulated scan and what it really holds.

    ``threats`` are ``{"category", "box", "mass_g"}`` with ``box`` in the
    stored scan's pixels as a Region box: ``(x0, y0, x1, y1)`` or, for CT,
    ``(x0, y0, z0, x1, y1, z1)``.
    """

    path: Path
    threats: tuple[dict[str, Any], ...]
    manifest_truth: dict[str, Any] | None = None


def read_truth(annotation_file: str | os.PathLike) -> list[TruthScan]:
    """Scans and truth from a data set ``nii simulate`` wrote (COCO or CT volumes).

    Raises
    ------
    ValueError
        A file that is not a simulated set's ``annotations.json``.
    """
    path = Path(annotation_file)
    if path.is_dir():
        path = path / "annotations.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the truth file ({err})") from None
    names = {c["id"]: c["name"] for c in document.get("categories", [])}
    if "volumes" in document:
        threats: dict[int, list] = {v["id"]: [] for v in document["volumes"]}
        for obj in document.get("objects", []):
            z0, y0, x0, z1, y1, x1 = obj["box_zyx"]
            threats[obj["volume_id"]].append({"category": obj["category"], "box": (x0, y0, z0, x1, y1, z1),
                                              "mass_g": obj.get("mass_g")})
        return [TruthScan(path.parent / v["file_name"], tuple(threats[v["id"]])) for v in document["volumes"]]
    if "images" not in document:
        raise ValueError(f"{path}: not a simulated data set's annotation file (no images or volumes)")
    per_image: dict[int, list] = {image["id"]: [] for image in document["images"]}
    for ann in document.get("annotations", []):
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append({"category": names.get(ann["category_id"], str(ann["category_id"])),
                                           "box": (x, y, x + w, y + h), "mass_g": ann.get("mass_g")})
    return [TruthScan(path.parent / image["file_name"], tuple(per_image[image["id"]]), image.get("manifest_truth"))
            for image in document["images"]]


def _scaled(box: Sequence[float], factors: Sequence[float]) -> tuple[float, ...]:
    """Scale a Region-layout box by per-axis factors given in (x, y[, z]) order."""
    return tuple(v * factors[i % len(factors)] for i, v in enumerate(box))


def _targets(scan: TruthScan, targets: Sequence[str], min_mass_g: float) -> tuple[list, bool]:
    """(target threats, whether the scan holds a too-light target to judge)."""
    found, light = [], False
    for threat in scan.threats:
        if threat["category"] in targets:
            if (threat.get("mass_g") or 0.0) >= min_mass_g:
                found.append(threat)
            else:
                light = True
    return found, light


def evaluate_against_truth(detector: Any, scans: Sequence[TruthScan], *, targets: Sequence[str],
                           min_mass_g: float = 0.0, min_overlap: float = 0.3, progress: bool = True,
                           profile_root: str | os.PathLike = CALIBRATION_ROOT) -> dict[str, Any]:
    """Scan-level Pd and Pfa of ``detector`` for ``targets``.

    Parameters
    ----------
    targets : sequence of str
        Threat categories (``"explosive"``, ``"shielding"``...) or manifest
        mismatch types as ``"manifest:wrong_weight"``.
    min_mass_g : float
        Threat targets lighter than this are left out.
    min_overlap : float
        :func:`box_overlap` a region needs with a target to detect it.

    Returns
    -------
    dict
        ``pd``, ``pfa``, ``n_target``, ``n_clear``, ``n_excluded``,
        ``pd_by_target`` (per target type), ``ms_per_scan`` (median
        calibrate + detect time).
    """
    manifest_types = [t[len(MANIFEST_PREFIX):] for t in targets if t.startswith(MANIFEST_PREFIX)]
    threat_types = [t for t in targets if not t.startswith(MANIFEST_PREFIX)]
    hits: dict[str, list[bool]] = {}
    false_alarms, n_clear, excluded, times = 0, 0, 0, []
    for scan in tqdm(scans, desc=f"evaluate {getattr(detector, 'identity', '')}", unit="scan", disable=not progress):
        raw = read_scan(scan.path)
        started = time.perf_counter()
        calibrated = calibrate_with_scanner_profile(raw, profile_root)
        regions = detector.detect(calibrated)
        times.append(time.perf_counter() - started)
        mismatch = (scan.manifest_truth or {}).get("mismatch")
        if manifest_types and mismatch in manifest_types:
            hits.setdefault(MANIFEST_PREFIX + mismatch, []).append(bool(regions))
            continue
        found, light = _targets(scan, threat_types, min_mass_g)
        if found:
            factors = [c / s for c, s in zip(reversed(calibrated.opaque.shape), reversed(raw.spatial_shape))]
            for threat in found:
                truth_box = _scaled(threat["box"], factors)
                hit = any(box_overlap(r.box, truth_box) >= min_overlap for r in regions)
                hits.setdefault(threat["category"], []).append(hit)
            continue
        if light or scan.threats or mismatch not in (None, "none"):
            excluded += 1
            continue
        n_clear += 1
        false_alarms += bool(regions)
    every = [h for values in hits.values() for h in values]
    return {
        "targets": list(targets),
        "min_mass_g": min_mass_g,
        "pd": float(np.mean(every)) if every else None,
        "pfa": false_alarms / n_clear if n_clear else None,
        "n_target": len(every),
        "n_clear": n_clear,
        "n_excluded": excluded,
        "pd_by_target": {k: float(np.mean(v)) for k, v in sorted(hits.items())},
        "ms_per_scan": 1000 * float(np.median(times)) if times else 0.0,
    }
