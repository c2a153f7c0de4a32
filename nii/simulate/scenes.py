"""Scene generators: bags, parcels, cargo containers and CT bags with exact truth.

Every generator takes a :class:`numpy.random.Generator` and draws all of its
randomness from it, so the same generator state gives the same scene, bit
for bit. Sizes are drawn in cm and turned into pixels with the scene's
pitch, so a bag is the same bag at any resolution.

Materials are named by their key in ``nii.simulate.physics.MATERIALS``;
this module never imports the physics. Masses need densities, which the
caller passes in (:func:`areal_density`, :func:`threat_annotations`),
except for cargo manifests, which use :data:`_NOMINAL_DENSITY_G_CM3`.

Object categories
-----------------
Shells (``"bag_shell"``, ``"parcel_shell"``, ``"container_shell"``) are
the packaging; ``"bag_frame"`` is a suitcase's trolley rods and wheels.
Clutter: ``clothes, book, shoes, bottle, electronics, laptop, cable, coins,
keys, toiletries``; cargo goods are named by their goods type
(``furniture, machinery, textiles, ceramics, food, electronics``) plus
``pallet``. Threats use the keys of
:data:`~nii.simulate.scene.THREAT_CATEGORIES`; all parts of one threat
share a ``group``.
"""

from __future__ import annotations

import dataclasses
import math
import string
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple, Sequence

import cv2
import numpy as np

from nii.simulate import shapes
from nii.simulate.scene import THREAT_CATEGORIES, Scene, SceneObject, VolumeObject, VolumeScene

__all__ = [
    "bag_scene",
    "cargo_scene",
    "ct_scene",
    "areal_density",
    "threat_annotations",
    "volume_threat_annotations",
    "object_mass_g",
    "volume_object_mass_g",
    "iso6346_check_digit",
    "GOODS_TYPES",
    "MISMATCH_TYPES",
]

_TAU = 2.0 * math.pi
Point = tuple[float, float]

# Nominal densities (g/cm^3) for cargo manifest weights. They MUST match
# nii.simulate.physics.MATERIALS (kept here so that scenes do not import the
# physics); cotton is bulk cloth, not fibre. Cargo goods use only these.
_NOMINAL_DENSITY_G_CM3: Mapping[str, float] = MappingProxyType(
    {
        "water": 1.0,
        "cotton": 0.3,
        "wood": 0.6,
        "steel": 7.85,
        "glass": 2.5,
        "abs": 1.05,
        "pcb": 2.0,
        "aluminium": 2.699,
        "cellulose": 0.9,
        "narcotic": 1.2,
    }
)

#: Cargo goods types a manifest can declare (besides ``"empty"``).
GOODS_TYPES: tuple[str, ...] = ("furniture", "machinery", "textiles", "ceramics", "food", "electronics")
#: Values of ``manifest_truth["mismatch"]``.
MISMATCH_TYPES: tuple[str, ...] = ("none", "undeclared_goods", "wrong_weight", "false_empty")

# Density conventions of physics.MATERIALS that the drawing follows:
# cotton and polyester are bulk folded clothing (0.30, 0.35 g/cm^3), so a
# garment's thickness is its stack height; nylon is solid (bag fabric,
# straps); li_ion is a whole cell averaged over its volume, steel can
# included, so cells are drawn as one li_ion cylinder.


def _is_shell(category: str) -> bool:
    return category.endswith("_shell")


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Canvas:
    """The objects of one scene while it is built (one per call, never shared)."""

    shape: tuple[int, int]
    pixel_mm: float
    objects: list[SceneObject] = dataclasses.field(default_factory=list)
    groups: int = 0

    def px(self, cm: float) -> float:
        """A length in cm in pixels."""
        return cm * 10.0 / self.pixel_mm

    def new_group(self) -> int:
        self.groups += 1
        return self.groups

    def add(
        self,
        category: str,
        material: str,
        raster: shapes.Raster | None,
        *,
        density: float | None = None,
        group: int | None = None,
    ) -> None:
        if raster is not None:
            self.objects.append(SceneObject(category, material, raster[0], raster[1], density, group))

    def add_layers(
        self,
        category: str,
        unit: shapes.Raster | None,
        layers: Sequence[tuple[str, float]],
        *,
        group: int | None = None,
    ) -> None:
        """Several materials with one footprint: ``unit`` (thickness 1) scaled per layer.

        Scaling a drawn shape is one pass over its box; drawing it again
        is ten.
        """
        if unit is None:
            return
        for material, thickness_cm in layers:
            self.add(category, material, (unit[0], unit[1] * np.float32(thickness_cm)), group=group)

    def plate(
        self,
        category: str,
        material: str,
        at: Point,
        angle: float,
        size_cm: tuple[float, float],
        thickness_cm: float,
        *,
        offset_cm: tuple[float, float] = (0.0, 0.0),
        corner_cm: float = 0.0,
        bevel_cm: float = 0.0,
        profile: shapes.Profile | None = None,
        density: float | None = None,
        group: int | None = None,
    ) -> None:
        """A plate ``size_cm`` (length, width) centred ``offset_cm`` (along, across
        ``angle``) from ``at`` (pixels)."""
        raster = shapes.plate(
            _offset(at, angle, self.px(offset_cm[0]), self.px(offset_cm[1])),
            length=self.px(size_cm[0]),
            width=self.px(size_cm[1]),
            thickness_cm=thickness_cm,
            angle=angle,
            shape=self.shape,
            corner_radius=self.px(corner_cm),
            bevel=self.px(bevel_cm),
            profile=profile,
        )
        self.add(category, material, raster, density=density, group=group)

    def cylinder(
        self,
        category: str,
        material: str,
        at: Point,
        angle: float,
        length_cm: float,
        radius_cm: float,
        *,
        inner_cm: float = 0.0,
        level: float = 1.0,
        density: float | None = None,
        group: int | None = None,
    ) -> None:
        """A cylinder lying across the beam, axis along ``angle``, sizes in cm."""
        raster = shapes.cylinder(
            at,
            length=self.px(length_cm),
            radius=self.px(radius_cm),
            inner_radius=self.px(inner_cm),
            level=level,
            angle=angle,
            pixel_mm=self.pixel_mm,
            shape=self.shape,
        )
        self.add(category, material, raster, density=density, group=group)

    def can(
        self,
        category: str,
        shell: str,
        contents: str,
        at: Point,
        angle: float,
        length_cm: float,
        radius_cm: float,
        wall_cm: float,
        *,
        level: float = 1.0,
        group: int | None = None,
    ) -> None:
        """A can or bottle lying flat (``shell`` wall) filled with ``contents`` to ``level``."""
        rasters = shapes.filled_cylinder(
            at,
            length=self.px(length_cm),
            radius=self.px(radius_cm),
            wall=self.px(wall_cm),
            level=level,
            angle=angle,
            pixel_mm=self.pixel_mm,
            shape=self.shape,
        )
        self.add(category, shell, rasters[0], group=group)
        self.add(category, contents, rasters[1], group=group)

    def polygon(
        self,
        category: str,
        material: str,
        at: Point,
        angle: float,
        contours_cm: Sequence[np.ndarray],
        thickness_cm: float,
        *,
        holes_cm: Sequence[np.ndarray] = (),
        profile: shapes.Profile | None = None,
        group: int | None = None,
    ) -> None:
        """Polygons (outlines and holes in cm about ``at``) of one thickness."""
        scale = self.px(1.0)
        raster = shapes.polygon(
            [np.asarray(p, dtype=np.float64) * scale for p in contours_cm],
            holes=[np.asarray(p, dtype=np.float64) * scale for p in holes_cm],
            center=at,
            angle=angle,
            thickness_cm=thickness_cm,
            shape=self.shape,
            profile=profile,
        )
        self.add(category, material, raster, group=group)

    def disc(
        self,
        category: str,
        material: str,
        at: Point,
        radius_cm: float,
        thickness_cm: float,
        *,
        inner_cm: float = 0.0,
        group: int | None = None,
    ) -> None:
        """A disc (ring with ``inner_cm``) facing the beam."""
        raster = shapes.disc(
            at, radius=self.px(radius_cm), inner_radius=self.px(inner_cm), thickness_cm=thickness_cm, shape=self.shape
        )
        self.add(category, material, raster, group=group)

    def outline(
        self,
        category: str,
        material: str,
        at: Point,
        angle: float,
        contour: np.ndarray,
        skin_cm: float,
        wall_cm: float,
        wall_width_cm: float,
        *,
        group: int | None = None,
    ) -> None:
        """A hollow box or bag seen from above (:func:`shapes.hollow_outline`), contour in pixels."""
        raster = shapes.hollow_outline(
            contour,
            center=at,
            angle=angle,
            skin_cm=skin_cm,
            wall_cm=wall_cm,
            wall_width=self.px(wall_width_cm),
            shape=self.shape,
        )
        self.add(category, material, raster, group=group)

    def tube(
        self, category: str, points: np.ndarray, layers: Sequence[tuple[str, float]], *, group: int | None = None
    ) -> None:
        """Concentric layers ``(material, outer radius cm)`` along ``points`` (pixels)."""
        rasters = shapes.tube(points, radii=[self.px(r) for _, r in layers], pixel_mm=self.pixel_mm, shape=self.shape)
        for (material, _), raster in zip(layers, rasters):
            self.add(category, material, raster, group=group)


def _offset(at: Point, angle: float, du: float, dv: float) -> Point:
    """``at`` moved by ``(du, dv)`` pixels in a frame turned by ``angle``."""
    cos, sin = math.cos(angle), math.sin(angle)
    return at[0] + du * sin + dv * cos, at[1] + du * cos - dv * sin


