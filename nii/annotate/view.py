"""What the operator's viewer shows: one rendering of a calibrated scan, without boxes.

The viewer draws alert boxes itself (so they can be toggled); the image it
asks for is :func:`operator_view`: a projection scan through one of the
calibration stage's rendering tools, or a CT volume as one slice or a
maximum-intensity projection in a Hounsfield window.
"""

from __future__ import annotations

import numpy as np

from nii.annotate.image import CT_WINDOW_HU, hu_grey
from nii.calibrate.calibrated import CalibratedScan
from nii.calibrate.render import render
from nii.scan import ScanKind

__all__ = ["CT_AXES", "operator_view"]

#: CT views by axis of the (slices, rows, cols) volume: what is cut across.
CT_AXES = ("axial", "coronal", "sagittal")


def operator_view(calibrated: CalibratedScan, *, tool: str = "colour", window: tuple[float, float] | None = None,
                  axis: str = "axial", index: int | None = None) -> np.ndarray:
    """Render ``calibrated`` for the viewer, (rows, cols, 3) uint8 RGB.

    Parameters
    ----------
    calibrated : CalibratedScan
    tool : str
        Projection scans: one of :data:`nii.calibrate.render.TOOLS`. CT:
        ``"colour"`` or ``"grey"`` (both grey in HU), ``"inverse"``, or
        ``"window"``.
    window : (lo, hi), optional
        For ``tool="window"``: attenuation (projection) or HU (CT).
    axis : str
        CT only: one of :data:`CT_AXES`.
    index : int, optional
        CT only: the slice along ``axis``; None for the maximum-intensity
        projection along it.

    Raises
    ------
    ValueError
        Unknown tool or axis, a window where none applies, or a slice
        outside the volume.
    """
    if calibrated.scan.kind is not ScanKind.CT_VOLUME:
        if axis != "axial" or index is not None:
            raise ValueError("slices and projections apply to CT volumes only")
        return render(calibrated, tool=tool, window=window)
    if tool not in ("colour", "grey", "inverse", "window"):
        raise ValueError(f"CT views are colour, grey, inverse or window; got {tool!r}")
    if axis not in CT_AXES:
        raise ValueError(f"axis must be one of {', '.join(CT_AXES)}; got {axis!r}")
    if (tool == "window") != (window is not None):
        raise ValueError("a window (lo, hi) in HU goes with tool='window' and only with it")
    hu = calibrated.attenuation
    along = CT_AXES.index(axis)
    if index is None:
        plane = hu.max(axis=along)
    else:
        if not 0 <= index < hu.shape[along]:
            raise ValueError(f"{axis} slice {index} is outside 0..{hu.shape[along] - 1}")
        plane = np.take(hu, index, axis=along)
    lo, hi = window if window is not None else CT_WINDOW_HU
    if not hi > lo:
        raise ValueError(f"the window needs lo < hi; got ({lo}, {hi})")
    grey = hu_grey(plane, (lo, hi))
    return 255 - grey if tool == "inverse" else grey
