"""Fuse the regions of several models into alerts, and decide ALARM or CLEAR.

Each model and rule reports what it found on its own; the officer must see
one alert per object, with every model that saw it. :func:`fuse_regions`
merges overlapping regions of the same class (class-aware: a knife and a
firearm on the same spot stay two alerts), and lets a class-agnostic region
(the anomaly model's, a rule's ``opaque``) join the specific alert it lies
on as supporting evidence rather than making a second box. Nothing is
dropped: every source region stays in :attr:`Alert.sources`.

:func:`decide` turns alerts into the scan's verdict at an operating point:
an alert *alarms* when one of its sources reaches its model's threshold for
its class; the scan is ALARM when any alert alarms. Alerts below threshold
are kept as advisories for the officer's screen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nii.detect.metrics import box_iou
from nii.detect.regions import ModelIdentity, Region, dicos_category

__all__ = ["AGNOSTIC_CLASSES", "ALARM", "CLEAR", "Alert", "fuse_regions", "decide", "threshold_test"]

ALARM, CLEAR = "ALARM", "CLEAR"

# Classes that say "something is here" without saying what: they support a
# specific alert on the same spot instead of standing beside it.
AGNOSTIC_CLASSES: frozenset[str] = frozenset({"anomaly", "opaque"})


@dataclasses.dataclass(frozen=True, eq=False)
class Alert:
    """One potential threat object after fusion.

    Parameters
    ----------
    id : int
        1-based, alarms first then by score, unique within the scan.
    class_name : str
        The most specific class among the sources.
    score : float
        The score of the source whose class it has (a class-agnostic
        source's score does not make a knife more certain).
    box : tuple of float
        The box of the highest-scoring source of ``class_name`` (2D
        ``(x0, y0, x1, y1)`` pixels or 3D voxels, ends exclusive).
    sources : tuple of Region
        Every region merged here, highest score first.
    alarm : bool
        Whether a source reached its model's threshold at the operating
        point; False marks an advisory.
    """

    id: int
    class_name: str
    score: float
    box: tuple[float, ...]
    sources: tuple[Region, ...]
    alarm: bool

    @property
    def dicos_category(self) -> str:
        return dicos_category(self.class_name)

    @property
    def label(self) -> str:
        """What the annotated image prints beside the box: id, class, score,
        and ``+class`` for each other class that supports it."""
        others = dict.fromkeys(s.class_name for s in self.sources if s.class_name != self.class_name)
        return f"{self.id} {self.class_name} {self.score:.2f}" + "".join(f" +{c}" for c in others)

    @property
    def severity(self) -> str:
        """``alarm`` or ``advisory``: what the annotation colours by."""
        return "alarm" if self.alarm else "advisory"

    @property
    def lead(self) -> Region:
        """The source the alert's class, score and box come from.

        Not always the highest-scoring source: an opaque region scoring 1.0
        may support a firearm at 0.6, and the alert is the firearm's.
        """
        return next(s for s in self.sources if s.class_name == self.class_name)

    @property
    def models(self) -> tuple[ModelIdentity, ...]:
        """Each source model once, in source order."""
        return tuple(dict.fromkeys(s.model for s in self.sources))

    @property
    def mask(self) -> np.ndarray | None:
        """The mask of the first source that has one."""
        return next((s.mask for s in self.sources if s.mask is not None), None)

    @property
    def explanation(self) -> str:
        """Why, in plain words: the lead source's own, then each supporting
        model's, named, so an operator does not read a supporting model's
        words as the reason for the alert's class."""
        lead = self.lead
        said = [lead.explanation] if lead.explanation else []
        said += [f"supported by {s.model.name}: {s.explanation}" for s in self.sources
                 if s is not lead and s.explanation]
        return "; ".join(dict.fromkeys(said))

    @property
    def measurements(self) -> dict[str, float]:
        """Every source's measurements; the higher-scoring source wins a name both have."""
        merged: dict[str, float] = {}
        for source in self.sources:
            for name, value in source.measurements.items():
                merged.setdefault(name, float(value))
        return merged

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (masks go to files of their own)."""
        record: dict[str, object] = {
            "id": self.id,
            "class": self.class_name,
            "dicos_category": self.dicos_category,
            "label": self.label,
            "score": round(float(self.score), 4),
            "severity": self.severity,
            "box": [round(float(v), 1) for v in self.box],
            # Evidence: the model that found what the alert says it is.
            "model": dataclasses.asdict(self.lead.model),
            "sources": [s.to_dict() for s in self.sources],
        }
        measurements = self.measurements
        if "zeff" in measurements:
            record["zeff"] = round(measurements["zeff"], 2)
        if "mass_g" in measurements:
            record["mass_g"] = round(measurements["mass_g"], 1)
        if measurements:
            record["measurements"] = {k: round(v, 3) for k, v in measurements.items()}
        if self.explanation:
            record["explanation"] = self.explanation
        return record


def _compatible(a: str, b: str) -> bool:
    return a == b or a in AGNOSTIC_CLASSES or b in AGNOSTIC_CLASSES


def fuse_regions(regions: Sequence[Region], *, min_overlap: float = 0.3,
                 passes: Callable[[Region], bool] = lambda region: True) -> list[Alert]:
    """Merge overlapping regions of compatible classes into alerts.

    Parameters
    ----------
    regions : sequence of Region
        From any number of models, in any order.
    min_overlap : float
        Intersection over union from which two compatible regions are one
        object. Not over the smaller box: a detector's loose, low-scoring
        box round half the bag must not swallow a small anomaly in it.
    passes : callable
        Whether a region reaches its model's threshold (the operating
        point); an alert alarms when any source passes.

    Returns
    -------
    list of Alert
        Alarms first, then advisories, each highest score first; ids from 1.
    """
    groups: list[list[Region]] = []
    for region in sorted(regions, key=lambda r: -r.score):
        for group in groups:
            if all(_compatible(region.class_name, other.class_name) for other in group) and \
                    any(box_iou(region.box, other.box) >= min_overlap for other in group):
                group.append(region)
                break
        else:
            groups.append([region])
    alerts = []
    for group in groups:
        specific = [r for r in group if r.class_name not in AGNOSTIC_CLASSES] or group
        alerts.append((specific[0], group, any(passes(r) for r in group)))
    alerts.sort(key=lambda item: (not item[2], -item[0].score))  # alarms first
    return [Alert(i, lead.class_name, lead.score, lead.box, tuple(group), alarm)
            for i, (lead, group, alarm) in enumerate(alerts, start=1)]


def decide(alerts: Sequence[Alert]) -> str:
    """ALARM when any alert alarms at the operating point, else CLEAR."""
    return ALARM if any(a.alarm for a in alerts) else CLEAR


def threshold_test(thresholds: Mapping[str, Mapping[str, float]]) -> Callable[[Region], bool]:
    """``passes`` for :func:`fuse_regions` from thresholds by model name and class.

    ``thresholds[model][class]`` or ``thresholds[model]["*"]``; a model not
    named alarms on every region (rules report only what crossed their own
    thresholds).
    """
    def passes(region: Region) -> bool:
        by_class = thresholds.get(region.model.name)
        if by_class is None:
            return True
        return region.score >= by_class.get(region.class_name, by_class.get("*", 0.0))
    return passes
