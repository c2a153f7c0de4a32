"""The annotated image: the operator's rendering with every alert drawn on it.

2D scans get the material-colour rendering (or, for archived pseudo-colour
scans, the archived image itself) with each alert's box, its mask outline
where the model gave one, and its label (``id class score``), coloured by
severity: red for an alarm, amber for an advisory below the operating
point. CT volumes get a 2x3 sheet: the axial, coronal and sagittal slices
through the top alert (the volume's centre when there is none), and the
maximum-intensity projection along each axis, with the alerts' boxes
projected onto each view.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from nii.calibrate.calibrated import CalibratedScan
from nii.detect.fuse import Alert
from nii.detect.inputs import detector_image
from nii.scan import ScanKind

__all__ = ["SEVERITY_RGB", "CT_WINDOW_HU", "annotate", "draw_alerts", "ct_sheet"]

#: Box colour by :attr:`Alert.severity`.
SEVERITY_RGB = {"alarm": (230, 25, 25), "advisory": (255, 190, 0)}
#: HU shown from black to white on CT views: air to beyond aluminium, so
#: organics, liquids and metals all keep contrast.
CT_WINDOW_HU = (-1000.0, 2500.0)
# Smallest CT view (px along its longer side) the sheet shows.
_MIN_TILE = 320


def annotate(calibrated: CalibratedScan, alerts: Sequence[Alert]) -> np.ndarray:
    """The annotated image of a calibrated scan, (rows, cols, 3) uint8 RGB."""
    if calibrated.scan.kind is ScanKind.CT_VOLUME:
        return ct_sheet(calibrated.attenuation, alerts, spacing_mm=calibrated.spacing_mm)
    return draw_alerts(detector_image(calibrated), alerts)


def _line_width(shape: tuple[int, ...]) -> int:
    return max(1, round(max(shape[:2]) / 400))


def draw_alerts(image: np.ndarray, alerts: Sequence[Alert], *, boxes: Sequence[tuple[float, ...]] | None = None,
                outline_masks: bool = True) -> np.ndarray:
    """Draw alerts on a copy of an RGB image.

    Parameters
    ----------
    image : ndarray of uint8, (rows, cols, 3)
    alerts : sequence of Alert
        Drawn lowest score first, so the top alert's label is on top.
    boxes : sequence of (x0, y0, x1, y1), optional
        Where to draw each alert, when not at its own 2D box (CT views).
    outline_masks : bool
        Outline the alert's mask too, where it has a 2D one of the image's
        size.
    """
    out = np.ascontiguousarray(image.copy())
    width = _line_width(out.shape)
    scale = 0.35 + 0.1 * width
    order = sorted(range(len(alerts)), key=lambda i: alerts[i].score)
    for i in order:
        alert = alerts[i]
        colour = SEVERITY_RGB[alert.severity]
        x0, y0, x1, y1 = boxes[i] if boxes is not None else alert.box
        p0 = (int(np.floor(x0)), int(np.floor(y0)))
        p1 = (max(int(np.ceil(x1)) - 1, p0[0]), max(int(np.ceil(y1)) - 1, p0[1]))
        cv2.rectangle(out, p0, p1, colour, width)
        mask = alert.mask
        if outline_masks and boxes is None and mask is not None and mask.shape == out.shape[:2]:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, max(1, width // 2))
        _label(out, alert.label, p0, colour, scale, width)
    return out


def _label(image: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int],
           scale: float, width: int) -> None:
    """The label on a filled tab above the box (inside it at the top edge)."""
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, width // 2))
    x = min(max(corner[0], 0), max(image.shape[1] - w - 2, 0))
    y = corner[1] - h - base - 2 if corner[1] - h - base - 2 >= 0 else corner[1] + 1
    cv2.rectangle(image, (x, y), (x + w + 2, y + h + base + 2), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 400 else (255, 255, 255)
    cv2.putText(image, text, (x + 1, y + h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, max(1, width // 2),
                cv2.LINE_AA)


def hu_grey(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW_HU) -> np.ndarray:
    """Hounsfield units to 8-bit grey RGB over ``window`` (lo black, hi white)."""
    lo, hi = window
    level = np.clip((hu.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return np.repeat(level[..., None], 3, axis=-1)


def ct_sheet(hu: np.ndarray, alerts: Sequence[Alert], *,
             spacing_mm: tuple[float, ...] | None = None) -> np.ndarray:
    """Orthogonal slices and MIPs of a CT volume with the alerts' boxes.

    Parameters
    ----------
    hu : ndarray, (slices, rows, cols)
        Hounsfield units.
    alerts : sequence of Alert
        3D boxes ``(x0, y0, z0, x1, y1, z1)`` in voxels.
    spacing_mm : (slice, row, col), optional
        Voxel spacing; views across slices are stretched to square mm.

    Returns
    -------
    ndarray of uint8
        Top row: axial, coronal and sagittal slices through the top alert's
        centre; bottom row: the maximum-intensity projections along the
        same axes.
    """
    if hu.ndim != 3:
        raise ValueError(f"a CT volume is (slices, rows, cols); got shape {hu.shape}")
    depth, rows, cols = hu.shape
    if alerts:
        x0, y0, z0, x1, y1, z1 = alerts[0].box
        centre = (int((z0 + z1) / 2), int((y0 + y1) / 2), int((x0 + x1) / 2))
    else:
        centre = (depth // 2, rows // 2, cols // 2)
    z, y, x = (min(max(c, 0), n - 1) for c, n in zip(centre, hu.shape))
    stretch = (spacing_mm[0] / spacing_mm[1]) if spacing_mm and len(spacing_mm) == 3 else 1.0
    # Each view: (image, function mapping a 3D box to the view's 2D box, whether the view cuts at `at`).
    views = [
        (hu[z], lambda b: (b[0], b[1], b[3], b[4]), (2, z)),  # axial: x across, y down
        (hu[:, y, :], lambda b: (b[0], b[2], b[3], b[5]), (1, y)),  # coronal: x across, z down
        (hu[:, :, x], lambda b: (b[1], b[2], b[4], b[5]), (0, x)),  # sagittal: y across, z down
    ]
    mips = [hu.max(axis=0), hu.max(axis=1), hu.max(axis=2)]
    tiles = []
    for row, images in enumerate(([v[0] for v in views], mips)):
        for k, ((_, project, (axis, at)), data) in enumerate(zip(views, images)):
            # A slice shows only the alerts it cuts; a projection shows all.
            shown = [a for a in alerts if row == 1 or _cuts(a.box, axis, at)]
            # Scaled before drawing, so labels stay legible on small volumes:
            # at least _MIN_TILE px across, and square mm down the slices.
            zoom = max(1.0, _MIN_TILE / max(data.shape))
            down = zoom * (stretch if k > 0 else 1.0)  # coronal and sagittal run down the slices
            image = cv2.resize(hu_grey(data), (round(data.shape[1] * zoom), max(1, round(data.shape[0] * down))),
                               interpolation=cv2.INTER_NEAREST)
            boxes = [_scaled(project(a.box), zoom, down) for a in shown]
            tile = draw_alerts(image, shown, boxes=boxes, outline_masks=False)
            tiles.append(tile)
    return _sheet(tiles, columns=3)


def _scaled(box: tuple[float, ...], across: float, down: float) -> tuple[float, ...]:
    x0, y0, x1, y1 = box
    return (x0 * across, y0 * down, x1 * across, y1 * down)


def _cuts(box: tuple[float, ...], axis: int, at: int) -> bool:
    """Whether a plane at voxel ``at`` along ``axis`` (0 = x, 1 = y, 2 = z) crosses the 3D box."""
    return box[axis] <= at < box[axis + 3]


def _sheet(tiles: Sequence[np.ndarray], *, columns: int, gap: int = 4) -> np.ndarray:
    """Tiles on a dark sheet, left to right then top to bottom."""
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    heights = [max(t.shape[0] for t in r) for r in rows]
    widths = [max(r[c].shape[1] for r in rows if c < len(r)) for c in range(columns)]
    sheet = np.full((sum(heights) + gap * (len(rows) + 1), sum(widths) + gap * (columns + 1), 3), 32, np.uint8)
    top = gap
    for r, height in zip(rows, heights):
        left = gap
        for c, tile in enumerate(r):
            sheet[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
            left += widths[c] + gap
        top += height + gap
    return sheet