@dataclasses.dataclass(frozen=True)
class _Frame:
    """Where items go: a rectangle (pixels) turned by ``angle`` about ``center``."""

    center: Point
    angle: float
    half_u: float
    half_v: float

    def point(self, u: float, v: float) -> Point:
        return _offset(self.center, self.angle, u, v)

    def sample(self, rng: np.random.Generator, margin: float = 0.0) -> Point:
        """A uniform point at least ``margin`` pixels (at most 80 % of each half-size) inside."""
        hu = max(self.half_u - min(margin, 0.8 * self.half_u), 0.0)
        hv = max(self.half_v - min(margin, 0.8 * self.half_v), 0.0)
        return self.point(rng.uniform(-hu, hu), rng.uniform(-hv, hv))

    def wander(self, rng: np.random.Generator, start: Point, *, steps: int, step: float, turn: float) -> np.ndarray:
        """A smooth random walk (pixels) kept inside the frame: a cable or wire."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dr, dc = start[0] - self.center[0], start[1] - self.center[1]
        u, v = dc * cos + dr * sin, dr * cos - dc * sin
        headings = rng.uniform(0.0, _TAU) + np.cumsum(rng.normal(0.0, turn, steps))
        pts = np.empty((steps + 1, 2))
        pts[0] = u, v
        pts[1:, 0] = u + np.cumsum(step * np.cos(headings))
        pts[1:, 1] = v + np.cumsum(step * np.sin(headings))
        # A wall folds the walk back: reflect it into the frame (a triangle wave).
        for axis, half in ((0, self.half_u), (1, self.half_v)):
            if half > 0:
                pts[:, axis] = half - np.abs(np.mod(pts[:, axis] + half, 4 * half) - 2 * half)
        return shapes.to_image(pts, self.center, self.angle)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, _TAU, n, endpoint=False)
    out = np.stack([np.cos(t), np.sin(t)], axis=1)
    out.flags.writeable = False
    return out


# Read-only outlines reused by every call (keys, sole outlines, pellets).
_CIRCLE_10, _CIRCLE_16, _CIRCLE_28 = _unit_circle(10), _unit_circle(16), _unit_circle(28)


def _ellipse(a: float, b: float, circle: np.ndarray = _CIRCLE_16) -> np.ndarray:
    return circle * (a, b)


# --------------------------------------------------------------------------
# Clutter (sizes in cm; every function adds the parts of one item)
# --------------------------------------------------------------------------

ItemFn = Callable[[_Canvas, np.random.Generator, _Frame, Point, float], None]


def _clothes(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    material = "cotton" if rng.random() < 0.6 else "polyester"
    stack = rng.uniform(1.5, 6.0)
    # Folded clothes are laid flat along the bag, and no larger than it:
    # they are the one item whose turn is not uniform.
    across = rng.random() < 0.3
    room_u, room_v = (frame.half_v, frame.half_u) if across else (frame.half_u, frame.half_v)
    raster = shapes.textured_slab(
        rng,
        at,
        length=min(c.px(rng.uniform(25.0, 50.0)), 1.8 * room_u),
        width=min(c.px(rng.uniform(18.0, 38.0)), 1.8 * room_v),
        thickness_cm=stack,
        angle=frame.angle + (math.pi / 2 if across else 0.0) + rng.normal(0.0, 0.15),
        shape=c.shape,
        roughness=0.3,
        cell=c.px(8.0),
        edge_jitter=c.px(0.8),
        folds=int(rng.integers(0, 3)),
        corner_radius=c.px(3.0),
    )
    c.add("clothes", material, raster)


def _book(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    c.plate("book", "cellulose", at, angle, (rng.uniform(15.0, 30.0), rng.uniform(11.0, 21.0)), rng.uniform(0.8, 4.0))


def _foot(length: float, width: float) -> np.ndarray:
    """Sole outline (cm), toe towards +u and wider than the heel."""
    cos, sin = _CIRCLE_28[:, 0], _CIRCLE_28[:, 1]
    return np.stack([length / 2 * cos, width / 2 * sin * (0.72 + 0.14 * (1 + cos))], axis=1)


def _shoes(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    length, width = rng.uniform(24.0, 31.0), rng.uniform(8.5, 11.0)
    sole, upper = rng.uniform(1.0, 2.5), rng.uniform(0.3, 0.6)
    shank = rng.random() < 0.25  # steel shanks: a classic false alarm
    for side in (-1.0, 1.0):
        group = c.new_group()
        pos = _offset(at, angle, rng.uniform(-3.0, 3.0) * c.px(1), side * c.px(width * 0.6))
        turn = angle + (math.pi if side > 0 and rng.random() < 0.5 else 0.0) + rng.normal(0.0, 0.1)
        c.polygon("shoes", "rubber", pos, turn, [_foot(length, width)], sole, group=group)
        c.polygon("shoes", "leather", pos, turn, [_foot(length * 0.93, width * 0.88)], upper, group=group)
        if shank:
            c.plate("shoes", "steel", pos, turn, (8.0, 1.2), 0.12, offset_cm=(-length * 0.12, 0.0), group=group)


def _bottle(
    c: _Canvas,
    rng: np.random.Generator,
    at: Point,
    angle: float,
    *,
    category: str,
    shell: str,
    radius: float,
    length: float,
    wall: float,
    contents: str = "water",
    cap: str = "polyethylene",
) -> None:
    """A bottle lying flat: shell, partly filled contents, neck and cap."""
    group = c.new_group()
    c.can(category, shell, contents, at, angle, length, radius, wall, level=rng.uniform(0.3, 1.0), group=group)
    neck_r = min(1.4, radius * 0.6)
    neck = _offset(at, angle, c.px(length / 2 + 1.5), 0.0)
    c.cylinder(category, shell, neck, angle, 3.0, neck_r, inner_cm=neck_r - wall * 1.5, group=group)
    c.cylinder(category, cap, _offset(at, angle, c.px(length / 2 + 3.8), 0.0), angle, 1.8, neck_r + 0.2, group=group)


def _water_bottle(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    radius = rng.uniform(3.0, 4.6)
    length, wall = radius * rng.uniform(4.5, 6.5), rng.uniform(0.03, 0.05)
    _bottle(c, rng, at, angle, category="bottle", shell="pet", radius=radius, length=length, wall=wall)


def _toiletries(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    kind = rng.random()
    if kind < 0.5:  # shampoo, lotion: polyethylene bottle
        radius = rng.uniform(2.0, 3.5)
        length = rng.uniform(10.0, 18.0)
        _bottle(c, rng, at, angle, category="toiletries", shell="polyethylene", radius=radius, length=length, wall=0.08)
    elif kind < 0.75:  # perfume: small thick glass bottle
        group = c.new_group()
        size = (rng.uniform(5.0, 9.0), rng.uniform(4.0, 7.0))
        c.plate("toiletries", "glass", at, angle, size, rng.uniform(0.8, 1.6), corner_cm=0.8, group=group)
        inside = (size[0] - 1.2, size[1] - 1.2)
        c.plate("toiletries", "water", at, angle, inside, rng.uniform(1.0, 3.0), corner_cm=0.5, group=group)
    else:  # toothpaste, cream: squashed tube
        size = (rng.uniform(12.0, 18.0), rng.uniform(3.5, 5.0))
        c.plate("toiletries", "water", at, angle, size, rng.uniform(1.0, 2.5), bevel_cm=1.0)


def _cells(
    c: _Canvas, at: Point, angle: float, count: int, *, category: str, group: int | None, spacing: float = 1.85
) -> None:
    """``count`` 18650 cells side by side (li_ion is the whole cell, can included)."""
    for k in range(count):
        pos = _offset(at, angle, 0.0, c.px((k - (count - 1) / 2) * spacing))
        c.cylinder(category, "li_ion", pos, angle, 6.5, 0.9, group=group)


def _unit_plate(
    c: _Canvas, at: Point, angle: float, size_cm: tuple[float, float], corner_cm: float
) -> shapes.Raster | None:
    """A rounded plate of thickness 1 cm, to be scaled per layer (:meth:`_Canvas.add_layers`)."""
    length, width = c.px(size_cm[0]), c.px(size_cm[1])
    return shapes.plate(
        at, length=length, width=width, thickness_cm=1.0, angle=angle, shape=c.shape, corner_radius=c.px(corner_cm)
    )


def _electronics(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    group = c.new_group()
    kind = _pick(rng, ("phone", "powerbank", "tablet", "camera"))
    cat = "electronics"
    if kind == "phone":
        size = (rng.uniform(14.0, 16.5), rng.uniform(7.0, 7.8))
        c.add_layers(cat, _unit_plate(c, at, angle, size, 0.9), [("abs", 0.25), ("glass", 0.08)], group=group)
        board = (size[0] * 0.3, size[1] * 0.8)
        c.plate(cat, "pcb", at, angle, board, 0.12, offset_cm=(size[0] * 0.3, 0.0), group=group)
        battery = (size[0] * 0.5, size[1] * 0.8)
        c.plate(cat, "li_ion", at, angle, battery, 0.5, offset_cm=(-size[0] * 0.12, 0.0), group=group)
    elif kind == "powerbank":
        cells = int(rng.integers(2, 5))
        c.plate(cat, "abs", at, angle, (8.0, cells * 1.9 + 1.0), 0.4, corner_cm=0.5, group=group)
        _cells(c, at, angle, cells, category=cat, group=group)
        c.plate(cat, "pcb", _offset(at, angle, c.px(4.6), 0.0), angle, (1.5, cells * 1.7), 0.16, group=group)
    elif kind == "tablet":
        size = (rng.uniform(22.0, 28.0), rng.uniform(15.5, 19.5))
        c.add_layers(cat, _unit_plate(c, at, angle, size, 1.0), [("aluminium", 0.12), ("glass", 0.07)], group=group)
        battery = (size[0] * 0.55, size[1] * 0.75)
        c.plate(cat, "li_ion", at, angle, battery, 0.4, offset_cm=(-size[0] * 0.15, 0.0), group=group)
        board = (size[0] * 0.25, size[1] * 0.5)
        c.plate(cat, "pcb", at, angle, board, 0.12, offset_cm=(size[0] * 0.3, 0.0), group=group)
    else:
        size = (rng.uniform(10.0, 13.0), rng.uniform(6.5, 8.0))
        c.plate(cat, "abs", at, angle, size, 1.2, corner_cm=1.0, group=group)
        c.plate(cat, "pcb", at, angle, (size[0] * 0.7, size[1] * 0.6), 0.16, group=group)
        lens = _offset(at, angle, c.px(size[0] * 0.15), c.px(size[1] * 0.7))
        c.disc(cat, "glass", lens, 2.6, 3.0, inner_cm=1.8, group=group)
        c.plate(cat, "li_ion", _offset(at, angle, -c.px(size[0] * 0.25), 0.0), angle, (4.0, 3.2), 1.0, group=group)


def _laptop(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    group = c.new_group()
    size = (rng.uniform(30.0, 38.0), rng.uniform(21.0, 26.0))
    case, wall = ("aluminium", 0.2) if rng.random() < 0.6 else ("abs", 0.45)
    c.add_layers("laptop", _unit_plate(c, at, angle, size, 1.0), [(case, wall), ("glass", 0.07)], group=group)
    board, keyboard = (size[0] * 0.6, size[1] * 0.4), (size[0] * 0.85, size[1] * 0.4)
    c.plate("laptop", "pcb", at, angle, board, 0.15, offset_cm=(0.0, -size[1] * 0.2), group=group)
    c.plate("laptop", "steel", at, angle, keyboard, 0.05, offset_cm=(0.0, -size[1] * 0.02), group=group)
    battery = _offset(at, angle, 0.0, c.px(size[1] * 0.32))
    if rng.random() < 0.5:
        # Older laptops: a row of 18650 cells along the front edge.
        _cells(c, battery, angle + math.pi / 2, int(rng.integers(3, 7)), category="laptop", group=group, spacing=1.9)
    else:
        c.plate("laptop", "li_ion", battery, angle, (size[0] * 0.65, 6.5), rng.uniform(0.5, 0.8), group=group)
    heat_pipe = np.array([_offset(at, angle, c.px(u), -c.px(size[1] * 0.3)) for u in (-6.0, 0.0, 4.0, 8.0)])
    c.tube("laptop", heat_pipe, [("copper", 0.15)], group=group)  # heat pipe
    for side in (-1.0, 1.0):  # hinges
        hinge = (side * size[0] * 0.32, -size[1] * 0.47)
        c.plate("laptop", "steel", at, angle, (3.0, 1.0), 0.3, offset_cm=hinge, group=group)


def _cable(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    group = c.new_group()
    length = rng.uniform(50.0, 150.0)
    step = 1.0
    # Cables travel coiled or bundled: a high turn rate keeps them compact.
    points = frame.wander(rng, at, steps=int(length / step), step=c.px(step), turn=rng.uniform(0.2, 0.55))
    core = rng.uniform(0.05, 0.1)
    c.tube("cable", points, [("copper", core), ("pvc", core + rng.uniform(0.1, 0.25))], group=group)
    if rng.random() < 0.4:  # charger brick at one end
        end = (float(points[-1, 0]), float(points[-1, 1]))
        brick = (rng.uniform(5.0, 9.0), rng.uniform(4.0, 6.0))
        c.plate("cable", "abs", end, angle, brick, 0.8, corner_cm=0.6, group=group)
        c.plate("cable", "pcb", end, angle, (3.5, 3.0), 0.16, group=group)
        c.plate("cable", "copper", end, angle, (1.5, 1.5), 0.6, group=group)


def _coins(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    for _ in range(int(rng.integers(1, 9))):
        pos = _offset(at, rng.uniform(0.0, _TAU), c.px(rng.uniform(0.0, 3.0)), 0.0)
        radius, thickness = rng.uniform(0.8, 1.3), rng.uniform(0.15, 0.23)
        c.disc("coins", _pick(rng, ("nickel", "brass", "copper")), pos, radius, thickness)


def _key_shapes(length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head outline, head hole and toothed blade (cm) of a key along +u."""
    head = _ellipse(1.3, 1.2) + (-length / 2 + 1.3, 0.0)
    hole = _ellipse(0.35, 0.35, _CIRCLE_10) + (-length / 2 + 0.8, 0.0)
    start, end = -length / 2 + 2.65, length / 2  # the blade starts clear of the head
    teeth = np.linspace(start, end - 0.4, 9)
    lower = np.stack([teeth, 0.45 - 0.25 * (np.arange(9) % 2)], axis=1)
    blade = np.concatenate([[[start, -0.45], [end - 0.4, -0.45], [end, 0.0]], lower[::-1]])
    return head, hole, blade


