"""Rasterisers: where an object sits in a scene and how thick it is there.

Every 2D rasteriser returns a ``(box, thickness_cm)`` pair ready for
:class:`nii.simulate.scene.SceneObject`, or ``None`` when nothing of the
object lands inside the scene. ``box`` is ``(row0, col0, row1, col1)`` with
exclusive ends, clipped to the scene and at most a pixel or two wider than
the object's footprint; ``thickness_cm`` (float32, >= 0, finite, never all
zero) is the path length of a
beam through the object at each pixel of the box, averaged over the pixel
(edges are anti-aliased, so a plate's summed thickness times the pixel area
is its volume).

Conventions
-----------
* In-plane geometry is in **pixels**: pixel ``(i, j)`` has its centre at
  ``(row, col) = (i, j)`` and covers ``[i - 0.5, i + 0.5)``.
* Out-of-plane thicknesses that are given (plates, polygons, slabs) are in
  **cm**. Thicknesses that follow from in-plane geometry (a cylinder's chord,
  a cable's cross-section) are converted from pixels with ``pixel_mm``.
* ``angle`` (radians) turns an object's own frame: its ``u`` axis (length)
  points along ``(row, col) = (sin angle, cos angle)`` and its ``v`` axis
  (width) along ``(cos angle, -sin angle)``.
  :func:`local_coords` gives ``(u, v)`` for every pixel of a box.

The 3D rasterisers (:func:`box_volume`, :func:`cylinder_volume`,
:func:`ellipsoid_volume`) work in **mm** and return ``(box_zyx, occupancy)``
for :class:`nii.simulate.scene.VolumeObject`: occupancy is the fraction of
each voxel the object fills. Voxel ``k`` along an axis covers
``[k, k + 1) * voxel_mm``; axis 0 is vertical and rotation is about it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import cv2
import numpy as np

__all__ = [
    "Box",
    "Raster",
    "Box3",
    "Raster3",
    "Profile",
    "local_coords",
    "to_image",
    "rotated_half_extent",
    "rounded_rect_contour",
    "plate",
    "polygon",
    "hollow_outline",
    "cylinder",
    "filled_cylinder",
    "disc",
    "ellipsoid",
    "tube",
    "textured_slab",
    "box_volume",
    "cylinder_volume",
    "ellipsoid_volume",
]

Box = tuple[int, int, int, int]
Raster = tuple[Box, np.ndarray]
Box3 = tuple[int, int, int, int, int, int]
Raster3 = tuple[Box3, np.ndarray]
Point = tuple[float, float]
#: ``profile(u, v) -> factor``: multiplies a thickness in the object's frame.
Profile = Callable[[np.ndarray, np.ndarray], np.ndarray]

_F32 = np.float32
# cv2 drawing takes fixed-point vertices; 4 fractional bits = 1/16 pixel.
_SHIFT = 4


# --------------------------------------------------------------------------
# Boxes and frames
# --------------------------------------------------------------------------


def rotated_half_extent(half_u: float, half_v: float, angle: float) -> tuple[float, float]:
    """Half height and half width (pixels) of a rotated ``2 half_u x 2 half_v`` rectangle."""
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    return half_u * s + half_v * c, half_u * c + half_v * s


def _bounds(center: Point, half_r: float, half_c: float) -> Box:
    """Unclipped box around ``center`` with one pixel of margin for anti-aliasing."""
    rc, cc = center
    return (
        math.floor(rc - half_r - 0.5) - 1,
        math.floor(cc - half_c - 0.5) - 1,
        math.ceil(rc + half_r + 0.5) + 2,
        math.ceil(cc + half_c + 0.5) + 2,
    )


def _clip(box: Box, shape: Sequence[int]) -> Box | None:
    r0, c0, r1, c1 = box
    r0, c0 = max(r0, 0), max(c0, 0)
    r1, c1 = min(r1, int(shape[0])), min(c1, int(shape[1]))
    return (r0, c0, r1, c1) if r1 > r0 and c1 > c0 else None


def _crop(full: Box, box: Box, values: np.ndarray) -> np.ndarray:
    """The part of ``values`` (laid out on ``full``) that lies in ``box``."""
    return values[box[0] - full[0] : box[2] - full[0], box[1] - full[1] : box[3] - full[1]]


def _finish(box: Box, thickness: np.ndarray, *, exact: bool = True) -> Raster | None:
    """The result of a rasteriser: ``None`` when empty, else trimmed to the footprint.

    Trimming costs two passes over the box and a copy. Boxes are drawn
    one pixel larger than the shape, so a caller that knows the shape lies
    whole inside (not clipped, not degenerate) passes ``exact=False`` for a
    box that may keep that margin, which the mask ignores anyway.
    """
    if not exact and thickness.size > 4096:
        return box, thickness
    # OpenCV's bounding rectangle of the non-zero pixels: one call in C.
    c, a, w, h = cv2.boundingRect((thickness > 0).view(np.uint8))
    if w == 0 or h == 0:
        return None
    if (h, w) != thickness.shape:
        thickness = np.ascontiguousarray(thickness[a : a + h, c : c + w])
    return (box[0] + a, box[1] + c, box[0] + a + h, box[1] + c + w), thickness


def _clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``np.clip`` in place without its Python-level overhead (it adds up here)."""
    np.maximum(x, _F32(lo), out=x)
    return np.minimum(x, _F32(hi), out=x)


