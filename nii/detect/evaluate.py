"""``nii evaluate``: a detector's mAP, Pd/Pfa and speed on a data set.

Every scan goes through the pipeline's own path: read, calibrate with its
scanner's profile, :func:`~nii.detect.inputs.detector_image`, detect. A
scan's screening score is its highest region score; a scan is a threat
scan when its ground truth holds any box of a detector class (or when it
sits under ``threat/`` in an image-level set).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from nii.detect.datasets import BoxSample, ImageLabel, load_sample
from nii.detect.metrics import box_metrics, localisation_metrics, screening_metrics, threshold_at_pfa

__all__ = ["predict", "evaluate_samples", "evaluate_image_level", "evaluate_sets", "round_metrics"]


def predict(detector: Any, samples: Sequence[BoxSample | ImageLabel], *, progress: bool = True,
            desc: str = "evaluate") -> tuple[list[tuple[np.ndarray, np.ndarray, list[str]]], list[np.ndarray], float]:
    """Run ``detector`` over samples.

    Returns
    -------
    predictions : list of (boxes, scores, classes)
    truth_boxes : list of ndarray
        Ground-truth boxes scaled to the detector image (empty for image-level labels).
    ms_per_image : float
        Median detection time per scan (image in, regions out).
    """
    predictions, truths, times = [], [], []
    for sample in tqdm(samples, desc=desc, unit="scan", disable=not progress):
        image, boxes = load_sample(sample.path, getattr(sample, "boxes", None))
        started = time.perf_counter()
        regions = detector.detect_images([image])[0]
        times.append(time.perf_counter() - started)
        predictions.append((np.array([r.box for r in regions], np.float32).reshape(-1, 4),
                            np.array([r.score for r in regions], np.float32),
                            [r.class_name for r in regions]))
        truths.append(boxes)
    return predictions, truths, 1000 * float(np.median(times)) if times else 0.0


def _score(prediction: tuple[np.ndarray, np.ndarray, list[str]]) -> float:
    return float(prediction[1].max()) if prediction[1].size else 0.0


def round_metrics(value: Any) -> Any:
    """Floats (nested in dicts too) to 4 decimals, for cards and JSON output."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: round_metrics(v) for k, v in value.items()}
    return value


