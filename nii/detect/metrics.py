"""Detection and screening metrics: mAP, Pd against Pfa, AUROC.

Box metrics go through pycocotools' COCOeval (the reference implementation
published mAP figures use), at IoU 0.5 and 0.5:0.95. Screening metrics are
image-level: a scan's score is its highest region score, an alarm is a
score at or above the threshold, Pd is the share of threat scans that alarm
and Pfa the share of clear scans that do.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
from scipy.stats import mannwhitneyu

__all__ = ["box_metrics", "threshold_at_pfa", "screening_metrics", "pd_pfa_curve", "box_overlap", "box_iou",
           "localisation_metrics", "PFA_POINTS"]

# False alarm rates at which nii evaluate reports Pd.
PFA_POINTS = (0.01, 0.02, 0.05)


def box_metrics(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]],
    truths: Sequence[tuple[np.ndarray, Sequence[str]]],
    classes: Sequence[str],
) -> dict[str, object]:
    """COCO-style mAP of predicted boxes against ground truth.

    Parameters
    ----------
    predictions : sequence of (boxes (n, 4), scores (n,), class names)
        Per image, boxes ``(x0, y0, x1, y1)``.
    truths : sequence of (boxes (m, 4), class names)
        Per image, same order.
    classes : sequence of str
        Classes to score; a class with no ground-truth box in the set is left
        out of the mean (and of ``ap50_per_class``).

    Returns
    -------
    dict
        ``map50``, ``map50_95`` and ``ap50_per_class`` (class -> AP@0.5).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} images")
    category = {name: i + 1 for i, name in enumerate(classes)}

    def xywh(box: np.ndarray) -> list[float]:
        x0, y0, x1, y1 = (float(v) for v in box)
        return [x0, y0, x1 - x0, y1 - y0]

    images, annotations, results = [], [], []
    for image_id, ((boxes, names), (p_boxes, p_scores, p_names)) in enumerate(zip(truths, predictions), start=1):
        images.append({"id": image_id})
        for box, name in zip(boxes, names):
            if name in category:
                x, y, w, h = xywh(box)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category[name],
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        for box, score, name in zip(p_boxes, p_scores, p_names):
            if name in category:
                results.append({"image_id": image_id, "category_id": category[name], "bbox": xywh(box),
                                "score": float(score)})
    present = sorted({a["category_id"] for a in annotations})
    if not present:
        raise ValueError("the set has no ground-truth box of any detector class; mAP is undefined")
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations,
                     "categories": [{"id": i, "name": n} for n, i in category.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth.createIndex()
        detected = truth.loadRes(results) if results else COCO()
        if not results:
            detected.dataset = {"images": images, "annotations": [], "categories": truth.dataset["categories"]}
            detected.createIndex()
        evaluation = COCOeval(truth, detected, iouType="bbox")
        evaluation.params.catIds = present
        evaluation.params.maxDets = [1, 10, 100]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: [IoU threshold, recall, class, area range, max detections]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]

    def ap(values: np.ndarray) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.size else 0.0

    per_class = {classes[cat - 1]: ap(precision[0, :, k]) for k, cat in enumerate(present)}
    return {
        "map50": float(np.mean(list(per_class.values()))),
        "map50_95": float(np.mean([ap(precision[:, :, k]) for k in range(len(present))])),
        "ap50_per_class": per_class,
    }