def _keys(c: _Canvas, rng: np.random.Generator, frame: _Frame, at: Point, angle: float) -> None:
    group = c.new_group()
    c.disc("keys", "steel", at, 1.4, 0.2, inner_cm=1.2, group=group)  # key ring
    for _ in range(int(rng.integers(1, 5))):
        turn = rng.uniform(0.0, _TAU)
        length = rng.uniform(5.0, 7.0)
        pos = _offset(at, turn, c.px(length / 2 + 0.9), 0.0)
        head, hole, blade = _key_shapes(length)
        material = _pick(rng, ("brass", "steel", "nickel"))
        c.polygon("keys", material, pos, turn, [head, blade], 0.22, holes_cm=[hole], group=group)


class _Item(NamedTuple):
    draw: ItemFn
    weight: float  # share among the items of an ordinary bag
    light: bool  # may go in a clear bag
    bulky: bool  # a threat can be slipped under it
    margin_cm: float  # keeps its centre this far inside the bag


_CLUTTER: Mapping[str, _Item] = MappingProxyType(
    {
        "clothes": _Item(_clothes, 0.22, True, True, 12.0),
        "book": _Item(_book, 0.08, True, True, 8.0),
        "shoes": _Item(_shoes, 0.05, False, True, 13.0),
        "bottle": _Item(_water_bottle, 0.07, True, False, 9.0),
        "electronics": _Item(_electronics, 0.11, False, True, 7.0),
        "laptop": _Item(_laptop, 0.04, False, True, 15.0),
        "cable": _Item(_cable, 0.10, True, False, 0.0),
        "coins": _Item(_coins, 0.08, False, False, 3.0),
        "keys": _Item(_keys, 0.07, False, False, 5.0),
        "toiletries": _Item(_toiletries, 0.18, True, False, 7.0),
    }
)
_THREAT_MARGIN_CM = 8.0
_PARCEL_ITEMS = ("book", "electronics", "clothes", "shoes", "toiletries", "cable", "laptop", "bottle")


# --------------------------------------------------------------------------
# Threats (every part takes the threat's category and one group)
# --------------------------------------------------------------------------

ThreatFn = Callable[[_Canvas, np.random.Generator, Point, float, int], None]


