"""Scenes with exact ground truth: what the simulator places in the beam.

A scene is geometry and materials only; the physics (spectra, attenuation,
detector) turns it into counts. Every object keeps its class, box, mask,
material and mass, so annotations are exact rather than drawn by hand.

Units: lengths in cm for path lengths, mm for pixel pitch, g/cm^3 for
density, g for mass. Boxes are ``(row0, col0, row1, col1)`` in pixels with
exclusive ends (NumPy slicing order); COCO's ``[x, y, w, h]`` is derived.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

__all__ = ["SceneObject", "Scene", "VolumeObject", "VolumeScene", "THREAT_CATEGORIES"]

# Threat classes the data engine makes, with the DICOS threat category each
# maps to (NEMA IIC 1 Threat Category: EXPLOSIVE, PROHIBITED_ITEM,
# CONTRABAND, ANOMALY, OTHER).
THREAT_CATEGORIES: Mapping[str, str] = {
    "handgun": "PROHIBITED_ITEM",
    "gun_part": "PROHIBITED_ITEM",
    "knife": "PROHIBITED_ITEM",
    "explosive": "EXPLOSIVE",
    "narcotics": "CONTRABAND",
    "currency": "CONTRABAND",
    "shielding": "ANOMALY",
}


@dataclasses.dataclass(frozen=True, eq=False)
class SceneObject:
    """One object in a 2D projection scene.

    Parameters
    ----------
    category : str
        What it is: a threat class from :data:`THREAT_CATEGORIES` or a
        clutter class (``"clothes"``, ``"book"``, ``"laptop"``...) or a shell
        (``"bag_shell"``, ``"parcel_shell"``, ``"container_shell"``).
    material : str
        Key of :data:`nii.simulate.physics.MATERIALS`.
    box : (row0, col0, row1, col1)
        Where ``thickness_cm`` sits in the scene, exclusive ends.
    thickness_cm : ndarray of float32, shape (row1 - row0, col1 - col0)
        Path length of the beam through the object at each pixel; 0 where
        the object is absent.
    density_g_cm3 : float, optional
        Overrides the material's nominal density (explosives span
        1.5-1.9 g/cm^3, packed powders vary).
    group : int, optional
        Parts of one composite item share a group (an IED's charge,
        detonator wires and battery); ground truth is annotated per group.
    """

    category: str
    material: str
    box: tuple[int, int, int, int]
    thickness_cm: np.ndarray
    density_g_cm3: float | None = None
    group: int | None = None

    def __post_init__(self) -> None:
        r0, c0, r1, c1 = self.box
        if self.thickness_cm.shape != (r1 - r0, c1 - c0):
            raise ValueError(f"thickness_cm shape {self.thickness_cm.shape} does not match box {self.box}")
        if self.density_g_cm3 is not None and self.density_g_cm3 <= 0:
            raise ValueError(f"density_g_cm3 must be positive, got {self.density_g_cm3}")

    @property
    def is_threat(self) -> bool:
        return self.category in THREAT_CATEGORIES

    @property
    def mask(self) -> np.ndarray:
        """Boolean footprint within :attr:`box`."""
        return self.thickness_cm > 0


@dataclasses.dataclass(eq=False)
class Scene:
    """A 2D projection scene: a bag, parcel or container on the belt.

    ``shape`` is ``(rows, cols)`` with rows along the belt (one detector line
    each) and columns across the detector array; ``pixel_mm`` is the square
    pixel pitch the scene is drawn at. ``manifest`` is the cargo declaration
    (goods, gross weight in kg, or ``{"goods": "empty"}``) and
    ``manifest_truth`` what the container really holds, for mismatch ground
    truth.
    """

    kind: str
    shape: tuple[int, int]
    pixel_mm: float
    objects: list[SceneObject] = dataclasses.field(default_factory=list)
    manifest: dict[str, Any] | None = None
    manifest_truth: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class VolumeObject:
    """One object in a CT scene: a fractional occupancy grid in a 3D box.

    ``box`` is ``(z0, y0, x0, z1, y1, x1)`` in voxels, exclusive ends, and
    ``occupancy`` (float32 in [0, 1], shape of the box) the fraction of each
    voxel the object fills.
    """

    category: str
    material: str
    box: tuple[int, int, int, int, int, int]
    occupancy: np.ndarray
    density_g_cm3: float | None = None
    group: int | None = None

    def __post_init__(self) -> None:
        z0, y0, x0, z1, y1, x1 = self.box
        if self.occupancy.shape != (z1 - z0, y1 - y0, x1 - x0):
            raise ValueError(f"occupancy shape {self.occupancy.shape} does not match box {self.box}")

    @property
    def is_threat(self) -> bool:
        return self.category in THREAT_CATEGORIES


@dataclasses.dataclass(eq=False)
class VolumeScene:
    """A CT scene: ``shape`` is ``(slices, rows, cols)`` at ``voxel_mm``."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    objects: list[VolumeObject] = dataclasses.field(default_factory=list)


