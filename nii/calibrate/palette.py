"""The pseudo-colour palette: how consoles turn attenuation and material into RGB.

Dual-energy consoles show operators one colour image: hue by material
(orange organic, green mixed, blue inorganic/metal), brightness by
attenuation, black where nothing came through. Every public data set
(SIXray, OPIXray, ...) is such a rendering, stored as JPEG or PNG. This
module holds the rendering model both ways:

* :class:`PseudoColourPalette` and :data:`SIXRAY_PALETTE` (fitted on SIXray):
  each channel is ``white * exp(-A * k_c(m))`` for attenuation ``A`` and
  material coordinate ``m`` (0 organic ... 1 metal).
* :func:`material_coordinate` maps effective atomic number to ``m``;
  :func:`zeff_from_material_coordinate` inverts it.
* :func:`render_pseudo_colour` renders; :func:`estimate_pseudo_colour`
  inverts a rendering back to attenuation and material.

The operator tools (:mod:`nii.calibrate.render`), the archive estimate
(:mod:`nii.calibrate.archive`) and threat image projection into renderings
(:mod:`nii.simulate.tip`) all use this one model, so an image rendered here
and read back there agrees.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "PseudoColourPalette",
    "SIXRAY_PALETTE",
    "material_coordinate",
    "zeff_from_material_coordinate",
    "estimate_pseudo_colour",
    "render_pseudo_colour",
]


@dataclasses.dataclass(frozen=True)
class PseudoColourPalette:
    """A log-linear pseudo-colour rendering model (frozen and hashable).

    Each RGB channel is rendered as ``white * exp(-A * k_c(m))``: the
    attenuation ``A`` sets the brightness and the material coordinate ``m``
    (0 organic ... 1 metal) the direction ``k(m)`` of the per-channel
    attenuation. ``k(m)`` is piecewise linear between ``anchors`` (m, and a
    direction of three positive weights summing to 1) and scaled to mean 1,
    so ``A`` is the mean of ``-ln(rgb / white)`` over channels, and a grey
    object of attenuation ``A`` would be as bright as a grey image showing
    transmission ``exp(-A)``.

    Parameters
    ----------
    name : str
    anchors : tuple of (m, (r, g, b))
        Increasing ``m`` from 0 to 1.
    white : float
        Rendered value of air.
    opaque_max : int
        Pixels whose channels are all below this and ...
    opaque_chroma : int
        ... differ by less than this are read as opaque (dark grey/black).
    opaque_attenuation : float
        Attenuation given to opaque pixels (a lower bound).
    """

    name: str
    anchors: tuple[tuple[float, tuple[float, float, float]], ...]
    white: float = 255.0
    opaque_max: int = 64
    opaque_chroma: int = 24
    opaque_attenuation: float = 4.0

    def __post_init__(self) -> None:
        # Tuples of floats all the way down, whatever the caller passed: the
        # palette stays hashable, and renderers cache lookup tables per palette.
        anchors = tuple((float(m), tuple(float(v) for v in d)) for m, d in self.anchors)
        if any(len(d) != 3 for _, d in anchors):
            raise ValueError("palette directions must have three channels (r, g, b)")
        object.__setattr__(self, "anchors", anchors)
        ms = [m for m, _ in self.anchors]
        if len(ms) < 2 or ms[0] != 0.0 or ms[-1] != 1.0 or any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError("palette anchors must run strictly increasing from m = 0 to m = 1")
        if any(min(d) <= 0 for _, d in self.anchors):
            raise ValueError("palette directions must be positive in every channel")

    @property
    def anchor_m(self) -> np.ndarray:
        """Material coordinates of the anchors, increasing from 0 to 1."""
        return np.array([m for m, _ in self.anchors], np.float64)

    @property
    def anchor_dirs(self) -> np.ndarray:
        """Anchor directions, each normalised to sum 1, shape (n, 3)."""
        d = np.array([d for _, d in self.anchors], np.float64)
        return d / d.sum(axis=1, keepdims=True)

    def direction(self, material: np.ndarray) -> np.ndarray:
        """Per-channel attenuation weights ``k(m)`` (mean 1), shape (..., 3)."""
        m = np.clip(np.asarray(material, np.float64), 0.0, 1.0)
        dirs = self.anchor_dirs
        k = np.stack([np.interp(m, self.anchor_m, dirs[:, c]) for c in range(3)], axis=-1)
        return 3.0 * k / k.sum(axis=-1, keepdims=True)


# Fitted on SIXray clear bags: medians of -ln(rgb/255) / sum over hue bins
# of well-saturated pixels; the curve runs orange (hue 30) - yellow-olive
# (50) - green (100) - teal (160) - blue (205). Near-black grey is opaque.
SIXRAY_PALETTE = PseudoColourPalette(
    name="sixray",
    anchors=(
        (0.0, (0.072, 0.230, 0.698)),
        (0.25, (0.161, 0.193, 0.646)),
        (0.5, (0.357, 0.142, 0.501)),
        (0.75, (0.558, 0.189, 0.253)),
        (1.0, (0.678, 0.242, 0.080)),
    ),
)


# Knots of the Zeff -> material coordinate map (piecewise linear, strictly
# increasing, so it inverts exactly). All are multiples of 1/8, which keeps
# the renderer's 1/8-Zeff lookup table exact at the knots.
_ZEFF_KNOTS = (6.0, 9.0, 10.5, 16.0, 18.5, 26.0)
_MATERIAL_KNOTS = (0.0, 0.1, 0.4, 0.6, 0.9, 1.0)


def material_coordinate(zeff: float | np.ndarray | None) -> float | np.ndarray:
    """Map an effective atomic number to the organic (0) - metal (1) axis.

    Organic (Zeff < 10) lands at 0-0.3 (orange), mixed/light inorganic
    (10-17, aluminium 13) near 0.5 (green), metals (> 18) at 0.9-1 (blue),
    as dual-energy consoles colour them. None (unknown) gives 1: a threat
    of unknown material is shown as metal. Piecewise linear, clamped
    outside Zeff 6-26; :func:`zeff_from_material_coordinate` inverts it.

    Parameters
    ----------
    zeff : float, ndarray or None

    Returns
    -------
    float for a scalar (or None), ndarray of float32 for an array.
    """
    if zeff is None:
        return 1.0
    if np.ndim(zeff) == 0:
        return float(np.interp(float(zeff), _ZEFF_KNOTS, _MATERIAL_KNOTS))
    return np.interp(np.asarray(zeff, np.float64), _ZEFF_KNOTS, _MATERIAL_KNOTS).astype(np.float32)


def zeff_from_material_coordinate(material: float | np.ndarray) -> float | np.ndarray:
    """Invert :func:`material_coordinate`: the Zeff (6-26) of a material coordinate.

    ``m`` is clipped to [0, 1]; 0 gives Zeff 6 and 1 gives 26, the ends of
    the range the coordinate resolves (lighter and heavier materials are
    indistinguishable in a rendering).

    Parameters
    ----------
    material : float or ndarray

    Returns
    -------
    float for a scalar, ndarray of float32 for an array.
    """
    if np.ndim(material) == 0:
        return float(np.interp(float(material), _MATERIAL_KNOTS, _ZEFF_KNOTS))
    return np.interp(np.asarray(material, np.float64), _MATERIAL_KNOTS, _ZEFF_KNOTS).astype(np.float32)


def _project_on_curve(directions: np.ndarray, palette: PseudoColourPalette) -> np.ndarray:
    """m of the point of the palette's direction polyline nearest each direction."""
    dirs = palette.anchor_dirs
    ms = palette.anchor_m
    best_d2 = np.full(directions.shape[:-1], np.inf)
    best_m = np.zeros(directions.shape[:-1])
    for i in range(len(dirs) - 1):
        a, b = dirs[i], dirs[i + 1]
        ab = b - a
        t = np.clip(((directions - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        d2 = ((directions - a - t[..., None] * ab) ** 2).sum(-1)
        better = d2 < best_d2
        best_d2 = np.where(better, d2, best_d2)
        best_m = np.where(better, ms[i] + t * (ms[i + 1] - ms[i]), best_m)
    return best_m


def _opaque(rgb: np.ndarray, palette: PseudoColourPalette) -> np.ndarray:
    """Pixels of a rendering read as opaque: dark and nearly grey.

    Consoles draw unpenetrated regions black; dark but saturated pixels
    are dense material that was still penetrated, so chroma tells them apart.
    """
    hi = rgb.max(axis=-1).astype(np.int32)
    lo = rgb.min(axis=-1).astype(np.int32)
    return (hi < palette.opaque_max) & (hi - lo < palette.opaque_chroma)


def estimate_pseudo_colour(
    rgb: np.ndarray, *, palette: PseudoColourPalette = SIXRAY_PALETTE
) -> tuple[np.ndarray, np.ndarray]:
    """Invert a vendor pseudo-colour rendering to attenuation and material.

    Model (see :class:`PseudoColourPalette`): each channel is ``white *
    exp(-A * k_c(m))``. So ``L = -ln(rgb / white)`` per channel gives ``A =
    mean(L)`` (brightness encodes transmission) and the direction ``L /
    sum(L)`` gives ``m`` as the nearest point of the palette's curve (hue
    encodes material: orange organic, green mixed, blue metal). Dark,
    nearly grey pixels are opaque: ``m = 1`` and ``A >= opaque_attenuation``.

    Limits: the vendor's real mapping is unknown; the SIXray palette is a
    fit whose hue directions hold within a few per cent over the useful
    range. 8-bit quantisation makes ``m`` unreliable where ``A < 0.2``
    (near white, where it barely matters) and ``A`` biased low once a
    channel reaches 0 (about ``A > 3`` for blue). JPEG ringing adds noise.
    Nothing can be recovered behind opaque pixels.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (..., 3)
    palette : PseudoColourPalette

    Returns
    -------
    attenuation : ndarray of float32, shape (...), >= 0
    material : ndarray of float32, shape (...), in [0, 1]
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb must end in 3 channels, got shape {rgb.shape}")
    if rgb.dtype == np.uint8 and rgb.size >= 3 * 65536:
        # A pure function of the colour: solve each distinct colour once (a
        # bag image has a tenth as many colours as pixels, or fewer).
        packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        colours, index = np.unique(packed.ravel(), return_inverse=True)
        distinct = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=-1).astype(np.uint8)
        att, material = _estimate_colours(distinct, palette)
        return att[index].reshape(rgb.shape[:-1]), material[index].reshape(rgb.shape[:-1])
    return _estimate_colours(rgb, palette)


def _estimate_colours(rgb: np.ndarray, palette: PseudoColourPalette) -> tuple[np.ndarray, np.ndarray]:
    """:func:`estimate_pseudo_colour` for every colour of ``rgb`` (..., 3)."""
    logs = -np.log(np.clip(rgb.astype(np.float64), 0.5, palette.white) / palette.white)
    total = logs.sum(axis=-1)
    att = total / 3.0
    directions = logs / np.maximum(total, 1e-12)[..., None]
    material = np.where(total > 1e-9, _project_on_curve(directions, palette), 0.0)
    opaque = _opaque(rgb, palette)
    att = np.where(opaque, np.maximum(att, palette.opaque_attenuation), att)
    material = np.where(opaque, 1.0, material)
    return att.astype(np.float32), material.astype(np.float32)


def render_pseudo_colour(
    attenuation: np.ndarray,
    material: np.ndarray,
    *,
    palette: PseudoColourPalette = SIXRAY_PALETTE,
) -> np.ndarray:
    """Render attenuation and material as 8-bit pseudo-colour RGB.

    The inverse of :func:`estimate_pseudo_colour`: ``rgb_c = round(white *
    exp(-A * k_c(m)))``. Round trips within a few hundredths of ``A`` and
    ``m`` for ``0.2 <= A <= 2.5``.

    Parameters
    ----------
    attenuation : ndarray, shape (...), >= 0
    material : ndarray, shape (...), in [0, 1] (broadcast against A)
    palette : PseudoColourPalette

    Returns
    -------
    ndarray of uint8, shape (..., 3)
    """
    att = np.maximum(np.asarray(attenuation, np.float64), 0.0)
    k = palette.direction(np.broadcast_to(np.asarray(material, np.float64), att.shape))
    rgb = palette.white * np.exp(-att[..., None] * k)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