def _pistol_outline(k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Slide, frame (with its trigger-guard hole), magazine and trigger (cm).

    ``k`` scales a 19 cm pistol; +u is the muzzle, +v down to the grip
    base; the origin is the middle of the silhouette.
    """
    slide = np.array([[-9.5, 0.3], [-9.2, 0.0], [9.3, 0.0], [9.5, 0.4], [9.5, 3.0], [-9.5, 3.0]])
    frame = np.array(
        [
            [7.5, 3.0], [7.5, 4.0], [3.6, 4.0], [3.6, 5.8], [2.8, 6.6], [0.2, 6.6],  # dust cover, trigger guard
            [-0.8, 6.2], [-4.0, 13.6], [-9.0, 13.0], [-7.6, 5.0], [-9.6, 3.6], [-9.5, 3.0],  # grip, beavertail
        ]
    )
    hole = np.array([[3.0, 4.0], [3.0, 5.5], [2.4, 6.0], [0.6, 6.0], [-0.2, 5.4], [-0.2, 4.0]])
    magazine = np.array([[-1.9, 6.4], [-4.7, 13.1], [-8.2, 12.7], [-5.6, 6.0]])
    trigger = np.array([[1.3, 4.0], [1.8, 4.0], [1.5, 5.4], [0.9, 5.7], [1.1, 5.0]])
    centre = np.array([0.0, 6.8])
    return tuple((p - centre) * k for p in (slide, frame, hole, magazine, trigger))  # type: ignore[return-value]


def _slide(
    c: _Canvas, at: Point, angle: float, k: float, width: float, *, category: str, group: int, flip: float = 1.0
) -> None:
    """Pistol slide and barrel. The slide is ``width`` cm across but hollow
    (barrel, recoil spring): about 55 % of that is steel along the beam.
    ``flip = -1`` mirrors the gun (lying on its other face)."""
    slide = _pistol_outline(k)[0] * (1.0, flip)
    c.polygon(category, "steel", at, angle, [slide], width * 0.55, group=group)
    barrel_at = _offset(at, angle, c.px(2.5 * k), flip * c.px((1.3 - 6.8) * k))
    c.cylinder(category, "steel", barrel_at, angle, 14.0 * k, 0.68, inner_cm=0.45, group=group)


def _magazine(c: _Canvas, at: Point, angle: float, k: float, *, category: str, group: int, flip: float = 1.0) -> None:
    """A loaded magazine: steel box, brass cases, lead bullets (front 40 %)."""
    mag = _pistol_outline(k)[3] * (1.0, flip)
    c.polygon(category, "steel", at, angle, [mag], 0.25, group=group)
    c.polygon(category, "brass", at, angle, [mag * 0.9 + mag.mean(axis=0) * 0.1], 0.2, group=group)
    front = mag.copy()
    front[2:] = mag[:2][::-1] * 0.6 + mag[2:] * 0.4
    c.polygon(category, "lead", at, angle, [front], 0.5, group=group)


def _handgun(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int) -> None:
    k = rng.uniform(17.0, 22.0) / 19.0
    width = rng.uniform(2.5, 3.0)
    polymer = rng.random() < 0.4  # polymer frames (Glock-style) are abs
    flip = 1.0 if rng.random() < 0.5 else -1.0  # either face may be up
    _, frame, hole, _, trigger = (p * (1.0, flip) for p in _pistol_outline(k))
    material, thickness = ("abs", 0.75) if polymer else ("steel", 0.6)
    c.polygon("handgun", material, at, angle, [frame], thickness, holes_cm=[hole], group=group)
    c.polygon("handgun", "steel", at, angle, [trigger], 0.6, group=group)
    _slide(c, at, angle, k, width, category="handgun", group=group, flip=flip)
    _magazine(c, at, angle, k, category="handgun", group=group, flip=flip)


def _gun_part(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int) -> None:
    k = rng.uniform(17.0, 22.0) / 19.0
    kind = rng.random()
    if kind < 0.4:
        length = rng.uniform(8.0, 15.0)
        c.cylinder("gun_part", "steel", at, angle, length, rng.uniform(0.6, 0.8), inner_cm=0.45, group=group)
        chamber = (-(length / 2 - 1.5), 0.0)
        c.plate("gun_part", "steel", at, angle, (3.0, 1.9), 1.4, offset_cm=chamber, group=group)
    elif kind < 0.7:
        _slide(c, at, angle, k, rng.uniform(2.5, 3.0), category="gun_part", group=group)
    else:
        _magazine(c, at, angle, k, category="gun_part", group=group)


def _knife(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int) -> None:
    total = rng.uniform(10.0, 30.0)
    blade_len = total * rng.uniform(0.5, 0.62)
    handle_len = total - blade_len
    width = float(np.clip(total * rng.uniform(0.1, 0.16), 1.5, 4.5))
    spine = rng.uniform(0.15, 0.3)
    ceramic = rng.random() < 0.2
    blade_material = "zirconia" if ceramic else "steel"
    handle_material = "abs" if ceramic else _pick(rng, ("abs", "wood", "steel"))
    shift = (blade_len - handle_len) / 2.0  # puts the knife's middle at `at`
    # Drop point: straight spine (v = 0), edge (v = width) curving up to the tip.
    t = np.linspace(0.0, 1.0, 10)[:, None]
    edge = np.hstack([blade_len * (1.0 - 0.45 * t), width * (0.3 + 0.7 * (1.0 - (1.0 - t) ** 2))])
    blade = np.concatenate([[[0.0, 0.0], [blade_len * 0.72, 0.0]], edge, [[0.0, width]]]) - (shift, width / 2)
    hv = float(np.clip(width * 0.75, 1.6, 2.8)) / 2
    end = -handle_len
    handle = np.array([[0.0, -hv], [end + 0.4, -hv], [end, -hv + 0.4], [end, hv - 0.4], [end + 0.4, hv], [0.0, hv]])
    handle += (-shift, width * 0.45 - width / 2)
    px_per_cm = c.px(1.0)

    def taper(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Full thickness near the spine, ground down to a tenth at the edge.
        depth = v * (1.0 / px_per_cm) + width / 2  # cm from the spine
        return np.clip(1.0 - 0.9 * (depth - 0.35 * width) / (0.65 * width), 0.1, 1.0).astype(np.float32)

    c.polygon("knife", blade_material, at, angle, [blade], spine, profile=taper, group=group)
    if handle_material == "steel":
        c.polygon("knife", "steel", at, angle, [handle], rng.uniform(0.4, 0.8), group=group)
    else:
        c.polygon("knife", handle_material, at, angle, [handle], rng.uniform(1.2, 2.2), group=group)
        if not ceramic:  # full tang and rivets
            c.polygon("knife", "steel", at, angle, [handle * 0.85 + handle.mean(axis=0) * 0.15], spine, group=group)
            for frac in (0.3, 0.7):
                rivet = _offset(at, angle, c.px(-shift - handle_len * frac), c.px(width * 0.45 - width / 2))
                c.disc("knife", "brass", rivet, 0.3, 1.6, group=group)


def _explosive(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int) -> None:
    density = rng.uniform(1.5, 1.9)
    thickness = rng.uniform(2.0, 6.0)
    size = (rng.uniform(10.0, 25.0), rng.uniform(6.0, 15.0))
    if rng.random() < 0.75:
        c.plate("explosive", "explosive", at, angle, size, thickness, bevel_cm=0.5, density=density, group=group)
    else:  # sticks: cylinders whose diameter is the charge thickness
        sticks = int(rng.integers(2, 5))
        for k in range(sticks):
            pos = _offset(at, angle, 0.0, c.px((k - (sticks - 1) / 2) * thickness * 1.05))
            c.cylinder("explosive", "explosive", pos, angle, size[0], thickness / 2, density=density, group=group)
        size = (size[0], sticks * thickness)
    # Detonator: a metal tube pushed into one end of the charge.
    det_at = _offset(at, angle, c.px(size[0] / 2 - 1.0), c.px(rng.uniform(-0.3, 0.3) * size[1]))
    shell = _pick(rng, ("copper", "aluminium"))
    c.cylinder("explosive", shell, det_at, angle, rng.uniform(4.0, 7.0), 0.35, inner_cm=0.3, group=group)
    # Battery a few cm off the charge, wires from it to the detonator.
    side = 1.0 if rng.random() < 0.5 else -1.0
    along, across = rng.uniform(-0.3, 0.5) * size[0], side * (size[1] / 2 + rng.uniform(3.0, 10.0))
    bat_at = _offset(at, angle, c.px(along), c.px(across))
    if rng.random() < 0.6:
        _cells(c, bat_at, angle, 1, category="explosive", group=group)
    else:  # 9 V block: steel case round its cells
        c.plate("explosive", "steel", bat_at, angle, (4.8, 2.6), 0.5, corner_cm=0.2, group=group)
    for wire in range(2):
        mid = _offset(bat_at, angle, c.px(rng.uniform(-4.0, 4.0)), c.px(rng.uniform(-3.0, 3.0)))
        pts = np.array([bat_at, mid, _offset(det_at, angle, c.px(rng.uniform(2.0, 4.0)), c.px(0.4 * wire - 0.2))])
        t = np.linspace(0.0, 1.0, 12)[:, None]
        path = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t**2 * pts[2]
        c.tube("explosive", path, [("copper", rng.uniform(0.03, 0.05)), ("pvc", 0.1)], group=group)
    if rng.random() < 0.5:  # timer or switch board
        c.plate("explosive", "pcb", _offset(bat_at, angle, c.px(5.0), 0.0), angle, (4.0, 3.0), 0.16, group=group)


def _narcotics(
    c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int, *, layers: int = 1, wrap: bool = True
) -> None:
    """Bricks wrapped in film (or swallowed-style pellets) of one density;
    ``layers`` stacks that many along the beam (cargo caches, drawn without
    the film: cargo masses only know the nominal-density materials)."""
    density = rng.uniform(1.1, 1.3)
    if rng.random() < 0.15:
        for _ in range(int(rng.integers(10, 30))):
            pos = _offset(at, rng.uniform(0.0, _TAU), c.px(rng.uniform(0.0, 6.0)), 0.0)
            turn = rng.uniform(0.0, _TAU)
            axes = (c.px(2.0), c.px(1.0))
            raster = shapes.ellipsoid(pos, semi_axes=axes, depth_cm=2.0 * layers, angle=turn, shape=c.shape)
            c.add("narcotics", "narcotic", raster, density=density, group=group)
        return
    bricks = int(rng.integers(1, 7))
    size = (rng.uniform(15.0, 25.0), rng.uniform(10.0, 15.0))
    thickness = rng.uniform(3.0, 6.0)
    cols = int(math.ceil(math.sqrt(bricks)))
    for b in range(bricks):
        du = (b % cols - (cols - 1) / 2) * size[0] * 1.05 + rng.normal(0.0, 0.8)
        dv = (b // cols - (bricks - 1) // cols / 2) * size[1] * 1.05 + rng.normal(0.0, 0.8)
        pos = _offset(at, angle, c.px(du), c.px(dv))
        turn = angle + rng.normal(0.0, 0.05)
        stack = thickness * layers
        c.plate("narcotics", "narcotic", pos, turn, size, stack, bevel_cm=1.0, density=density, group=group)
        if wrap:
            film = (size[0] + 0.4, size[1] + 0.4)
            c.plate("narcotics", "polyethylene", pos, turn, film, 0.06 * layers, corner_cm=1.7, group=group)


def _currency(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int) -> None:
    density = rng.uniform(0.9, 1.0)
    note = (15.6, 6.6) if rng.random() < 0.5 else (rng.uniform(12.0, 16.0), rng.uniform(6.2, 8.2))
    bundles = int(rng.integers(1, 6))
    rows = (bundles + 1) // 2
    for b in range(bundles):
        du = (b % 2 - 0.5) * note[0] * 1.05 if bundles > 1 else 0.0
        pos = _offset(at, angle, c.px(du), c.px((b // 2 - (rows - 1) / 2) * note[1] * 1.1))
        turn, thickness = angle + rng.normal(0.0, 0.05), rng.uniform(1.0, 4.0)
        c.plate("currency", "cellulose", pos, turn, note, thickness, density=density, group=group)


def _shielding(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, group: int) -> None:
    wall = rng.uniform(1.0, 1.5)  # top + bottom >= 2 cm of lead: opaque
    size = (rng.uniform(6.0, 15.0), rng.uniform(5.0, 12.0))
    if rng.random() < 0.35:  # a lead sheet
        c.plate("shielding", "lead", at, angle, size, 2.0 * wall, group=group)
        return
    height = rng.uniform(5.0, 12.0)
    contour = shapes.rounded_rect_contour(c.px(size[0]), c.px(size[1]), c.px(0.5))
    c.outline("shielding", "lead", at, angle, contour, 2.0 * wall, height, wall, group=group)
    if rng.random() < 0.5:  # something hidden inside, a threat of its own
        hidden = _pick(rng, ("gun_part", "narcotics"))
        inner = c.new_group()
        if hidden == "gun_part":
            c.cylinder("gun_part", "steel", at, angle, min(size[0] - 2 * wall, 12.0), 0.7, inner_cm=0.45, group=inner)
        else:
            inside, density = (size[0] - 2 * wall, size[1] - 2 * wall), rng.uniform(1.1, 1.3)
            cache = height - 2 * wall
            c.plate("narcotics", "narcotic", at, angle, inside, cache, bevel_cm=0.5, density=density, group=inner)


_THREATS: Mapping[str, ThreatFn] = MappingProxyType(
    {
        "handgun": _handgun,
        "gun_part": _gun_part,
        "knife": _knife,
        "explosive": _explosive,
        "narcotics": _narcotics,
        "currency": _currency,
        "shielding": _shielding,
    }
)
assert set(_THREATS) == set(THREAT_CATEGORIES)


# --------------------------------------------------------------------------
# Bags and parcels
# --------------------------------------------------------------------------


def _zip(c: _Canvas, contour: np.ndarray, at: Point, angle: float, rng: np.random.Generator) -> None:
    """A zip round ``contour`` (pixels, bag frame), in pieces to keep boxes small."""
    pts = shapes.to_image(contour, at, angle)
    material = _pick(rng, ("brass", "nylon", "nickel"))
    radius = 0.25 if material != "nylon" else 0.3
    cuts = np.linspace(0, len(pts), 5).round().astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):  # neighbouring pieces share a vertex
        c.tube("bag_shell", pts[np.arange(a, b + 1) % len(pts)], [(material, radius)])


def _suitcase(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, length: float, width: float) -> None:
    depth = rng.uniform(20.0, 30.0)
    hard = rng.random() < 0.3
    if hard:
        material, skin = "abs", rng.uniform(0.25, 0.35)
    else:
        material, skin = "nylon", rng.uniform(0.1, 0.2)
    contour = shapes.rounded_rect_contour(c.px(length), c.px(width), c.px(rng.uniform(4.0, 9.0)), points_per_side=3)
    c.outline("bag_shell", material, at, angle, contour, 2 * skin, depth, skin)
    inset = shapes.rounded_rect_contour(c.px(length - 2.0), c.px(width - 2.0), c.px(4.0), points_per_side=3)
    _zip(c, inset, at, angle, rng)
    # Trolley: two telescopic aluminium tubes along the back, handle at the top.
    spacing = rng.uniform(7.0, 11.0)
    for side in (-1.0, 1.0):
        rod = _offset(at, angle, c.px(-3.0), side * c.px(spacing))
        # Outer and collapsed inner tube: one tube with both walls' metal.
        c.cylinder("bag_frame", "aluminium", rod, angle, length - 10.0, 1.2, inner_cm=0.98)
    handle = (4.0, 2 * spacing + 5.0)
    c.plate("bag_frame", "abs", at, angle, handle, 1.0, offset_cm=(length / 2 - 6.0, 0.0), corner_cm=1.0)
    # Wheels at the bottom end: housing, rubber wheel seen side-on, axle.
    corners = (-1.0, 1.0) if rng.random() < 0.5 else (-1.0,)
    for end in corners:
        for side in (-1.0, 1.0):
            pos = _offset(at, angle, end * c.px(length / 2 - 4.0), side * c.px(width / 2 - 4.0))
            c.plate("bag_frame", "abs", pos, angle, (7.0, 6.0), 1.0, corner_cm=1.5)
            c.cylinder("bag_frame", "rubber", pos, angle + math.pi / 2, 2.0, rng.uniform(2.2, 3.2))
            c.cylinder("bag_frame", "steel", pos, angle + math.pi / 2, 3.5, 0.3)


def _backpack(c: _Canvas, rng: np.random.Generator, at: Point, angle: float, length: float, width: float) -> None:
    depth = rng.uniform(15.0, 25.0)
    material, skin = "nylon", rng.uniform(0.1, 0.15)
    contour = shapes.rounded_rect_contour(c.px(length), c.px(width), c.px(width * 0.3), points_per_side=3)
    c.outline("bag_shell", material, at, angle, contour, 2 * skin, depth, skin)
    main_zip = shapes.rounded_rect_contour(c.px(length - 3.0), c.px(width - 3.0), c.px(width * 0.28), points_per_side=3)
    _zip(c, main_zip, at, angle, rng)
    pocket = _offset(at, angle, -c.px(length * 0.15), 0.0)
    _zip(c, shapes.rounded_rect_contour(c.px(length * 0.45), c.px(width * 0.7), c.px(3.0)), pocket, angle, rng)
    for side in (-1.0, 1.0):  # shoulder straps and their buckles
        strap = _offset(at, angle, c.px(length * 0.05), side * c.px(width * 0.22))
        c.plate("bag_shell", "nylon", strap, angle, (length * 0.75, 6.0), 0.2)  # webbing
        c.plate("bag_shell", "polyethylene", strap, angle, (length * 0.5, 5.5), 0.15, corner_cm=2.0)  # foam padding
        c.plate("bag_shell", "pom", strap, angle, (3.0, 4.0), 0.5, offset_cm=(-length * 0.35, 0.0), corner_cm=0.3)
    if rng.random() < 0.4:  # aluminium stays in the back panel
        for side in (-1.0, 1.0):
            c.plate("bag_frame", "aluminium", at, angle, (length * 0.8, 2.5), 0.4, offset_cm=(0.0, side * width * 0.12))


def _bag_shell(c: _Canvas, rng: np.random.Generator) -> tuple[_Frame, str]:
    """A suitcase (60 %) or backpack lying roughly square to the belt, long side along the longer image axis."""
    rows_cm, cols_cm = (n * c.pixel_mm / 10.0 for n in c.shape)
    suitcase = rng.random() < 0.6
    length = min(rng.uniform(60.0, 85.0) if suitcase else rng.uniform(42.0, 58.0), 0.9 * max(rows_cm, cols_cm))
    width = min(length * rng.uniform(0.6, 0.75), 0.85 * min(rows_cm, cols_cm))
    turn = math.pi / 2 if rows_cm > cols_cm else 0.0
    angle = turn + rng.normal(0.0, 0.06) + (math.pi if rng.random() < 0.5 else 0.0)
    at = (c.shape[0] / 2 + rng.normal(0.0, 0.03) * c.shape[0], c.shape[1] / 2 + rng.normal(0.0, 0.03) * c.shape[1])
    (_suitcase if suitcase else _backpack)(c, rng, at, angle, length, width)
    frame = _Frame(at, angle, c.px(max(length / 2 - 3.0, length / 4)), c.px(max(width / 2 - 3.0, width / 4)))
    return frame, "suitcase" if suitcase else "backpack"


def _parcel_shell(c: _Canvas, rng: np.random.Generator) -> _Frame:
    rows_cm, cols_cm = (n * c.pixel_mm / 10.0 for n in c.shape)
    room = 0.85 * min(rows_cm, cols_cm)
    length = min(rng.uniform(25.0, 60.0), room)
    width = min(length * rng.uniform(0.55, 0.9), room)
    height = rng.uniform(10.0, 40.0)
    board = rng.uniform(0.3, 0.7)  # corrugated board: about a fifth is paper
    angle = rng.uniform(0.0, _TAU)
    half_r, half_c = (c.px(h) for h in shapes.rotated_half_extent(length / 2, width / 2, angle))
    at = (
        c.shape[0] / 2 + rng.uniform(-1.0, 1.0) * max(c.shape[0] / 2 - half_r, 0.0) * 0.8,
        c.shape[1] / 2 + rng.uniform(-1.0, 1.0) * max(c.shape[1] / 2 - half_c, 0.0) * 0.8,
    )
    contour = shapes.rounded_rect_contour(c.px(length), c.px(width), c.px(0.3))
    c.outline("parcel_shell", "cellulose", at, angle, contour, 2 * board * 0.2, height * 0.2, board)
    c.plate("parcel_shell", "polyethylene", at, angle, (length, 5.0), 0.01)  # tape over the top and bottom
    return _Frame(at, angle, c.px(max(length / 2 - 1.5, length / 4)), c.px(max(width / 2 - 1.5, width / 4)))


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")


def bag_scene(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (768, 1024),
    pixel_mm: float = 1.0,
    kind: str = "bag",
    threat_rate: float = 0.5,
    clear_bag_rate: float = 0.1,
    max_threats: int = 2,
) -> Scene:
    """A checked bag or a parcel on the belt, packed with clutter and maybe threats.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    shape : (rows, cols)
        Scene size in pixels.
    pixel_mm : float
        Pixel pitch in mm.
    kind : {"bag", "parcel"}
        A suitcase or backpack (fabric or hard shell, trolley rods, wheels,
        zips; 10-30 items) or a cardboard box (1-8 items).
    threat_rate : float
        Probability that the scene holds threats (then 1 to ``max_threats``,
        of categories drawn uniformly; half are put under bulky clutter).
    clear_bag_rate : float
        Probability of a "clear" bag: 1-5 light items (1-3 in a parcel).
    max_threats : int
        Most threats in one scene.

    Returns
    -------
    Scene
        ``manifest`` is ``None``; ``manifest_truth`` records
        ``{"bag_type", "clear", "clutter_items", "threats"}``.
    """
    if kind not in ("bag", "parcel"):
        raise ValueError(f"kind must be 'bag' or 'parcel', got {kind!r}")
    _check_rate("threat_rate", threat_rate)
    _check_rate("clear_bag_rate", clear_bag_rate)
    if max_threats < 1:
        raise ValueError(f"max_threats must be at least 1, got {max_threats}")
    if pixel_mm <= 0 or min(shape) < 8:
        raise ValueError("pixel_mm must be positive and the scene at least 8 x 8 pixels")
    c = _Canvas((int(shape[0]), int(shape[1])), float(pixel_mm))
    clear = bool(rng.random() < clear_bag_rate)
    if kind == "bag":
        frame, bag_type = _bag_shell(c, rng)
        names = [n for n, item in _CLUTTER.items() if item.light] if clear else list(_CLUTTER)
        count = int(rng.integers(1, 6)) if clear else int(rng.integers(10, 31))
    else:
        frame, bag_type = _parcel_shell(c, rng), "parcel"
        names = [n for n in _PARCEL_ITEMS if _CLUTTER[n].light] if clear else list(_PARCEL_ITEMS)
        count = int(rng.integers(1, 4)) if clear else int(rng.integers(1, 9))
    weights = np.array([_CLUTTER[n].weight for n in names])
    anchors: list[Point] = []  # bulky items a threat can be slipped under
    for index in rng.choice(len(names), size=count, p=weights / weights.sum()):
        item = _CLUTTER[names[int(index)]]
        at = frame.sample(rng, c.px(item.margin_cm))
        item.draw(c, rng, frame, at, rng.uniform(0.0, _TAU))
        if item.bulky:
            anchors.append(at)
    threats: list[str] = []
    if rng.random() < threat_rate:
        categories = list(THREAT_CATEGORIES)
        for _ in range(int(rng.integers(1, max_threats + 1))):
            category = _pick(rng, categories)
            if anchors and rng.random() < 0.5:
                base = anchors[int(rng.integers(len(anchors)))]
                at = (base[0] + rng.normal(0.0, c.px(3.0)), base[1] + rng.normal(0.0, c.px(3.0)))
            else:
                at = frame.sample(rng, c.px(_THREAT_MARGIN_CM))
            _THREATS[category](c, rng, at, rng.uniform(0.0, _TAU), c.new_group())
            threats.append(category)
    truth = {"bag_type": bag_type, "clear": clear, "clutter_items": count, "threats": threats}
    return Scene(kind=kind, shape=c.shape, pixel_mm=c.pixel_mm, objects=c.objects, manifest=None, manifest_truth=truth)


# --------------------------------------------------------------------------
# Cargo containers
# --------------------------------------------------------------------------

# ISO 6346 letter values: 10 upwards, skipping multiples of 11.
_ISO_LETTERS = {ch: v for ch, v in zip(string.ascii_uppercase, [v for v in range(10, 39) if v % 11])}

# size: (outside length m, outside height m, tare kg range)
_CONTAINERS = {"20ft": (6.058, 2.591, (2150.0, 2350.0)), "40ft": (12.192, 2.591, (3650.0, 3900.0))}
_CONTAINER_WIDTH_CM = 235.0  # inside width: what the beam crosses


def iso6346_check_digit(code: str) -> int:
    """Check digit of a container number's first 10 characters (ISO 6346).

    Letters count 10, 12, 13... (multiples of 11 skipped), digits their
    value; each is weighted by ``2**position``; the sum mod 11 mod 10 is
    the check digit.
    """
    code = code.upper()
    if len(code) != 10:
        raise ValueError(f"need owner code, category and serial (10 characters), got {code!r}")
    total = sum((_ISO_LETTERS[ch] if ch.isalpha() else int(ch)) << k for k, ch in enumerate(code))
    return total % 11 % 10


def _container_number(rng: np.random.Generator) -> str:
    owner = "".join(string.ascii_uppercase[int(i)] for i in rng.integers(0, 26, 3))
    serial = "".join(str(int(d)) for d in rng.integers(0, 10, 6))
    code = owner + "U" + serial
    return code + str(iso6346_check_digit(code))


def _container_shell(c: _Canvas, rng: np.random.Generator, x0: float, x1: float, top: float, bottom: float) -> None:
    """Side view (beam across the width) of a steel box container.

    Side walls are crossed twice (corrugated 2 mm sheet); roof, floor and
    cross members are seen edge-on, so the beam runs the whole width
    through them. Thicknesses are per-pixel averages, so sheets thinner
    than a pixel keep their mass.
    """
    px = c.px
    width, height = x1 - x0, bottom - top
    mid = ((top + bottom) / 2, (x0 + x1) / 2)
    sheet = rng.uniform(0.16, 0.2)
    pitch = px(27.8)

    def corrugation(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Trapezoid corrugation: the slanted faces are crossed obliquely.
        return (1.0 + 0.4 * (np.abs(np.sin(u * np.float32(math.pi / pitch))) < 0.5)).astype(np.float32)

    def steel(centre: Point, length: float, size: float, thickness_cm: float, material: str = "steel") -> None:
        raster = shapes.plate(centre, length=length, width=size, thickness_cm=thickness_cm, shape=c.shape)
        c.add("container_shell", material, raster)

    c.plate("container_shell", "steel", mid, 0.0, (width / px(1), height / px(1)), 2 * sheet, profile=corrugation)
    bands = (
        (top, px(4.0), _CONTAINER_WIDTH_CM * sheet / 4.0 * 1.2),  # corrugated roof, edge-on
        (top + px(3.0), px(6.0), 3.0),  # top side rails
        (bottom - px(16.0), px(16.0), 1.0),  # bottom side rails: two webs
    )
    for row, size, thickness in bands:
        steel((row + size / 2, mid[1]), width, size, thickness)
    floor_top = bottom - px(16.0)
    steel((floor_top + px(1.4), mid[1]), width, px(2.8), _CONTAINER_WIDTH_CM, "wood")  # plywood floor
    # Cross members every ~30 cm: C-sections seen end-on along the beam.
    for x in np.arange(x0 + px(20.0), x1 - px(10.0), px(30.0)):
        centre = (floor_top + px(2.8) + px(6.0), float(x))
        steel(centre, px(0.45), px(12.0), _CONTAINER_WIDTH_CM)  # web
        for dv in (-px(5.8), px(5.8)):
            steel((centre[0] + dv, float(x) + px(2.0)), px(4.5), px(0.45), _CONTAINER_WIDTH_CM)  # flanges
    # Front end wall and rear doors (corrugated sheet edge-on) with the
    # corner posts at each end; then the doors' four locking bars.
    for edge, w in ((x0, px(5.0)), (x1 - px(8.0), px(8.0))):
        sheet_edge_on = _CONTAINER_WIDTH_CM * sheet / (w / px(1.0)) * 1.4
        steel((mid[0], edge + w / 2), w, height, sheet_edge_on + 6.0)
    for _ in range(4):
        bar = (mid[0], x1 - px(3.0) + rng.uniform(-1.0, 1.0) * px(1.5))
        raster = shapes.cylinder(
            bar,
            length=height - px(10.0),
            radius=px(1.35),
            inner_radius=px(1.0),
            angle=math.pi / 2,
            pixel_mm=c.pixel_mm,
            shape=c.shape,
        )
        c.add("container_shell", "steel", raster)


class _Goods(NamedTuple):
    components: tuple[tuple[str, float, float], ...]  # (material, fill fraction of the depth: low, high)
    unit_m: tuple[float, float]  # length of a pallet or crate along the container
    height_m: tuple[float, float]
    roughness: float  # relative thickness noise


_GOODS: Mapping[str, _Goods] = MappingProxyType(
    {
        "furniture": _Goods((("wood", 0.12, 0.3), ("cellulose", 0.02, 0.04)), (0.5, 2.0), (0.6, 2.2), 0.4),
        "machinery": _Goods((("steel", 0.01, 0.03), ("wood", 0.03, 0.06)), (0.8, 2.5), (0.8, 2.0), 0.3),
        "textiles": _Goods((("cotton", 0.6, 0.9), ("cellulose", 0.02, 0.03)), (1.0, 1.25), (1.2, 2.2), 0.15),
        "ceramics": _Goods((("glass", 0.25, 0.45), ("cellulose", 0.02, 0.04)), (1.0, 1.25), (0.4, 1.0), 0.1),
        "food": _Goods((("water", 0.45, 0.65), ("cellulose", 0.03, 0.05)), (1.0, 1.25), (1.0, 1.8), 0.12),
        "electronics": _Goods(
            (("abs", 0.04, 0.08), ("pcb", 0.01, 0.02), ("aluminium", 0.005, 0.015), ("cellulose", 0.05, 0.08)),
            (1.0, 1.25),
            (1.0, 2.0),
            0.3,
        ),
    }
)


def _cargo_unit(
    c: _Canvas, rng: np.random.Generator, goods: str, x0: float, x1: float, floor: float, height: float, depth_cm: float
) -> None:
    """One pallet or crate of ``goods`` between columns ``x0`` and ``x1`` (pixels), ``depth_cm`` deep."""
    spec = _GOODS[goods]
    base = floor
    if goods not in ("furniture", "machinery"):  # on a wooden pallet: deck boards about a third of the depth
        centre, deck_height = (floor - c.px(7.2), (x0 + x1) / 2), c.px(14.4)
        deck = shapes.plate(centre, length=x1 - x0, width=deck_height, thickness_cm=depth_cm * 0.3, shape=c.shape)
        c.add("pallet", "wood", deck)
        base = floor - c.px(14.4)
    centre = (base - height / 2, (x0 + x1) / 2)
    for material, lo, hi in spec.components:
        raster = shapes.textured_slab(
            rng,
            centre,
            length=x1 - x0,
            width=height,
            thickness_cm=depth_cm * rng.uniform(lo, hi),
            angle=0.0,
            shape=c.shape,
            roughness=spec.roughness,
            cell=c.px(25.0),
        )
        c.add(goods, material, raster)
    if goods == "machinery":  # tanks, motors and shafts: hollow steel cylinders lying along the length
        for _ in range(int(rng.integers(1, 4))):
            radius = min(c.px(rng.uniform(10.0, 45.0)), height / 2)
            length = min(x1 - x0, c.px(rng.uniform(50.0, 200.0)))
            at = (base - radius, x0 + length / 2 + rng.random() * max(x1 - x0 - length, 0.0))
            wall = min(c.px(rng.uniform(1.0, 3.0)), radius)
            raster = shapes.cylinder(
                at,
                length=length,
                radius=radius,
                inner_radius=radius - wall,
                angle=0.0,
                pixel_mm=c.pixel_mm,
                shape=c.shape,
            )
            c.add(goods, "steel", raster)


def _goods_mass_kg(objects: Sequence[SceneObject], pixel_mm: float) -> float:
    """Mass (kg) of the non-shell objects at the nominal densities."""
    grams = sum(
        object_mass_g(o, _density(o, _NOMINAL_DENSITY_G_CM3), pixel_mm) for o in objects if not _is_shell(o.category)
    )
    return grams / 1000.0


def cargo_scene(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (2440, 640),
    pixel_mm: float = 5.0,
    empty_rate: float = 0.15,
    mismatch_rate: float = 0.25,
) -> Scene:
    """A 20 or 40 ft container seen from the side, with its manifest and the truth.

    The beam crosses the container from side to side (2.35 m): goods are
    tens of cm to 2 m thick along it, the corrugated side walls are crossed
    twice, the roof, floor and cross members edge-on. Goods come as
    pallets or crates of one type each (``GOODS_TYPES``).

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    shape : (rows, cols)
        Scene size in pixels. As for every scene, rows run along the travel
        direction (the container's length) and columns along the detector
        array (its height, column 0 at the roof side). The default is a
        12.2 m scan of a 3.2 m detector column at 5 mm.
    pixel_mm : float
        Requested pixel pitch in mm. A 40 ft box is drawn only when it fits
        and a 20 ft one otherwise; if even that does not fit the scene is
        drawn at the coarser pitch that does and ``Scene.pixel_mm`` says
        so.
    empty_rate : float
        Probability of a truly empty (and declared empty) container.
    mismatch_rate : float
        Probability of a deliberate mismatch, one of ``undeclared_goods``
        (a second goods type packed behind the declared one along the beam,
        and/or hidden narcotics, marked as threats), ``wrong_weight``
        (declared gross off by 25-50 %) or ``false_empty`` (declared empty,
        goods inside). ``empty_rate + mismatch_rate`` must not exceed 1.

    Returns
    -------
    Scene
        ``manifest = {"container_number", "size", "goods", "gross_kg",
        "tare_kg"}``, the declaration: gross weight = cargo + tare.
        ``manifest_truth = {"goods": [types present], "cargo_kg",
        "gross_kg", "mismatch"}``; cargo mass is every non-shell object
        (goods, pallets, contraband) at the nominal densities. An honest
        declaration is within 3 % of the true gross weight.
    """
    _check_rate("empty_rate", empty_rate)
    _check_rate("mismatch_rate", mismatch_rate)
    if empty_rate + mismatch_rate > 1.0:
        raise ValueError("empty_rate + mismatch_rate must not exceed 1")
    rows, cols = int(shape[0]), int(shape[1])

    def pitch_for(size: str) -> float:
        length_m, height_m, _ = _CONTAINERS[size]
        return max(length_m * 1000.0 / rows, height_m * 1000.0 / (cols * 0.95))

    fitting = [s for s in _CONTAINERS if pitch_for(s) <= pixel_mm]
    size = _pick(rng, fitting) if fitting else "20ft"
    pitch = float(pixel_mm) if fitting else pitch_for("20ft")
    # Drawn side-on, height down the rows and length across the columns,
    # then transposed to the scene's (travel, detector) axes at the end.
    c = _Canvas((cols, rows), pitch)
    length_m, height_m, tare_range = _CONTAINERS[size]
    tare = rng.uniform(*tare_range)

    length_px, height_px = c.px(length_m * 100.0), c.px(height_m * 100.0)
    x0 = (rows - length_px) / 2 * (1.0 + rng.uniform(-0.5, 0.5))
    x1 = x0 + length_px
    bottom = cols - max(0.02 * cols, (cols - height_px) / 2)
    top = bottom - height_px
    _container_shell(c, rng, x0, x1, top, bottom)

    u = rng.random()
    if u < mismatch_rate:
        mismatch = _pick(rng, MISMATCH_TYPES[1:])
    else:
        mismatch = "none"
    empty = mismatch == "none" and rng.random() < empty_rate / max(1.0 - mismatch_rate, 1e-12)

    declared = "empty" if empty else _pick(rng, GOODS_TYPES)
    extra = None
    hide_drugs = False
    if mismatch == "undeclared_goods":
        what = rng.random()
        extra = _pick(rng, [g for g in GOODS_TYPES if g != declared]) if what < 0.8 else None
        hide_drugs = what >= 0.5
    present: set[str] = set()
    declared_mass = 0.0
    if not empty:
        floor = bottom - c.px(16.0)
        inner0, inner1 = x0 + c.px(10.0), x1 - c.px(12.0)
        usable = (inner1 - inner0) * rng.uniform(0.5, 1.0)
        room = c.px(height_m * 100.0 - 25.0)
        x = inner0
        (l_lo, l_hi), (h_lo, h_hi) = _GOODS[declared].unit_m, _GOODS[declared].height_m
        while x < inner0 + usable:
            unit = c.px(rng.uniform(l_lo, l_hi) * 100.0)
            if x + unit > inner1:
                break
            height = min(c.px(rng.uniform(h_lo, h_hi) * 100.0), room)
            depth = rng.uniform(80.0, 230.0)
            start = len(c.objects)
            if extra is not None and rng.random() < 0.5:
                # Undeclared goods packed behind the declared ones along the beam.
                share = rng.uniform(0.3, 0.7)
                _cargo_unit(c, rng, declared, x, x + unit, floor, height, depth * share)
                declared_mass += _goods_mass_kg(c.objects[start:], c.pixel_mm)
                _cargo_unit(c, rng, extra, x, x + unit, floor, height, depth * (1.0 - share))
                present.add(extra)
            else:
                _cargo_unit(c, rng, declared, x, x + unit, floor, height, depth)
                declared_mass += _goods_mass_kg(c.objects[start:], c.pixel_mm)
            present.add(declared)
            x += unit + c.px(rng.uniform(0.0, 10.0))
        if extra is not None and extra not in present:  # make sure the extra goods made it in
            depth = rng.uniform(80.0, 200.0)
            _cargo_unit(c, rng, extra, inner1 - c.px(110.0), inner1, floor, min(c.px(120.0), room), depth)
            present.add(extra)
        if hide_drugs:
            at = (floor - rng.uniform(0.2, 0.8) * room, rng.uniform(inner0, max(x, inner0 + c.px(60.0))))
            _narcotics(c, rng, at, rng.uniform(0.0, _TAU), c.new_group(), layers=int(rng.integers(3, 11)), wrap=False)
            present.add("narcotics")
    cargo_kg = _goods_mass_kg(c.objects, c.pixel_mm)
    true_gross = cargo_kg + tare
    if mismatch == "wrong_weight":
        off = rng.uniform(0.25, 0.5)
        lower = true_gross * (1.0 - off)
        declared_gross = lower if rng.random() < 0.5 and lower > tare * 1.05 else true_gross * (1.0 + off)
    elif mismatch == "false_empty" or empty:
        declared_gross = tare * rng.uniform(0.99, 1.01)
    elif mismatch == "undeclared_goods":
        declared_gross = (declared_mass + tare) * rng.uniform(0.97, 1.03)
    else:
        declared_gross = true_gross * rng.uniform(0.97, 1.03)
    manifest = {
        "container_number": _container_number(rng),
        "size": size,
        "goods": "empty" if (empty or mismatch == "false_empty") else declared,
        "gross_kg": round(float(declared_gross), 1),
        "tare_kg": round(float(tare), 1),
    }
    truth = {"goods": sorted(present), "cargo_kg": float(cargo_kg), "gross_kg": float(true_gross), "mismatch": mismatch}
    objects = [_transposed(o) for o in c.objects]
    return Scene("container", (rows, cols), c.pixel_mm, objects=objects, manifest=manifest, manifest_truth=truth)


def _transposed(obj: SceneObject) -> SceneObject:
    """The object with rows and columns swapped."""
    r0, c0, r1, c1 = obj.box
    return dataclasses.replace(obj, box=(c0, r0, c1, r1), thickness_cm=np.ascontiguousarray(obj.thickness_cm.T))


# --------------------------------------------------------------------------
# CT bags
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Volume:
    """Objects of one CT scene and a height map that stacks them (mm)."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    floor_mm: float
    objects: list[VolumeObject] = dataclasses.field(default_factory=list)
    groups: int = 0
    height: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.height = np.full(self.shape[1:], self.floor_mm, dtype=np.float64)

    def new_group(self) -> int:
        self.groups += 1
        return self.groups

    def rest_on_top(self, yx_mm: Point, half_extent_mm: float) -> float:
        """Height (mm) of the top of what is already packed under a footprint."""
        vy, vx = self.voxel_mm[1], self.voxel_mm[2]
        y0, y1 = max(int((yx_mm[0] - half_extent_mm) / vy), 0), max(int(math.ceil((yx_mm[0] + half_extent_mm) / vy)), 1)
        x0, x1 = max(int((yx_mm[1] - half_extent_mm) / vx), 0), max(int(math.ceil((yx_mm[1] + half_extent_mm) / vx)), 1)
        patch = self.height[y0:y1, x0:x1]
        return float(patch.max()) if patch.size else self.floor_mm

    def add(
        self,
        category: str,
        material: str,
        raster: shapes.Raster3 | None,
        *,
        density: float | None = None,
        group: int | None = None,
        stack: bool = True,
    ) -> None:
        if raster is None:
            return
        box, occ = raster
        self.objects.append(VolumeObject(category, material, box, occ, density, group))
        if stack:  # what is packed later rests on this
            top = (box[0] + np.flatnonzero(occ.any(axis=(1, 2)))[-1] + 1) * self.voxel_mm[0]
            footprint = occ.any(axis=0)
            region = self.height[box[1] : box[4], box[2] : box[5]]
            region[footprint] = np.maximum(region[footprint], top)


def _ct_item(
    vol: _Volume,
    rng: np.random.Generator,
    name: str,
    yx: Point,
    angle: float,
    *,
    ceiling: float,
    room: tuple[float, float],
    group: int | None,
) -> None:
    """Pack one item (or threat) at ``yx`` (mm), resting on what lies below.

    Clutter that would stick out of the lid is left out; a threat always
    goes in (pressed under the lid if need be). Sizes are in mm, as
    (height, width, length), and no item is longer or wider than the
    bag's inside, ``room`` = (length, width) mm.
    """
    shape, vox = vol.shape, vol.voxel_mm

    def base(height: float, radius: float) -> float | None:
        z = vol.rest_on_top(yx, radius)
        if z + height <= ceiling:
            return z
        return None if group is None else max(ceiling - height, vol.floor_mm)

    def cuboid(
        z: float, size: tuple[float, float, float], *, at: Point = yx, turn: float = 0.0, wall: float = 0.0
    ) -> shapes.Raster3 | None:
        centre = (z + size[0] / 2, at[0], at[1])
        return shapes.box_volume(centre, size_mm=size, angle=angle + turn, shape=shape, voxel_mm=vox, wall_mm=wall)

    def solid(category: str, material: str, size: tuple[float, float, float], density: float | None = None) -> None:
        z = base(size[0], math.hypot(size[1], size[2]) / 2)
        if z is not None:
            vol.add(category, material, cuboid(z, size), density=density, group=group)

    def size(height: tuple[float, float], width: tuple[float, float], length: tuple[float, float]) -> tuple[float, ...]:
        h, w, l = (rng.uniform(*span) for span in (height, width, length))
        return h, min(w, room[1]), min(l, room[0])

    if name == "clothes":
        axes = tuple(a / 2 for a in size((30.0, 70.0), (160.0, 300.0), (200.0, 400.0)))
        z = base(2 * axes[0], axes[2])
        if z is not None:
            centre = (z + axes[0], yx[0], yx[1])
            raster = shapes.ellipsoid_volume(centre, semi_axes_mm=axes, angle=angle, shape=shape, voxel_mm=vox)
            vol.add("clothes", "cotton", raster)
    elif name == "book":
        solid("book", "cellulose", size((10.0, 40.0), (110.0, 210.0), (150.0, 300.0)))
    elif name == "shoes":
        solid("shoes", "rubber", size((15.0, 30.0), (85.0, 110.0), (240.0, 310.0)))
    elif name == "bottle":
        radius, length = min(rng.uniform(30.0, 45.0), room[1] / 2), min(rng.uniform(180.0, 300.0), room[0])
        z = base(2 * radius, length / 2)
        if z is not None:
            g, centre = vol.new_group(), (z + radius, yx[0], yx[1])
            bore = radius - 0.4
            for material, outer, inner, stack in (("pet", radius, bore, True), ("water", bore, 0.0, False)):
                raster = shapes.cylinder_volume(
                    centre,
                    length_mm=length,
                    radius_mm=outer,
                    inner_radius_mm=inner,
                    angle=angle,
                    shape=shape,
                    voxel_mm=vox,
                )
                vol.add("bottle", material, raster, group=g, stack=stack)
    elif name == "laptop":
        outer = size((15.0, 22.0), (210.0, 260.0), (300.0, 380.0))
        z = base(outer[0], math.hypot(outer[1], outer[2]) / 2)
        if z is not None:
            g = vol.new_group()
            for material, z_part, thick, frac_v, frac_u in (
                ("aluminium", z, 2.0, 1.0, 1.0),  # base
                ("pcb", z + 3.0, 1.5, 0.5, 0.6),
                ("li_ion", z + 5.0, 6.0, 0.35, 0.6),
                ("aluminium", z + outer[0] - 2.0, 2.0, 1.0, 1.0),  # lid
            ):
                part = cuboid(z_part, (thick, outer[1] * frac_v, outer[2] * frac_u))
                vol.add("laptop", material, part, group=g, stack=material == "aluminium")
    elif name == "explosive":
        solid("explosive", "explosive", size((20.0, 60.0), (60.0, 150.0), (100.0, 250.0)), rng.uniform(1.5, 1.9))
    elif name == "handgun":
        # Slide and grip as hollow steel boxes (walls ~4 mm), lying flat.
        k = min(rng.uniform(17.0, 22.0) / 19.0, room[0] / 200.0)
        width = rng.uniform(25.0, 30.0)
        z = base(width, 110.0 * k)
        if z is not None:
            vol.add("handgun", "steel", cuboid(z, (width, 30.0 * k, 190.0 * k), wall=4.0), group=group)
            grip = _offset(yx, angle, -65.0 * k, 60.0 * k)
            grip_box = cuboid(z, (width, 105.0 * k, 50.0 * k), at=grip, turn=0.3, wall=4.0)
            vol.add("handgun", "steel", grip_box, group=group)
    elif name == "knife":
        blade = "steel" if rng.random() < 0.8 else "zirconia"
        solid("knife", blade, size((1.5, 3.0), (15.0, 40.0), (100.0, 250.0)))
    elif name == "narcotics":
        solid("narcotics", "narcotic", size((30.0, 60.0), (100.0, 150.0), (150.0, 250.0)), rng.uniform(1.1, 1.3))
    else:
        raise ValueError(f"unknown CT item {name!r}")


_CT_CLUTTER = ("clothes", "clothes", "clothes", "book", "bottle", "laptop", "shoes")
_CT_THREATS = ("explosive", "handgun", "knife", "narcotics")


def ct_scene(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int, int] = (64, 128, 128),
    voxel_mm: tuple[float, float, float] = (4.0, 4.0, 4.0),
    threat_rate: float = 0.5,
) -> VolumeScene:
    """A bag for a CT scanner: shell, clothes, bottles, a laptop, maybe threats.

    Axis 0 is vertical: the bag lies on the belt and items are packed
    bottom-up on a height map (each rests on what is under it), so solids
    do not interpenetrate. All shapes turn about the vertical axis.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness.
    shape : (slices, rows, cols)
        Volume size in voxels.
    voxel_mm : (z, y, x)
        Voxel size in mm.
    threat_rate : float
        Probability of 1-2 threats: an explosive block (1.5-1.9 g/cm^3), a
        handgun-like steel block, a knife plate or a narcotics brick.
    """
    _check_rate("threat_rate", threat_rate)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    voxel_mm = (float(voxel_mm[0]), float(voxel_mm[1]), float(voxel_mm[2]))
    extent = [n * v for n, v in zip(shape, voxel_mm)]
    height = extent[0] * rng.uniform(0.6, 0.85)
    length = extent[2] * rng.uniform(0.75, 0.92)
    width = extent[1] * rng.uniform(0.6, 0.85)
    angle = rng.normal(0.0, 0.08)
    centre = (extent[1] / 2 + rng.normal(0.0, 0.02) * extent[1], extent[2] / 2 + rng.normal(0.0, 0.02) * extent[2])
    floor = (extent[0] - height) / 2
    vol = _Volume(shape, voxel_mm, floor + 3.0)
    shell = shapes.box_volume(
        (floor + height / 2, centre[0], centre[1]),
        size_mm=(height, width, length),
        angle=angle,
        shape=shape,
        voxel_mm=voxel_mm,
        wall_mm=3.0,
    )
    vol.add("bag_shell", "nylon", shell, stack=False)

    names = [_pick(rng, _CT_CLUTTER) for _ in range(int(rng.integers(4, 11)))]
    threats = [_pick(rng, _CT_THREATS) for _ in range(int(rng.integers(1, 3)))] if rng.random() < threat_rate else []
    order = names + threats
    # Threats go in among the clutter, so some end up underneath.
    reach_u, reach_v = 0.3 * length, 0.25 * width
    room = (length - 10.0, width - 10.0)
    for k in rng.permutation(len(order)):
        name = order[int(k)]
        threat = name in _CT_THREATS
        # The lowest of three spots: items settle where there is room.
        spots = [
            _offset(centre, angle, rng.uniform(-reach_u, reach_u), rng.uniform(-reach_v, reach_v)) for _ in range(3)
        ]
        yx = min(spots, key=lambda p: vol.rest_on_top(p, 80.0))
        # Bulky clutter is packed along the bag; threats lie any way round.
        turn = rng.uniform(0.0, _TAU) if threat else rng.normal(0.0, 0.25) + math.pi * int(rng.integers(2))
        group = vol.new_group() if threat else None
        _ct_item(vol, rng, name, yx, angle + turn, ceiling=floor + height - 3.0, room=room, group=group)
    return VolumeScene(shape=shape, voxel_mm=voxel_mm, objects=vol.objects)


# --------------------------------------------------------------------------
# Maps, masses and annotations
# --------------------------------------------------------------------------


def _density(obj: SceneObject | VolumeObject, densities_g_cm3: Mapping[str, float]) -> float:
    if obj.density_g_cm3 is not None:
        return float(obj.density_g_cm3)
    try:
        return float(densities_g_cm3[obj.material])
    except KeyError:
        raise KeyError(f"no density for material {obj.material!r} of a {obj.category!r} object") from None


def object_mass_g(obj: SceneObject, density_g_cm3: float, pixel_mm: float) -> float:
    """Mass (g) of a 2D scene object: ``density * sum(thickness_cm) * (pixel_mm / 10)^2``.

    ``density_g_cm3`` is the caller's: the object's override, or its
    material's nominal density when it has none.
    """
    return float(density_g_cm3) * float(obj.thickness_cm.sum(dtype=np.float64)) * (pixel_mm / 10.0) ** 2


def volume_object_mass_g(obj: VolumeObject, density_g_cm3: float, voxel_mm: Sequence[float]) -> float:
    """Mass (g) of a CT object: ``density * sum(occupancy) * voxel volume (cm^3)``."""
    return float(density_g_cm3) * float(obj.occupancy.sum(dtype=np.float64)) * float(np.prod(voxel_mm)) / 1000.0


def areal_density(scene: Scene, materials: Sequence[str], densities_g_cm3: Mapping[str, float]) -> np.ndarray:
    """Areal density (g/cm^2) per material: float32 ``(len(materials), rows, cols)``.

    Each object adds ``density * thickness_cm`` into its material's
    channel, over its box only.
    """
    index = {m: k for k, m in enumerate(materials)}
    out = np.zeros((len(materials), *scene.shape), dtype=np.float32)
    for obj in scene.objects:
        channel = index.get(obj.material)
        if channel is None:
            raise KeyError(f"material {obj.material!r} of a {obj.category!r} object is not among the channels")
        r0, c0, r1, c1 = obj.box
        view = out[channel, r0:r1, c0:c1]
        # view += density * thickness in one pass, in place, with no temporary:
        # half the time of NumPy's two passes. OpenCV writes into the view;
        # should it ever hand back a new array instead, copy that in.
        summed = cv2.scaleAdd(np.ascontiguousarray(obj.thickness_cm), _density(obj, densities_g_cm3), view, dst=view)
        if summed is not view:
            view[...] = summed
    return out


def _threat_groups(objects: Sequence[SceneObject | VolumeObject]) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for k, obj in enumerate(objects):
        if obj.is_threat:
            groups.setdefault(obj.group if obj.group is not None else ("solo", k), []).append(k)
    return groups


def threat_annotations(scene: Scene, densities_g_cm3: Mapping[str, float]) -> list[dict]:
    """Ground truth per threat group of a 2D scene.

    Returns
    -------
    list of dict
        ``category``, ``dicos_category``, ``group``, ``bbox_rc`` (union of
        the parts' boxes, exclusive ends), ``mask`` (bool, the union of the
        parts' footprints within ``bbox_rc``), ``materials`` (sorted),
        ``mass_g``, ``parts`` and ``occluded_fraction``: the share of the
        footprint that other non-shell objects overlap in projection.
    """
    out = []
    objects = scene.objects
    for key, members in _threat_groups(objects).items():
        parts = [objects[k] for k in members]
        r0 = min(p.box[0] for p in parts)
        c0 = min(p.box[1] for p in parts)
        r1 = max(p.box[2] for p in parts)
        c1 = max(p.box[3] for p in parts)
        mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for p in parts:
            mask[p.box[0] - r0 : p.box[2] - r0, p.box[1] - c0 : p.box[3] - c0] |= p.mask
        covered = np.zeros_like(mask)
        own = set(members)
        for k, other in enumerate(objects):
            if k in own or _is_shell(other.category):
                continue
            a0, b0, a1, b1 = other.box
            i0, j0, i1, j1 = max(a0, r0), max(b0, c0), min(a1, r1), min(b1, c1)
            if i0 < i1 and j0 < j1:
                under = other.thickness_cm[i0 - a0 : i1 - a0, j0 - b0 : j1 - b0] > 0
                covered[i0 - r0 : i1 - r0, j0 - c0 : j1 - c0] |= under
        area = int(mask.sum())
        category = parts[0].category
        out.append(
            {
                "category": category,
                "dicos_category": THREAT_CATEGORIES[category],
                "group": parts[0].group,
                "bbox_rc": (r0, c0, r1, c1),
                "mask": mask,
                "materials": sorted({p.material for p in parts}),
                "mass_g": sum(object_mass_g(p, _density(p, densities_g_cm3), scene.pixel_mm) for p in parts),
                "parts": len(parts),
                "occluded_fraction": float((mask & covered).sum()) / area if area else 0.0,
            }
        )
    return out


def volume_threat_annotations(scene: VolumeScene, densities_g_cm3: Mapping[str, float]) -> list[dict]:
    """Ground truth per threat group of a CT scene.

    Returns
    -------
    list of dict
        ``category``, ``dicos_category``, ``group``, ``box_zyx`` ``(z0, y0,
        x0, z1, y1, x1)`` (union of the parts, exclusive ends), ``mass_g``,
        ``material`` (of the heaviest part) and ``materials`` (sorted).
    """
    out = []
    for members in _threat_groups(scene.objects).values():
        parts = [scene.objects[k] for k in members]
        masses = [volume_object_mass_g(p, _density(p, densities_g_cm3), scene.voxel_mm) for p in parts]
        lo = tuple(min(p.box[i] for p in parts) for i in range(3))
        box = lo + tuple(max(p.box[i] for p in parts) for i in range(3, 6))
        category = parts[0].category
        out.append(
            {
                "category": category,
                "dicos_category": THREAT_CATEGORIES[category],
                "group": parts[0].group,
                "box_zyx": box,
                "mass_g": float(sum(masses)),
                "material": parts[int(np.argmax(masses))].material,
                "materials": sorted({p.material for p in parts}),
            }
        )
    return out
