"""What every detector returns: regions, each naming the model that made it.

A :class:`Region` is the detection stage's potential threat object: a class,
a score, a box in pixels (2D) or voxels (3D), an optional mask, and the
:class:`ModelIdentity` (name, version, sha256) of the model or rule that
found it. Courts and certification authorities ask which model made an
alert; the identity travels with the region so nothing downstream can lose
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from nii.calibrate.calibrated import CalibratedScan

__all__ = [
    "THREAT_CLASSES",
    "CLASS_ALIASES",
    "ModelIdentity",
    "Region",
    "Detector",
    "canonical_class",
    "check_score",
    "dicos_category",
]

# The contraband detector's classes and the DICOS threat category of each
# (NEMA IIC 1 Threat Category: EXPLOSIVE, PROHIBITED_ITEM, CONTRABAND,
# ANOMALY, OTHER). Order matters: it is the label index order of the
# shipped models (label 0 is background in torchvision detectors).
THREAT_CLASSES: Mapping[str, str] = {
    "firearm": "PROHIBITED_ITEM",
    "knife": "PROHIBITED_ITEM",
    "wrench": "OTHER",
    "explosive": "EXPLOSIVE",
    "narcotics": "CONTRABAND",
}

# Names data sets and the data engine use, to the classes above. SIXray says
# Gun/Knife/Wrench; the simulator handgun/gun_part; GDXray razor_blade.
CLASS_ALIASES: Mapping[str, str] = {
    "gun": "firearm",
    "handgun": "firearm",
    "pistol": "firearm",
    "gun_part": "firearm",
    "firearm": "firearm",
    "knife": "knife",
    "blade": "knife",
    "razor_blade": "knife",
    "wrench": "wrench",
    "explosive": "explosive",
    "ied": "explosive",
    "narcotics": "narcotics",
    "drugs": "narcotics",
}


def canonical_class(name: str) -> str | None:
    """The detector class for a data set's label, or None if it has none.

    >>> canonical_class("Gun"), canonical_class("handgun"), canonical_class("laptop")
    ('firearm', 'firearm', None)
    """
    return CLASS_ALIASES.get(name.strip().lower().replace(" ", "_").replace("-", "_"))


def dicos_category(class_name: str) -> str:
    """DICOS threat category of a region class (``ANOMALY`` for unknown ones)."""
    return THREAT_CLASSES.get(class_name, "ANOMALY")


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model made a region: name, version and the artifact's sha256."""

    name: str
    version: str
    sha256: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} (sha256 {self.sha256[:12]})"


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """One potential threat object found by one model.

    Parameters
    ----------
    class_name : str
        A key of :data:`THREAT_CLASSES`, or a rule's or anomaly model's own
        class (``"anomaly"``, ``"opaque"``...).
    score : float
        Confidence in [0, 1].
    box : tuple of float
        2D ``(x0, y0, x1, y1)`` in pixels of the calibrated scan, or 3D
        ``(x0, y0, z0, x1, y1, z1)`` in voxels; ends exclusive.
    model : ModelIdentity
    mask : ndarray of bool, optional
        Same shape as the scan's image (or volume), True inside.
    explanation : str
        Why it fired, in plain words, for rules that can say so ("organic
        mass 420 g, Zeff 7.2 ..."); empty for learned models.
    measurements : mapping of str to float
        What was measured on the region: ``mass_g``, ``zeff``,
        ``areal_density_g_cm2``, ``area_cm2``, ``density_g_cm3``...
    """

    class_name: str
    score: float
    box: tuple[float, ...]
    model: ModelIdentity
    mask: np.ndarray | None = None
    explanation: str = ""
    measurements: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.box) not in (4, 6):
            raise ValueError(f"box must have 4 (2D) or 6 (3D) values, got {len(self.box)}")
        half = len(self.box) // 2
        if any(self.box[i + half] < self.box[i] for i in range(half)):
            raise ValueError(f"box ends must not precede its starts: {self.box}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must lie in [0, 1], got {self.score}")

    @property
    def dicos_category(self) -> str:
        return dicos_category(self.class_name)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the mask is left out; it goes to files of its own)."""
        record: dict[str, object] = {
            "class": self.class_name,
            "dicos_category": self.dicos_category,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.box],
            "model": dataclasses.asdict(self.model),
        }
        if self.explanation:
            record["explanation"] = self.explanation
        if self.measurements:
            record["measurements"] = {k: round(float(v), 3) for k, v in self.measurements.items()}
        return record


@runtime_checkable
class Detector(Protocol):
    """What the pipeline runs: learned models and physics rules alike."""

    identity: ModelIdentity
    classes: Sequence[str]

    def applies_to(self, calibrated: CalibratedScan) -> bool:
        """Whether this detector can judge the scan (a CT rule cannot judge a radiograph)."""
        ...

    def detect(self, calibrated: CalibratedScan) -> list[Region]:
        """Regions found in one calibrated scan, highest score first."""
        ...


def check_score(name: str, value: float) -> float:
    """``value`` as a float if it is a score in [0, 1]; ValueError naming ``name`` otherwise.

    A NaN or out-of-range score setting (``min_score``, a threshold) would
    silently drop every region instead of failing.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
