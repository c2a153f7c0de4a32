"""What calibration hands on: attenuation, material and the profile that made them."""

from __future__ import annotations

import dataclasses
import functools
from enum import IntEnum

import cv2
import numpy as np

from nii.scan import Scan

__all__ = ["MaterialClass", "CalibratedScan", "UNCALIBRATED", "classify_zeff", "ORGANIC_MAX_ZEFF", "MIXED_MAX_ZEFF"]

# profile_id of scans normalised from their own air region, with no profile.
UNCALIBRATED = "uncalibrated:self-normalised"


class MaterialClass(IntEnum):
    """Material classes operators see as colours (stored as uint8 codes)."""

    ORGANIC = 0  # Zeff below ~10: orange
    MIXED = 1  # Zeff 10-17: green
    METAL = 2  # inorganic/metal, Zeff above 17: blue
    OPAQUE = 3  # not penetrated: black


# Zeff boundaries between the classes, as consoles draw them.
ORGANIC_MAX_ZEFF = 10.0
MIXED_MAX_ZEFF = 17.0


def classify_zeff(zeff: np.ndarray, opaque: np.ndarray) -> np.ndarray:
    """Material class codes (uint8) from Zeff, OPAQUE where not penetrated."""
    # Codes are ordered by Zeff: count the class boundaries each pixel is past.
    classes = (zeff >= ORGANIC_MAX_ZEFF).view(np.uint8)
    classes += zeff > MIXED_MAX_ZEFF
    # OPAQUE is 0b11, so OR-ing it over codes 0-2 sets it; OpenCV's masked OR
    # takes 0.1 ms on a bag where np.putmask took over 1 ms.
    opaque = np.ascontiguousarray(opaque, dtype=bool)
    if classes.ndim == 2 and classes.flags.c_contiguous and opaque.shape == classes.shape:
        cv2.bitwise_or(classes, int(MaterialClass.OPAQUE), dst=classes, mask=opaque.view(np.uint8))
    else:
        np.putmask(classes, opaque, np.uint8(MaterialClass.OPAQUE))
    return classes


@dataclasses.dataclass(frozen=True, eq=False)
class CalibratedScan:
    """A scan after calibration; the raw :class:`~nii.scan.Scan` rides along.

    Parameters
    ----------
    scan : Scan
        The scan as acquired (raw counts untouched).
    attenuation : ndarray of float32
        Projection scans: ``-ln(I_n)`` per energy channel, shape
        ``(C, rows, cols)`` (C = 1 or 2, low first), on square pixels. CT:
        Hounsfield units, shape ``(slices, rows, cols)``. Pseudo-colour
        archives: the estimate from the rendering, shape ``(1, rows, cols)``.
    opaque : ndarray of bool
        Where too few photons came through to say anything (2D) — the
        operator must be told.
    spacing_mm : tuple of float
        Pixel (or voxel) spacing of the arrays here, after aspect correction.
    profile_id : str
        ``scanner/version/sha256-prefix`` of the calibration profile, or
        :data:`UNCALIBRATED`.
    zeff, areal_density_g_cm2 : ndarray of float32, optional
        Dual-energy (or archive-estimated) effective atomic number and areal
        density per pixel.
    material_class : ndarray of uint8, optional
        :class:`MaterialClass` codes per pixel.
    """

    scan: Scan
    attenuation: np.ndarray
    opaque: np.ndarray
    spacing_mm: tuple[float, ...] | None
    profile_id: str
    zeff: np.ndarray | None = None
    areal_density_g_cm2: np.ndarray | None = None
    material_class: np.ndarray | None = None

    @property
    def calibrated(self) -> bool:
        """False for scans normalised from their own air region, and for
        estimates from archived renderings (``archive:...`` ids)."""
        return self.profile_id != UNCALIBRATED and not self.profile_id.startswith("archive:")

    @functools.cached_property
    def colour_rendering(self) -> np.ndarray:
        """The operator's material-colour rendering (``render(self)``), read-only.

        Made on first use and kept: the contraband detector, the anomaly
        model and the annotated image all start from it, and a bag-sized
        rendering costs ~5 ms. The scan is immutable, so it never goes stale.
        """
        from nii.calibrate.render import render  # render imports this module

        image = render(self, tool="colour")
        image.flags.writeable = False
        return image

    @property
    def high(self) -> np.ndarray:
        """High-energy (or only) attenuation channel, (rows, cols)."""
        return self.attenuation[-1]
