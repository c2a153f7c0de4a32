"""What a 2D detector sees: one 8-bit RGB image per calibrated scan.

Real training data (SIXray) exists only as consoles' pseudo-colour
renderings, and dual-energy scans carry the same information as calibrated
attenuation and Zeff. Rendering the calibrated channels with the palette
fitted on SIXray (:data:`~nii.calibrate.palette.SIXRAY_PALETTE`: hue from
Zeff, brightness from attenuation) puts simulated dual-energy scans and real
archive images in one input space, so one model learns from both. Archive
images go in as they are: re-rendering their estimate would only add error.
"""

from __future__ import annotations

import numpy as np

from nii.calibrate.calibrated import CalibratedScan
from nii.scan import ScanKind

__all__ = ["detector_image"]


def detector_image(calibrated: CalibratedScan) -> np.ndarray:
    """The (rows, cols, 3) uint8 RGB image a 2D detector takes.

    Pixel (row, col) of the result is pixel (row, col) of ``calibrated``'s
    arrays, so regions found on it are in the calibrated scan's pixels.
    It is read-only: every model of a pipeline shares it (see
    :attr:`CalibratedScan.colour_rendering`).

    Raises
    ------
    ValueError
        For CT volumes (the 2D detectors take projections).
    """
    scan = calibrated.scan
    if scan.kind is ScanKind.CT_VOLUME:
        raise ValueError("the contraband detector takes 2D projection scans, not CT volumes")
    if scan.kind is ScanKind.PSEUDO_COLOUR and scan.counts.shape[:2] == calibrated.opaque.shape:
        return np.ascontiguousarray(scan.counts)
    return calibrated.colour_rendering