def _placed(center: Point, half_r: float, half_c: float, shape: Sequence[int]) -> tuple[Box | None, bool]:
    """Clipped box around a shape and whether the shape lies whole inside it."""
    full = _bounds(center, half_r, half_c)
    box = _clip(full, shape)
    return box, box == full


def local_coords(box: Box, center: Point, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates ``(u, v)`` (pixels, float32) of every pixel in ``box``."""
    r0, c0, r1, c1 = box
    dr = (np.arange(r0, r1, dtype=_F32) - _F32(center[0]))[:, None]
    dc = (np.arange(c0, c1, dtype=_F32) - _F32(center[1]))[None, :]
    cos, sin = _F32(math.cos(angle)), _F32(math.sin(angle))
    return dc * cos + dr * sin, dr * cos - dc * sin


def to_image(points_uv: np.ndarray, center: Point, angle: float) -> np.ndarray:
    """Object-frame points ``(u, v)`` to image points ``(row, col)``."""
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = points_uv[:, 0], points_uv[:, 1]
    out = np.empty((len(points_uv), 2))
    out[:, 0] = u * sin + v * cos + center[0]
    out[:, 1] = u * cos - v * sin + center[1]
    return out


def _rect_sd(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float, radius: float) -> np.ndarray:
    """Signed distance (pixels, positive inside) to a rounded rectangle.

    Overwrites ``u`` and ``v`` (scratch arrays of the caller, full grids or
    a row and a column that broadcast): on box-sized grids a fresh array per
    step costs more than the arithmetic.
    """
    au, av = np.abs(u, out=u), np.abs(v, out=v)
    if radius <= 0:
        np.subtract(_F32(half_u), au, out=au)
        np.subtract(_F32(half_v), av, out=av)
        return np.minimum(au, av)
    radius = min(radius, half_u, half_v)
    qu = np.subtract(au, _F32(half_u - radius), out=au)
    qv = np.subtract(av, _F32(half_v - radius), out=av)
    inside = np.maximum(qu, qv)
    np.minimum(inside, 0, out=inside)
    np.maximum(qu, 0, out=qu)
    np.maximum(qv, 0, out=qv)
    qu *= qu
    qv *= qv
    out = np.add(qu, qv)
    np.sqrt(out, out=out)
    np.subtract(_F32(radius), out, out=out)
    out -= inside
    return out


def _to_coverage(sd: np.ndarray, min_half: float) -> np.ndarray:
    """Pixel coverage from a signed distance in pixels, in place.

    The upper clip ``2 * min_half`` keeps sub-pixel-thin shapes (a sheet
    seen edge-on) from counting a whole pixel: their area stays right.
    """
    sd += _F32(0.5)
    return _clamp(sd, 0.0, min(1.0, 2.0 * min_half))


# --------------------------------------------------------------------------
# 2D rasterisers
# --------------------------------------------------------------------------


def rounded_rect_contour(
    length: float, width: float, radius: float, *, points_per_corner: int = 6, points_per_side: int = 1
) -> np.ndarray:
    """Vertices ``(u, v)`` (pixels) of a centred rounded rectangle.

    Contours made with the same ``points_per_corner`` and
    ``points_per_side`` have corresponding vertices, so an inset copy gives
    the inner edge of a band. ``points_per_side`` splits the
    straight sides, which keeps every piece of a long band small.
    """
    hu, hv = length / 2.0, width / 2.0
    radius = min(max(radius, 0.0), hu, hv)
    n = max(points_per_corner, 1)
    arc = np.linspace(0.0, math.pi / 2, n) if n > 1 else np.zeros(1)
    angles = (np.arange(4)[:, None] * (math.pi / 2) + arc[None, :])  # corner k sweeps from k * 90 deg
    centres = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]) * (hu - radius, hv - radius)
    arcs = np.empty((4, n, 2))
    arcs[..., 0] = centres[:, :1] + radius * np.cos(angles)
    arcs[..., 1] = centres[:, 1:] + radius * np.sin(angles)
    if points_per_side > 1:
        frac = (np.arange(1, points_per_side) / points_per_side)[None, :, None]
        ends, starts = arcs[:, -1:, :], np.roll(arcs[:, :1, :], -1, axis=0)
        arcs = np.concatenate([arcs, ends + frac * (starts - ends)], axis=1)
    return arcs.reshape(-1, 2)


def plate(
    center: Point,
    *,
    length: float,
    width: float,
    thickness_cm: float,
    shape: Sequence[int],
    angle: float = 0.0,
    corner_radius: float = 0.0,
    bevel: float = 0.0,
    profile: Profile | None = None,
) -> Raster | None:
    """A rotated (rounded) rectangular plate of constant thickness.

    Parameters
    ----------
    center : (row, col)
        Centre in pixels.
    length, width : float
        Extent along ``u`` and ``v`` in pixels.
    thickness_cm : float
        Thickness along the beam in cm.
    shape : (rows, cols)
        Scene shape to clip to.
    angle : float
        Rotation in radians.
    corner_radius : float
        Corner radius in pixels.
    bevel : float
        Width (pixels) over which the thickness rises from 0 at the edge, as
        a rounded pillow (wrapped bricks, soft packs); 0 for a square edge.
    profile : callable, optional
        ``profile(u, v)`` multiplies the thickness (tapers, corrugation).
    """
    hu, hv = length / 2.0, width / 2.0
    if hu <= 0 or hv <= 0:
        return None
    if bevel <= 1.0 and profile is None and min(hu, hv) >= 1.0 and hu * hv > 10000.0:
        # A large plain plate is a polygon: OpenCV fills it in C, several
        # times faster than a distance field (and as exact in area, see
        # polygon); for small ones the distance field makes fewer calls.
        corners = 6 if corner_radius >= 1.0 else 1
        radius = corner_radius if corner_radius >= 1.0 else 0.0
        contour = rounded_rect_contour(length, width, radius, points_per_corner=corners)
        return polygon([contour], center=center, angle=angle, thickness_cm=thickness_cm, shape=shape)
    box, whole = _placed(center, *rotated_half_extent(hu, hv, angle), shape)
    if box is None:
        return None
    u, v = local_coords(box, center, angle)
    factor = profile(u, v) if profile is not None else None  # before u, v are overwritten
    sd = _rect_sd(u, v, hu, hv, corner_radius)
    if bevel > 1.0:
        sd += _F32(0.5)
        sd *= _F32(1.0 / bevel)
        _clamp(sd, 0.0, 1.0)
        np.sqrt(sd, out=sd)
    else:
        _to_coverage(sd, min(hu, hv))
    sd *= _F32(thickness_cm)
    if factor is not None:
        sd *= factor
    return _finish(box, sd, exact=not whole or profile is not None)


def _inset(points: np.ndarray, distance: float) -> np.ndarray:
    """Move every vertex ``distance`` towards the inside of its contour (mitred).

    A negative distance moves outwards. Mitres are capped at about three
    times the distance so that a sharp tip (a knife point) does not shoot
    across. Points are handled as complex numbers: fewer NumPy calls on
    these tiny arrays, whose cost is all call overhead.
    """
    z = points[:, 0] + 1j * points[:, 1]
    nxt = np.concatenate((z[1:], z[:1]))
    edge = nxt - z
    orientation = 1.0 if float(np.dot(z.conjugate(), nxt).imag) >= 0 else -1.0
    # Left normals point inside a positively oriented contour; a repeated
    # vertex gives a zero normal and the mitre falls back to its neighbour's.
    n_out = 1j * orientation * edge / np.maximum(np.abs(edge), 1e-12)
    n_in = np.concatenate((n_out[-1:], n_out[:-1]))
    shift = (n_in + n_out) * (distance / np.maximum(1.0 + (n_in.conjugate() * n_out).real, 1.0 / 8.0))
    z += shift
    out = np.empty(points.shape)
    out[:, 0], out[:, 1] = z.real, z.imag
    return out


def _image_box(pts: np.ndarray, margin: float, shape: Sequence[int]) -> Box | None:
    lo, hi = pts.min(axis=0) - margin, pts.max(axis=0) + margin
    return _clip((math.floor(lo[0]) - 1, math.floor(lo[1]) - 1, math.ceil(hi[0]) + 2, math.ceil(hi[1]) + 2), shape)


def _cv_points(pts: np.ndarray, origin: Sequence[float]) -> np.ndarray:
    """Image points ``(row, col)`` to cv2 fixed-point ``(x, y)`` relative to ``origin``."""
    return np.round((pts - np.asarray(origin, dtype=np.float64))[:, ::-1] * (1 << _SHIFT)).astype(np.int32)


def hollow_outline(
    contour: np.ndarray,
    *,
    center: Point,
    angle: float,
    skin_cm: float,
    wall_cm: float,
    wall_width: float,
    shape: Sequence[int],
) -> Raster | None:
    """A hollow box or bag seen from above: skin over the footprint, walls edge-on.

    The beam crosses the top and bottom skins everywhere inside the outline
    (``skin_cm`` is their summed thickness) and runs along the side walls at
    the outline, where the path is the wall height. One object, drawn by
    OpenCV straight into a float canvas: the shell of a bag is the largest
    object in a scene.

    Parameters
    ----------
    contour : (n, 2) array
        Closed outline ``(u, v)`` in pixels in the object's frame.
    center, angle, shape
        As in :func:`polygon`.
    skin_cm : float
        Top plus bottom skin thickness along the beam, cm.
    wall_cm : float
        Path along a side wall (its height), cm.
    wall_width : float
        Side wall thickness in pixels (may be below one: the drawn band is
        at least a pixel wide and its thickness scaled to keep the mass).
    """
    pts = to_image(np.asarray(contour, dtype=np.float64), center, angle)
    box = _image_box(pts, 1.0, shape)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    canvas = np.zeros((r1 - r0, c1 - c0), _F32)
    # LINE_8 fills every pixel an edge touches: inset half a pixel first.
    cv2.fillPoly(canvas, [_cv_points(_inset(pts, 0.5), (r0, c0))], float(skin_cm), cv2.LINE_8, _SHIFT)
    drawn = max(1, round(wall_width))
    wall = skin_cm + wall_cm * wall_width / drawn
    cv2.polylines(canvas, [_cv_points(pts, (r0, c0))], True, float(wall), drawn, cv2.LINE_8, _SHIFT)
    if cv2.countNonZero(canvas) == 0:
        return None
    return _finish(box, canvas, exact=False)


def polygon(
    contours: Sequence[np.ndarray],
    *,
    center: Point,
    angle: float,
    thickness_cm: float,
    shape: Sequence[int],
    holes: Sequence[np.ndarray] = (),
    supersample: int = 2,
    profile: Profile | None = None,
) -> Raster | None:
    """Rotated polygons (with holes) of constant thickness, filled by OpenCV.

    Parameters
    ----------
    contours : sequence of (n, 2) arrays
        Outlines, vertices ``(u, v)`` in pixels in the object's frame; they
        must not overlap one another (even-odd fill).
    holes : sequence of (n, 2) arrays
        Holes cut out of the outlines, same frame.
    center, angle, shape, profile
        As in :func:`plate`.
    thickness_cm : float
        Thickness along the beam in cm.
    supersample : int
        Sub-pixel factor for anti-aliased edges (1 for very large outlines,
        where edges do not matter and speed does). ``cv2.fillPoly`` takes in
        every pixel an edge touches, which inflates a shape by half a
        (fine) pixel all round; the contours are inset by that much first,
        so areas, and masses, come out right.
    """
    pts = [to_image(np.asarray(cnt, dtype=np.float64), center, angle) for cnt in (*contours, *holes)]
    box = _image_box(np.concatenate(pts), 0.0, shape)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    h, w, s = r1 - r0, c1 - c0, max(int(supersample), 1)
    canvas = np.zeros((h * s, w * s), np.uint8)
    origin = np.array([r0, c0], dtype=np.float64)
    fine = []
    for k, p in enumerate(pts):
        # A fine pixel k covers [k, k+1)/s - 0.5 in coarse pixels, so a coarse
        # coordinate x is (x + 0.5) * s - 0.5 in fine ones; cv2 wants (col, row).
        inward = 0.5 if k < len(contours) else -0.5
        fine.append(_cv_points(_inset(((p - origin) + 0.5) * s - 0.5, inward), (0.0, 0.0)))
    cv2.fillPoly(canvas, fine, 255, cv2.LINE_8, _SHIFT)
    if s > 1:
        canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
    if cv2.countNonZero(canvas) == 0:
        return None
    thickness = canvas.astype(_F32)
    thickness *= _F32(thickness_cm / 255.0)
    if profile is not None:
        thickness *= profile(*local_coords(box, center, angle))
    return _finish(box, thickness, exact=False)


def _half_chords(d2: np.ndarray, radius: float) -> np.ndarray:
    """``sqrt(r^2 - d^2)`` (0 outside), in a new array."""
    s = np.subtract(_F32(radius * radius), d2)
    np.maximum(s, 0, out=s)
    return np.sqrt(s, out=s)


def _below(s: np.ndarray, level: float, radius: float) -> np.ndarray:
    """Path through a circle slice of half-chord ``s`` below the fill line, in place.

    The circle lies across the beam; the filled part is everything below
    ``-radius + 2 * radius * level`` along the beam, the way a liquid settles
    in a bottle lying flat.
    """
    if level >= 1.0:
        s += s
        return s
    top = np.minimum(s, _F32(-radius + 2.0 * radius * level))
    s += top
    return np.maximum(s, 0, out=s)


def cylinder(
    center: Point,
    *,
    length: float,
    radius: float,
    angle: float,
    pixel_mm: float,
    shape: Sequence[int],
    inner_radius: float = 0.0,
    level: float = 1.0,
) -> Raster | None:
    """A cylinder lying across the beam, seen from the side.

    The thickness across the axis is the chord ``2 sqrt(r^2 - d^2)`` at
    distance ``d`` from the axis: bottles, battery cells, rods, barrels.

    Parameters
    ----------
    center : (row, col)
        Centre of the axis in pixels.
    length, radius : float
        Axis length (along ``u``) and outer radius in pixels.
    angle : float
        Direction of the axis in radians.
    pixel_mm : float
        Pixel pitch, to turn chords into cm.
    shape : (rows, cols)
        Scene shape to clip to.
    inner_radius : float
        Bore in pixels: a tube wall (bottle, can, barrel) when > 0.
    level : float
        Fill fraction of the diameter along the beam, 1 for full: the
        contents of a bottle lying flat settle to the bottom.
    """
    hu = length / 2.0
    if radius <= 0 or hu <= 0:
        return None
    box, whole = _placed(center, *rotated_half_extent(hu, radius, angle), shape)
    if box is None:
        return None
    u, v = local_coords(box, center, angle)
    np.multiply(v, v, out=v)
    path = _below(_half_chords(v, radius), level, radius)
    if inner_radius > 0:
        path -= _below(_half_chords(v, inner_radius), level, inner_radius)
    np.abs(u, out=u)
    np.subtract(_F32(hu + 0.5), u, out=u)
    path *= _clamp(u, 0.0, min(1.0, 2.0 * hu))
    path *= _F32(pixel_mm / 10.0)
    return _finish(box, path, exact=not whole)


def filled_cylinder(
    center: Point,
    *,
    length: float,
    radius: float,
    wall: float,
    angle: float,
    pixel_mm: float,
    shape: Sequence[int],
    level: float = 1.0,
) -> tuple[Raster | None, Raster | None]:
    """A closed can lying across the beam and its contents: bottles, battery cells.

    One pass of the geometry serves both (a bottle is otherwise two calls
    of :func:`cylinder`). The contents fill the bore (``radius - wall``) up
    to ``level`` of its diameter; the wall of the can is its tube, ends
    left out.

    Returns
    -------
    (shell, contents)
        Each a ``(box, thickness_cm)`` or ``None``, boxes shared.
    """
    hu, bore = length / 2.0, radius - wall
    if radius <= 0 or hu <= 0 or not 0 < bore < radius:
        return None, None
    box, whole = _placed(center, *rotated_half_extent(hu, radius, angle), shape)
    if box is None:
        return None, None
    u, v = local_coords(box, center, angle)
    np.multiply(v, v, out=v)
    outer = _below(_half_chords(v, radius), 1.0, radius)
    inner = _half_chords(v, bore)
    contents = _below(inner.copy(), level, bore)
    outer -= _below(inner, 1.0, bore)
    np.abs(u, out=u)
    np.subtract(_F32(hu + 0.5), u, out=u)
    cap = _clamp(u, 0.0, min(1.0, 2.0 * hu))
    cap *= _F32(pixel_mm / 10.0)
    outer *= cap
    contents *= cap
    return _finish(box, outer, exact=not whole), _finish(box, contents, exact=not whole)


def disc(
    center: Point,
    *,
    radius: float,
    thickness_cm: float,
    shape: Sequence[int],
    inner_radius: float = 0.0,
) -> Raster | None:
    """A flat disc (coin, washer; a ring when ``inner_radius > 0``) facing the beam.

    ``radius`` and ``inner_radius`` in pixels, ``thickness_cm`` along the beam.
    """
    if radius <= 0:
        return None
    box, whole = _placed(center, radius, radius, shape)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    dr = (np.arange(r0, r1, dtype=_F32) - _F32(center[0]))[:, None]
    dc = (np.arange(c0, c1, dtype=_F32) - _F32(center[1]))[None, :]
    dist = np.add(dr * dr, dc * dc)
    np.sqrt(dist, out=dist)
    hole = _to_coverage(np.subtract(_F32(inner_radius), dist), inner_radius) if inner_radius > 0 else None
    cov = _to_coverage(np.subtract(_F32(radius), dist, out=dist), radius)
    if hole is not None:
        cov -= hole
    cov *= _F32(thickness_cm)
    return _finish(box, cov, exact=not whole)


def ellipsoid(
    center: Point,
    *,
    semi_axes: tuple[float, float],
    depth_cm: float,
    angle: float,
    shape: Sequence[int],
) -> Raster | None:
    """An ellipsoid: thickness ``depth_cm * sqrt(1 - (u/a)^2 - (v/b)^2)``.

    ``semi_axes`` ``(a, b)`` in pixels along ``u`` and ``v``; ``depth_cm`` is
    the full thickness along the beam at the centre (bundles, pellets).
    """
    a, b = semi_axes
    if a <= 0 or b <= 0:
        return None
    box, whole = _placed(center, *rotated_half_extent(a, b, angle), shape)
    if box is None:
        return None
    u, v = local_coords(box, center, angle)
    u *= _F32(1.0 / a)
    u *= u
    v *= _F32(1.0 / b)
    v *= v
    u += v
    np.subtract(_F32(1.0), u, out=u)
    np.maximum(u, 0, out=u)
    np.sqrt(u, out=u)
    u *= _F32(depth_cm)
    return _finish(box, u, exact=not whole)


def tube(
    points: np.ndarray,
    *,
    radii: Sequence[float],
    pixel_mm: float,
    shape: Sequence[int],
    closed: bool = False,
) -> list[Raster | None]:
    """Concentric round layers along a polyline: a cable's core and sheath, a wire.

    Each layer is drawn as a few nested thick polylines whose values step
    like the chord ``2 sqrt(r^2 - d^2)`` of a circle (OpenCV draws them in
    C; a per-pixel distance field costs ten times more), then scaled so
    that its volume is exactly ``pi (r_k^2 - r_(k-1)^2)`` times the polyline
    length. Wires thinner than a pixel keep their mass and spread over one.

    Parameters
    ----------
    points : (n, 2) array
        Centre line ``(row, col)`` in pixels.
    radii : sequence of float
        Increasing outer radii in pixels: layer 0 is the solid core, layer
        ``k`` the annulus between ``radii[k-1]`` and ``radii[k]``.
    pixel_mm : float
        Pixel pitch, to turn chords into cm.
    shape : (rows, cols)
        Scene shape to clip to.
    closed : bool
        Join the last point to the first.

    Returns
    -------
    list
        One ``(box, thickness_cm)`` or ``None`` per layer.
    """
    pts = np.asarray(points, dtype=np.float64)
    radii = [float(r) for r in radii]
    if len(pts) < 2 or not radii or radii[0] <= 0 or any(b <= a for a, b in zip(radii, radii[1:])):
        raise ValueError("tube needs two or more points and increasing positive radii")
    reach = max(radii[-1], 1.0) + 2.0
    # Drawn on the unclipped box: the volume scaling needs the whole tube.
    lo, hi = pts.min(axis=0) - reach, pts.max(axis=0) + reach
    full = (math.floor(lo[0]), math.floor(lo[1]), math.ceil(hi[0]) + 1, math.ceil(hi[1]) + 1)
    box = _clip(full, shape)
    if box is None:
        return [None] * len(radii)
    seg = np.diff(np.concatenate([pts, pts[:1]]) if closed else pts, axis=0)
    length = float(np.hypot(seg[:, 0], seg[:, 1]).sum())
    xy = [_cv_points(pts, (full[0], full[1]))]
    h, w = full[2] - full[0], full[3] - full[1]
    out: list[Raster | None] = []
    inner = 0.0
    for outer in radii:
        drawn = max(outer, 1.0)
        levels = min(4, max(1, math.ceil(drawn)))
        canvas = np.zeros((h, w), _F32)
        for k in range(levels, 0, -1):  # widest first; narrower ones overwrite
            edge = drawn * k / levels
            d = drawn * (k - 0.5) / levels  # representative distance of this ring
            bore = inner * drawn / outer
            value = 2.0 * math.sqrt(max(drawn**2 - d * d, 0.0)) - 2.0 * math.sqrt(max(bore**2 - d * d, 0.0))
            if value > 0:
                cv2.polylines(canvas, xy, closed, float(value), max(1, 2 * round(edge) - 1), cv2.LINE_8, _SHIFT)
        drawn_volume = cv2.sumElems(canvas)[0]
        if drawn_volume <= 0:
            out.append(None)
        else:
            canvas *= _F32(math.pi * (outer**2 - inner**2) * length / drawn_volume * pixel_mm / 10.0)
            if box == full:  # the box is the polyline's bounds: nothing to trim
                out.append((box, canvas))
            else:
                out.append(_finish(box, np.ascontiguousarray(_crop(full, box, canvas))))
        inner = outer
    return out


def textured_slab(
    rng: np.random.Generator,
    center: Point,
    *,
    length: float,
    width: float,
    thickness_cm: float,
    angle: float,
    shape: Sequence[int],
    roughness: float = 0.3,
    cell: float = 40.0,
    edge_jitter: float = 0.0,
    folds: int = 0,
    corner_radius: float = 0.0,
) -> Raster | None:
    """A soft slab whose thickness varies: clothes, bales, packed goods.

    The slab is drawn axis-aligned in its own frame, at a coarser step
    when it is large (its texture is smooth), and turned into the scene by
    one ``cv2.warpAffine``; in its own frame the edge and fold terms are
    outer products of 1D profiles.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the noise field (the only randomness).
    center : (row, col)
        Centre in pixels.
    length, width : float
        Extent along ``u`` and ``v`` in pixels.
    thickness_cm : float
        Mean thickness along the beam in cm.
    angle : float
        Rotation in radians.
    shape : (rows, cols)
        Scene shape to clip to.
    roughness : float
        Relative standard deviation of the smooth thickness noise.
    cell : float
        Correlation length of the noise in pixels.
    edge_jitter : float
        How far (pixels) the noise pushes the outline in and out; 0 keeps
        straight edges (cartons), a few cm makes crumpled cloth.
    folds : int
        Number of fold ridges across the length (a folded garment).
    corner_radius : float
        Corner radius in pixels.
    """
    hu, hv = length / 2.0, width / 2.0
    if hu <= 0 or hv <= 0:
        return None
    pad = edge_jitter * 2.0 + 2.0
    step = float(np.clip(min(length, width) / 70.0, 1.0, 4.0))  # pixels per texel
    # Texel (i, j) sits at u = (j - ou) * step, v = (i - ov) * step.
    lw, lh = int(math.ceil(2 * (hu + pad) / step)) + 1, int(math.ceil(2 * (hv + pad) / step)) + 1
    ou, ov = (lw - 1) / 2.0, (lh - 1) / 2.0
    gh, gw = max(2, int(round(lh * step / cell)) + 2), max(2, int(round(lw * step / cell)) + 2)
    noise = cv2.resize(rng.standard_normal((gh, gw)).astype(_F32), (lw, lh), interpolation=cv2.INTER_CUBIC)
    phase = rng.uniform(0.0, 2.0 * math.pi)

    box, whole = _placed(center, *rotated_half_extent(hu + pad, hv + pad, angle), shape)
    if box is None:
        return None
    u = ((np.arange(lw, dtype=_F32) - _F32(ou)) * _F32(step))[None, :]
    v = ((np.arange(lh, dtype=_F32) - _F32(ov)) * _F32(step))[:, None]
    along = None
    if folds > 0:
        # A fold doubles the cloth over a band a few cm wide: sharp ridges.
        along = np.cos(u * _F32(math.pi * folds / (2 * hu)) + _F32(phase)) ** 8 * _F32(0.8) + _F32(1.0)
    sd = _rect_sd(u, v, hu, hv, corner_radius)
    if edge_jitter > 0:
        sd += noise * _F32(edge_jitter)
    sd *= _F32(1.0 / step)  # coverage of a texel, not of a pixel
    slab = _to_coverage(sd, min(hu, hv) / step)
    noise *= _F32(roughness)
    noise += _F32(1.0)
    slab *= np.maximum(noise, _F32(0.15), out=noise)
    slab *= _F32(thickness_cm) if along is None else along * _F32(thickness_cm)

    r0, c0, r1, c1 = box
    cos, sin = math.cos(angle) / step, math.sin(angle) / step
    dc0, dr0 = c0 - center[1], r0 - center[0]
    # Inverse map: box pixel (x, y) -> texel (j, i).
    warp = np.array(
        [[cos, sin, cos * dc0 + sin * dr0 + ou], [-sin, cos, -sin * dc0 + cos * dr0 + ov]],
        dtype=np.float64,
    )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(slab, warp, (c1 - c0, r1 - r0), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _finish(box, out, exact=not whole)


# --------------------------------------------------------------------------
# 3D rasterisers (mm)
# --------------------------------------------------------------------------


def _frame3(
    center_mm: Sequence[float],
    half_wvu: tuple[float, float, float],
    angle: float,
    shape: Sequence[int],
    voxel_mm: Sequence[float],
) -> tuple[Box3, np.ndarray, np.ndarray, np.ndarray] | None:
    """Clipped voxel box and object-frame ``w`` (z, vertical), ``v``, ``u`` in mm.

    ``w`` has shape ``(nz, 1, 1)`` and ``u``, ``v`` ``(1, ny, nx)``: a shape
    turned only about the vertical axis is a 2D problem per slice.
    """
    hw, hv, hu = half_wvu
    hy, hx = rotated_half_extent(hu, hv, angle)
    lo, hi = [], []
    for c, half, size, n in zip(center_mm, (hw, hy, hx), voxel_mm, shape):
        lo.append(max(math.floor((c - half) / size) - 1, 0))
        hi.append(min(math.ceil((c + half) / size) + 1, int(n)))
    if any(b <= a for a, b in zip(lo, hi)):
        return None
    z = ((np.arange(lo[0], hi[0], dtype=_F32) + _F32(0.5)) * _F32(voxel_mm[0]) - _F32(center_mm[0]))[:, None, None]
    y = ((np.arange(lo[1], hi[1], dtype=_F32) + _F32(0.5)) * _F32(voxel_mm[1]) - _F32(center_mm[1]))[:, None]
    x = ((np.arange(lo[2], hi[2], dtype=_F32) + _F32(0.5)) * _F32(voxel_mm[2]) - _F32(center_mm[2]))[None, :]
    cos, sin = _F32(math.cos(angle)), _F32(math.sin(angle))
    u = (x * cos + y * sin)[None]
    v = (y * cos - x * sin)[None]
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]), z, v, u


def _finish3(box: Box3, occ: np.ndarray) -> Raster3 | None:
    nz = [np.flatnonzero(occ.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if nz[0].size == 0:
        return None
    lo = [int(a[0]) for a in nz]
    hi = [int(a[-1]) + 1 for a in nz]
    occ = np.ascontiguousarray(occ[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=_F32)
    return (box[0] + lo[0], box[1] + lo[1], box[2] + lo[2], box[0] + hi[0], box[1] + hi[1], box[2] + hi[2]), occ


def _voxel_scales(voxel_mm: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size (mm) across a vertical face, across a side face, and on average."""
    hz, hy, hx = (float(s) for s in voxel_mm)
    hxy = math.sqrt(hy * hx)
    return hz, hxy, (hz * hy * hx) ** (1.0 / 3.0)


def _cuboid_cov(w, v, u, half_wvu, voxel_mm) -> np.ndarray:
    hz, hxy, _ = _voxel_scales(voxel_mm)
    hw, hv, hu = half_wvu
    sd_xy = np.minimum(_F32(hu) - np.abs(u), _F32(hv) - np.abs(v)) * _F32(1.0 / hxy)
    sd_z = (_F32(hw) - np.abs(w)) * _F32(1.0 / hz)
    top = min(1.0, 2 * hw / hz, 2 * hu / hxy, 2 * hv / hxy)
    return _clamp(np.minimum(sd_xy, sd_z) + _F32(0.5), 0.0, top)


def box_volume(
    center_mm: Sequence[float],
    *,
    size_mm: tuple[float, float, float],
    angle: float,
    shape: Sequence[int],
    voxel_mm: Sequence[float],
    wall_mm: float = 0.0,
) -> Raster3 | None:
    """A cuboid turned about the vertical axis; hollow when ``wall_mm > 0``.

    Parameters
    ----------
    center_mm : (z, y, x)
        Centre in mm from the volume's corner.
    size_mm : (height, width, length)
        Extent along the vertical, ``v`` and ``u`` in mm.
    angle : float
        Rotation about the vertical axis in radians (``u`` along
        ``(y, x) = (sin, cos)``).
    shape : (slices, rows, cols)
        Volume shape to clip to.
    voxel_mm : (z, y, x)
        Voxel size in mm.
    wall_mm : float
        Wall thickness of a hollow box (a bag's shell); 0 for solid.
    """
    half = tuple(s / 2.0 for s in size_mm)
    frame = _frame3(center_mm, half, angle, shape, voxel_mm)  # type: ignore[arg-type]
    if frame is None:
        return None
    box, w, v, u = frame
    occ = _cuboid_cov(w, v, u, half, voxel_mm)
    if wall_mm > 0:
        inner = tuple(max(h - wall_mm, 0.0) for h in half)
        if min(inner) > 0:
            occ -= _cuboid_cov(w, v, u, inner, voxel_mm)
    return _finish3(box, occ)


def cylinder_volume(
    center_mm: Sequence[float],
    *,
    length_mm: float,
    radius_mm: float,
    angle: float,
    shape: Sequence[int],
    voxel_mm: Sequence[float],
    upright: bool = False,
    inner_radius_mm: float = 0.0,
) -> Raster3 | None:
    """A cylinder lying along ``u`` (or standing when ``upright``); a tube with a bore.

    ``center_mm``, ``angle``, ``shape`` and ``voxel_mm`` as in
    :func:`box_volume`; lengths in mm.
    """
    hl = length_mm / 2.0
    half = (hl, radius_mm, radius_mm) if upright else (radius_mm, radius_mm, hl)
    frame = _frame3(center_mm, half, angle, shape, voxel_mm)
    if frame is None:
        return None
    box, w, v, u = frame
    hz, hxy, _ = _voxel_scales(voxel_mm)
    if upright:
        radial, axial, h_rad, h_ax = np.sqrt(u * u + v * v), w, hxy, hz
    else:
        radial, axial, h_rad, h_ax = np.sqrt(v * v + w * w), u, math.sqrt(hxy * hz), hxy
    sd_ax = (_F32(hl) - np.abs(axial)) * _F32(1.0 / h_ax)

    def cov(r: float) -> np.ndarray:
        sd = np.minimum((_F32(r) - radial) * _F32(1.0 / h_rad), sd_ax)
        return _clamp(sd + _F32(0.5), 0.0, min(1.0, 2 * r / h_rad, 2 * hl / h_ax))

    occ = cov(radius_mm)
    if inner_radius_mm > 0:
        occ = occ - cov(inner_radius_mm)
    return _finish3(box, np.broadcast_to(occ, np.broadcast_shapes(w.shape, u.shape)))


def ellipsoid_volume(
    center_mm: Sequence[float],
    *,
    semi_axes_mm: tuple[float, float, float],
    angle: float,
    shape: Sequence[int],
    voxel_mm: Sequence[float],
) -> Raster3 | None:
    """An ellipsoid with semi-axes ``(vertical, v, u)`` in mm, turned about the vertical.

    ``center_mm``, ``angle``, ``shape`` and ``voxel_mm`` as in :func:`box_volume`.
    """
    frame = _frame3(center_mm, semi_axes_mm, angle, shape, voxel_mm)
    if frame is None:
        return None
    box, w, v, u = frame
    c, b, a = semi_axes_mm
    rho = np.sqrt((w * _F32(1.0 / c)) ** 2 + (v * _F32(1.0 / b)) ** 2 + (u * _F32(1.0 / a)) ** 2)
    # (1 - rho) * smallest semi-axis approximates the distance to the surface.
    _, _, h = _voxel_scales(voxel_mm)
    occ = _clamp((_F32(1.0) - rho) * _F32(min(a, b, c) / h) + _F32(0.5), 0.0, 1.0)
    return _finish3(box, occ)