def threshold_at_pfa(clear_scores: Sequence[float], pfa: float) -> float:
    """The lowest threshold at which clear scans alarm at most ``pfa`` of the time.

    An alarm is ``score >= threshold``. With n clear scans, at most
    ``floor(pfa * n)`` may alarm, so the threshold sits just above the
    score of the next one down.
    """
    scores = np.sort(np.asarray(clear_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("no clear scans: a false alarm rate cannot be set")
    allowed = int(np.floor(pfa * scores.size + 1e-9))
    if allowed >= scores.size:
        return 0.0
    return float(np.nextafter(scores[allowed], np.inf))


def screening_metrics(scores: Sequence[float], threat: Sequence[bool], *, threshold: float | None = None,
                      pfa_target: float = 0.05) -> dict[str, object]:
    """Pd, Pfa, Pd at fixed Pfa, and AUROC of image-level scores.

    Parameters
    ----------
    scores : sequence of float
        Each scan's score (highest region score; 0 with no region).
    threat : sequence of bool
        Ground truth per scan.
    threshold : float, optional
        The operating point; default: the one giving ``pfa_target`` on these
        clear scans (which is then tuned on this set -- say so when quoting).

    Returns
    -------
    dict
        ``pd``, ``pfa``, ``threshold``, ``pd_at_pfa`` ({"0.01": ..., "0.02":
        ..., "0.05": ...}), ``auroc``, ``n_clear``, ``n_threat``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    threat = np.asarray(threat, dtype=bool)
    clear_scores, threat_scores = scores[~threat], scores[threat]
    if clear_scores.size == 0 or threat_scores.size == 0:
        raise ValueError(f"need clear and threat scans; got {clear_scores.size} clear, {threat_scores.size} threat")
    if threshold is None:
        threshold = threshold_at_pfa(clear_scores, pfa_target)
    pd_at = {}
    for point in PFA_POINTS:
        t = threshold_at_pfa(clear_scores, point)
        pd_at[f"{point:.2f}"] = float(np.mean(threat_scores >= t))
    auroc = mannwhitneyu(threat_scores, clear_scores).statistic / (threat_scores.size * clear_scores.size)
    return {
        "pd": float(np.mean(threat_scores >= threshold)),
        "pfa": float(np.mean(clear_scores >= threshold)),
        "threshold": float(threshold),
        "pd_at_pfa": pd_at,
        "auroc": float(auroc),
        "n_clear": int(clear_scores.size),
        "n_threat": int(threat_scores.size),
    }


def pd_pfa_curve(scores: Sequence[float], threat: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pd and Pfa at every distinct threshold (an ROC curve), for plotting.

    Returns
    -------
    pfa, pd, thresholds : ndarray
        Sorted by increasing Pfa; alarm is ``score >= threshold``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    threat = np.asarray(threat, dtype=bool)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    pd = np.array([np.mean(scores[threat] >= t) for t in thresholds])
    pfa = np.array([np.mean(scores[~threat] >= t) for t in thresholds])
    return pfa, pd, thresholds


def _intersection_and_sizes(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Intersection, size of a and size of b, for boxes of 2 or 3 dimensions."""
    half = len(a) // 2
    inter, size_a, size_b = 1.0, 1.0, 1.0
    for i in range(half):
        inter *= max(0.0, min(a[i + half], b[i + half]) - max(a[i], b[i]))
        size_a *= max(0.0, a[i + half] - a[i])
        size_b *= max(0.0, b[i + half] - b[i])
    return inter, size_a, size_b


def box_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller of two boxes (2D or 3D, same layout).

    A rule's region is a connected component: it can be a charge without its
    detonator or a shield with what it hides, so "covers most of one or the
    other" is the fair test, not IoU.
    """
    inter, size_a, size_b = _intersection_and_sizes(a, b)
    smaller = min(size_a, size_b)
    return inter / smaller if smaller > 0 else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (2D or 3D, same layout)."""
    inter, size_a, size_b = _intersection_and_sizes(a, b)
    union = size_a + size_b - inter
    return inter / union if union > 0 else 0.0


def localisation_metrics(predictions: Sequence[tuple[np.ndarray, np.ndarray, Sequence[str]]],
                         truth_boxes: Sequence[np.ndarray], threshold: float, *,
                         min_overlap: float = 0.3) -> dict[str, float]:
    """Whether a class-agnostic detector's alarms point at the threat.

    An image-level score can be right for the wrong reason (a bag that is
    merely unusual); the operator needs the region. Only threat scans are
    passed in.

    Parameters
    ----------
    predictions : sequence of (boxes, scores, classes)
        Regions per threat scan.
    truth_boxes : sequence of ndarray (n, 4)
        The annotated threats per scan.
    threshold : float
        The operating point: regions scoring at least this alarm.
    min_overlap : float
        :func:`box_overlap` a region needs with a threat box.

    Returns
    -------
    dict
        ``localised``: of the threat scans that alarm, the fraction with an
        alarming region on a threat; ``top_region_on_threat``: of all threat
        scans, the fraction whose highest-scoring region is on a threat.
    """
    def on_threat(box: np.ndarray, truth: np.ndarray) -> bool:
        return any(box_overlap(box, t) >= min_overlap for t in truth)

    alarmed, localised, top = 0, 0, 0
    for (boxes, scores, _), truth in zip(predictions, truth_boxes):
        if scores.size:
            top += on_threat(boxes[int(np.argmax(scores))], truth)
        alarming = boxes[scores >= threshold]
        if len(alarming):
            alarmed += 1
            localised += any(on_threat(box, truth) for box in alarming)
    return {"localised": localised / alarmed if alarmed else 0.0,
            "top_region_on_threat": top / len(predictions) if len(predictions) else 0.0}