def evaluate_samples(detector: Any, boxed: Sequence[BoxSample], clear: Sequence[BoxSample] = (), *,
                     threshold: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Box and screening metrics over a box set plus optional extra clear scans.

    mAP is over ``boxed`` (its clear scans included, as in the set); Pd/Pfa
    over all scans. ``threshold`` is the operating point; without one, the
    threshold giving 5% false alarms on these clear scans is reported.
    """
    predicted = predict(detector, list(boxed) + list(clear), progress=progress)
    return _metrics(detector, boxed, clear, predicted, threshold)


def _metrics(detector: Any, boxed: Sequence[BoxSample], clear: Sequence[BoxSample],
             predicted: tuple[list, list, float], threshold: float | None) -> dict[str, Any]:
    predictions, truths, ms = predicted
    samples = list(boxed) + list(clear)
    result: dict[str, Any] = {"scans": len(samples)}
    # A class-agnostic detector (the anomaly model) names no class, so mAP
    # over classes means nothing for it; whether its alarms sit on the
    # threat is measured instead.
    agnostic = getattr(detector, "class_agnostic", False)
    boxed_truths = [(truths[i], list(samples[i].classes)) for i in range(len(boxed))]
    if not agnostic and any(len(c) for _, c in boxed_truths):
        result.update(box_metrics(predictions[:len(boxed)], boxed_truths, detector.classes))
    threat = [len(s.classes) > 0 for s in samples]
    if any(threat) and not all(threat):
        result.update(screening_metrics([_score(p) for p in predictions], threat, threshold=threshold))
    elif all(threat) and threshold is not None:  # threat scans only: no Pfa, but Pd at the operating point
        result.update(pd=float(np.mean([_score(p) >= threshold for p in predictions])), threshold=threshold)
    if agnostic and "threshold" in result:
        located = [i for i, t in enumerate(threat) if t and len(truths[i])]
        result["localisation"] = localisation_metrics([predictions[i] for i in located],
                                                      [truths[i] for i in located], result["threshold"])
    result["ms_per_image"] = ms
    return round_metrics(result)


def evaluate_image_level(detector: Any, labels: Sequence[ImageLabel], *, threshold: float | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """Screening metrics over a ``clear/`` + ``threat/`` set."""
    predictions, _, ms = predict(detector, labels, progress=progress)
    result = screening_metrics([_score(p) for p in predictions], [label.threat for label in labels],
                               threshold=threshold)
    return round_metrics({"scans": len(labels), **result, "ms_per_image": ms})


def evaluate_decisions(pipeline: Any, labels: Sequence[ImageLabel], *, progress: bool = True) -> dict[str, Any]:
    """Pd and Pfa of the pipeline's own ALARM/CLEAR decision on a ``clear/`` + ``threat/`` set.

    This judges what the officer gets: every configured model, fused, at
    the configured operating point -- not one model's score.

    Returns
    -------
    dict
        ``pd``, ``pfa``, ``n_threat``, ``n_clear``, ``refused`` (path: reason
        for scans the pipeline could not analyse; they count in neither
        rate), ``ms_per_scan`` (median over analysed scans, all stages).
    """
    from nii.pipeline import ALARM, AnalysisError

    alarms: dict[bool, list[bool]] = {True: [], False: []}
    refused, times = {}, []
    for label in tqdm(labels, desc="evaluate pipeline", unit="scan", disable=not progress):
        try:
            result = pipeline.analyze(label.path)
        except AnalysisError as err:
            refused[str(label.path)] = str(err)
            continue
        alarms[label.threat].append(result.decision == ALARM)
        times.append(sum(v for k, v in result.timings_ms.items() if ":" not in k))
    return round_metrics({
        "pd": float(np.mean(alarms[True])) if alarms[True] else None,
        "pfa": float(np.mean(alarms[False])) if alarms[False] else None,
        "n_threat": len(alarms[True]),
        "n_clear": len(alarms[False]),
        "refused": refused,
        "ms_per_scan": float(np.median(times)) if times else 0.0,
    })


def evaluate_sets(detector: Any, config: Mapping[str, Any], *, cache: str | os.PathLike = "runs/cache",
                  progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics on each ``[[evaluate]]`` set of a training config, and the operating points.

    The operating point's threshold is set on ``operating_point.set`` (a
    validation set, never a held-out one) at ``operating_point.pfa``; every
    set's Pd/Pfa is then reported at that threshold. Sets whose data is
    absent are recorded as skipped.
    """
    from nii.detect.train import resolve_data

    resolved, metrics = {}, {}
    for entry in config.get("evaluate", []):
        try:
            boxed = [s for spec in entry["boxes"] for s in resolve_data(spec, cache=cache, progress=progress)]
            clear = [s for spec in entry.get("clear", []) for s in resolve_data(spec, cache=cache, progress=progress)]
        except FileNotFoundError as err:
            metrics[entry["name"]] = {"skipped": str(err)}
            continue
        resolved[entry["name"]] = (boxed, clear)

    point = config.get("operating_point", {})
    point_set, pfa = point.get("set"), float(point.get("pfa", 0.05))
    operating_points: dict[str, Any] = {}
    threshold, reuse = None, {}
    if point_set in resolved:
        boxed, clear = resolved[point_set]
        samples = boxed + clear
        reuse[point_set] = predict(detector, samples, progress=progress, desc=f"operating point on {point_set}")
        clear_scores = [_score(p) for p, s in zip(reuse[point_set][0], samples) if not s.classes]
        threshold = threshold_at_pfa(clear_scores, pfa)
        # Stored unrounded: it sits just above a clear scan's score, and
        # rounding it down would alarm on that scan, so the card's Pfa would
        # not be what its operating point gives.
        operating_points["default"] = {"threshold": threshold, "pfa_target": pfa, "set_on": point_set}
    for name, (boxed, clear) in resolved.items():
        # The operating-point set's predictions are reused, not recomputed.
        predicted = reuse.get(name) or predict(detector, boxed + clear, progress=progress)
        metrics[name] = _metrics(detector, boxed, clear, predicted, threshold)
    return metrics, operating_points
