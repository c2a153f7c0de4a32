"""Archived pseudo-colour images: an estimate of attenuation and material.

Public data sets (SIXray, OPIXray, ...) and most archives hold only what the
console showed: 8-bit pseudo-colour JPEG/PNG, not detector counts. No
calibration is possible; the rendering can only be inverted through a
palette model (:mod:`nii.calibrate.palette`): brightness gives attenuation,
hue gives the material coordinate and so a Zeff class. The result is a
:class:`~nii.calibrate.calibrated.CalibratedScan` so later stages take
archives and live scans alike, but its ``profile_id`` starts with
``archive:pseudo-colour-estimate:`` so nobody mistakes it for a calibration.
"""

from __future__ import annotations

import numpy as np

from nii.calibrate.calibrated import CalibratedScan, classify_zeff
from nii.calibrate.palette import (
    SIXRAY_PALETTE,
    PseudoColourPalette,
    _opaque,
    estimate_pseudo_colour,
    zeff_from_material_coordinate,
)
from nii.scan import Scan, ScanKind

__all__ = ["ARCHIVE_PROFILE_PREFIX", "calibrate_archive"]

# profile_id of archive estimates is this prefix + the palette name.
ARCHIVE_PROFILE_PREFIX = "archive:pseudo-colour-estimate:"


def calibrate_archive(scan: Scan, *, palette: PseudoColourPalette = SIXRAY_PALETTE) -> CalibratedScan:
    """Estimate attenuation and material from a vendor pseudo-colour rendering.

    Inverts the rendering with :func:`~nii.calibrate.palette.estimate_pseudo_colour`;
    Zeff comes from the material coordinate through
    :func:`~nii.calibrate.palette.zeff_from_material_coordinate` (so it is
    confined to 6-26, the range hue resolves), the class from
    :func:`~nii.calibrate.calibrated.classify_zeff`, and opaque pixels are
    the palette's dark, nearly grey ones (their Zeff, 26, means nothing:
    their class is OPAQUE). The limits of the estimate are those of
    :func:`estimate_pseudo_colour`: A biased low beyond about 3, material
    unreliable where A < 0.2 (near white), JPEG ringing adds noise.

    Parameters
    ----------
    scan : Scan
        ``pseudo_colour`` (rows, cols, 3) uint8.
    palette : PseudoColourPalette
        Rendering model of the console that made the images.

    Returns
    -------
    CalibratedScan
        ``attenuation`` (1, rows, cols) float32, ``zeff`` float32,
        ``material_class`` uint8, ``opaque``; ``areal_density_g_cm2`` None
        (unknown without the scanner's physics); ``spacing_mm`` the scan's;
        ``profile_id`` ``"archive:pseudo-colour-estimate:" + palette.name``.

    Raises
    ------
    ValueError
        If the scan is not ``pseudo_colour``.
    """
    if scan.kind is not ScanKind.PSEUDO_COLOUR:
        raise ValueError(f"calibrate_archive needs a pseudo_colour scan, got {scan.kind.value}")
    rgb = np.asarray(scan.counts)
    attenuation, material = estimate_pseudo_colour(rgb, palette=palette)
    opaque = _opaque(rgb, palette)
    zeff = zeff_from_material_coordinate(material)
    return CalibratedScan(
        scan=scan,
        attenuation=attenuation[None],
        opaque=opaque,
        spacing_mm=scan.spacing_mm,
        profile_id=ARCHIVE_PROFILE_PREFIX + palette.name,
        zeff=zeff,
        areal_density_g_cm2=None,
        material_class=classify_zeff(zeff, opaque),
    )
