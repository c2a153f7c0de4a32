"""Dual-energy material discrimination: effective atomic number and areal density.

After flat-fielding, each pixel of a dual-energy scan has an attenuation
``A = -ln(I_n)`` per channel. Their ratio ``R = A_low / A_high`` (the ratio
of the effective linear attenuation coefficients, mu_L / mu_H) rises with
the effective atomic number Zeff: photoabsorption (~Z^3 / E^3) takes a much
larger share of the low-energy beam. R also falls with thickness, because
the beam hardens as it goes through (on the 80/160 kVp scanner aluminium
gives R = 2.35 at 1 cm and 1.86 at 5 cm), so the calibration is a family of
curves ``R_m(A_high)``, one per step-wedge reference material m, measured on
the scanner itself:

1. :func:`wedge_attenuation` turns a step-wedge acquisition into one
   (A_low, A_high) pair per step;
2. :func:`fit_material_calibration` resamples every material's curve (and
   its areal density, density x thickness) onto a common grid of A_high;
3. :func:`estimate_zeff` places a pixel (A_high, R) between the curves that
   bracket its R at its A_high and reads off Zeff and areal density;
4. :func:`material_lookup` / :func:`lookup_zeff` precompute 3. on a
   quantised (A_high, R) table for full-rate use.

Lead (and tungsten) are left out of the Zeff curves. Lead's K edge
(88 keV) lies inside the 160 kVp channel, where it raises the high-energy
attenuation: lead's R is 2.2 at 0.2 mm (aluminium's) and falls to 1.5 at
2 mm, among the organics (1.3-1.5), instead of lying above iron's. A curve
out of order in Z cannot be interpolated by R; lead is found by its
opacity instead (A_high beyond :attr:`MaterialCalibration.a_high_max`).

Units: attenuations are dimensionless (natural log), thicknesses cm,
densities g/cm^3, areal densities g/cm^2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import cv2
import numpy as np

from nii.simulate import physics

__all__ = [
    "MaterialCalibration",
    "MaterialLookup",
    "wedge_attenuation",
    "fit_material_calibration",
    "estimate_zeff",
    "material_lookup",
    "lookup_zeff",
]

# Thinner than this (2^-6: ~1.5% attenuation, ~0.8 mm of plastic) R is mostly
# noise: such steps are dropped and such pixels count as air. A power of two,
# so that it is also a row boundary of the lookup table (see material_lookup).
_MIN_A_HIGH = 2.0**-6
# Steps passing less than this in the high channel are opaque.
_MIN_TRANSMISSION_HIGH = 1e-3
# The low channel goes dark first. A wedge step averages ~10^4 pixels, so its
# mean low-channel transmission is still good to a few percent at 1e-5
# (0.3 quanta per pixel under 6 counts of read noise); below that R is noise.
_MIN_TRANSMISSION_LOW = 1e-5
# K edges inside the high-energy channel make R non-monotonic in Z (module
# docstring): these materials never enter the Zeff curves.
_K_EDGE_MATERIALS = frozenset({"lead", "tungsten"})
# Smallest gap kept between neighbouring curves, where clamped ends or noise
# make them touch: the interpolation in R needs them strictly ordered.
_MIN_RATIO_GAP = 1e-3
# Transmission floor when taking -ln of a step's mean (its A is then ~20.7,
# far past opaque).
_TRANSMISSION_FLOOR = 1e-9
# Pixels per block in estimate_zeff / lookup_zeff: the (materials, block)
# temporaries of the former stay small, the latter's stay in the L2 cache.
_BLOCK = 1 << 16
# The lookup table's rows reach up to this A_high (T ~ 1e-56: beyond any
# float32 transmission); past it and for inf/NaN, its last cell answers.
_LUT_TOP_A = 128.0


# -- calibration ---------------------------------------------------------------


def _array(value: object, name: str, ndim: int) -> np.ndarray:
    try:
        out = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a {ndim}-D array of numbers") from None
    if out.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {out.shape}")
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class MaterialCalibration:
    """R and areal-density curves of the reference materials on an A_high grid.

    Parameters
    ----------
    materials : tuple of str
        Reference materials (keys of :data:`nii.simulate.physics.MATERIALS`),
        in increasing Zeff.
    zeff : ndarray, shape (M,)
        Effective atomic number of each, strictly increasing.
    a_high : ndarray, shape (K,)
        Grid of high-energy attenuation, strictly increasing, > 0. Pixels
        below ``a_high[0]`` count as air.
    ratio : ndarray, shape (M, K)
        R = A_low / A_high of each material at each grid point, strictly
        increasing down the material axis.
    areal_density : ndarray, shape (M, K)
        Areal density (g/cm^2) of each material giving that A_high, > 0.
    a_high_max : float
        Largest A_high any reference step reached; beyond it the pixel is
        opaque (its Zeff and areal density are those at ``a_high_max``).

    Raises
    ------
    ValueError
        If the shapes disagree or a value breaks the orderings above.
    """

    materials: tuple[str, ...]
    zeff: np.ndarray
    a_high: np.ndarray
    ratio: np.ndarray
    areal_density: np.ndarray
    a_high_max: float

    def __post_init__(self) -> None:
        materials = tuple(str(m) for m in np.atleast_1d(np.asarray(self.materials, dtype=object)).tolist())
        zeff = _array(self.zeff, "zeff", 1)
        a_high = _array(self.a_high, "a_high", 1)
        ratio = _array(self.ratio, "ratio", 2)
        areal = _array(self.areal_density, "areal_density", 2)
        m, k = zeff.size, a_high.size
        if m < 2 or len(materials) != m:
            raise ValueError(f"materials and zeff must name the same M >= 2 materials, got {len(materials)} and {m}")
        if k < 2:
            raise ValueError(f"a_high must hold a grid of K >= 2 points, got {k}")
        for name, arr in (("ratio", ratio), ("areal_density", areal)):
            if arr.shape != (m, k):
                raise ValueError(f"{name} must have shape (M, K) = ({m}, {k}), got {arr.shape}")
        if not (np.all(np.isfinite(zeff)) and np.all(np.diff(zeff) > 0)):
            raise ValueError("zeff must be finite and strictly increasing")
        if not (np.all(np.isfinite(a_high)) and a_high[0] > 0 and np.all(np.diff(a_high) > 0)):
            raise ValueError("a_high must be finite, > 0 and strictly increasing")
        step = np.diff(ratio, axis=0)
        if not (np.all(np.isfinite(ratio)) and np.all(ratio > 0) and (np.all(step > 0) or np.all(step < 0))):
            raise ValueError("ratio must be finite, > 0 and strictly monotone from material to material")
        if not (np.all(np.isfinite(areal)) and np.all(areal > 0)):
            raise ValueError("areal_density must be finite and > 0 g/cm^2")
        try:
            a_max = float(self.a_high_max)
        except (TypeError, ValueError):
            a_max = math.nan
        if not (math.isfinite(a_max) and a_max >= a_high[-1] * (1 - 1e-9)):
            raise ValueError(
                f"a_high_max must be a finite number >= a_high[-1] = {a_high[-1]:g}, got {self.a_high_max!r}"
            )
        for name, value in (("materials", materials), ("zeff", zeff), ("a_high", a_high), ("ratio", ratio),
                            ("areal_density", areal), ("a_high_max", a_max)):
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            object.__setattr__(self, name, value)

    @property
    def rising(self) -> bool:
        """True when R rises with Zeff (keV: photoelectric effect); False when
        it falls (MeV cargo beams: pair production grows as Z^2)."""
        return bool(self.ratio[-1, 0] > self.ratio[0, 0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The calibration as plain arrays, for ``np.savez`` (no pickling needed)."""
        return {
            "materials": np.array(self.materials, dtype=str),
            "zeff": self.zeff.copy(),
            "a_high": self.a_high.copy(),
            "ratio": self.ratio.copy(),
            "areal_density": self.areal_density.copy(),
            "a_high_max": np.array(self.a_high_max),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> MaterialCalibration:
        """Rebuild from :meth:`to_arrays` output (or an ``np.load`` of it).

        Raises
        ------
        ValueError
            If a key is missing or the arrays' shapes or values do not fit.
        """
        keys = ("materials", "zeff", "a_high", "ratio", "areal_density", "a_high_max")
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise ValueError(f"arrays must hold {', '.join(keys)}; {missing[0]!r} is missing")
        materials = np.asarray(arrays["materials"])
        if materials.ndim != 1 or materials.dtype.kind not in "UO":
            raise ValueError(
                f"arrays['materials'] must be a 1-D array of names, got {materials.dtype} {materials.shape}"
            )
        a_max = np.asarray(arrays["a_high_max"])
        if a_max.shape != ():
            raise ValueError(f"arrays['a_high_max'] must be a scalar, got shape {a_max.shape}")
        return cls(
            materials=tuple(str(m) for m in materials),
            zeff=arrays["zeff"],
            a_high=arrays["a_high"],
            ratio=arrays["ratio"],
            areal_density=arrays["areal_density"],
            a_high_max=float(a_max),
        )


def wedge_attenuation(
    counts: np.ndarray,
    *,
    dark: np.ndarray,
    air: np.ndarray,
    bad: np.ndarray | None = None,
    thickness_cm: Sequence[float],
    lines_per_step: int,
) -> np.ndarray:
    """Mean attenuation of each step of a step-wedge acquisition.

    Parameters
    ----------
    counts : ndarray, shape (C, lines, cols)
        Raw counts, ``lines = len(thickness_cm) * lines_per_step``, steps in
        order along the lines.
    dark, air : ndarray, shape (C, cols)
        Mean counts per element with the beam off and through air.
    bad : ndarray of bool, shape (C, cols), optional
        Elements to ignore (dead, hot). Elements with ``air <= dark`` are
        ignored too.
    thickness_cm : sequence of float
        Thickness of each step (cm); only its length is used here.
    lines_per_step : int
        Lines per step.

    Returns
    -------
    ndarray of float64, shape (steps, C)
        ``-ln(T)`` per step and channel. T is the flat-fielded transmission
        ``(I - D) / (F - D)`` averaged over the step's lines per element,
        then over the good elements by the interquartile mean (robust to
        up to a quarter of stray elements, ~90% as efficient as the mean).
        Averaging T rather than A keeps near-opaque steps unbiased, where
        single pixels read noise around zero. T is floored at 1e-9.

    Raises
    ------
    ValueError
        If shapes disagree or a channel has no good element.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.size == 0:
        raise ValueError(f"counts must have shape (C, lines, cols), got {counts.shape}")
    channels, lines, cols = counts.shape
    dark = _array(dark, "dark", 2)
    air = _array(air, "air", 2)
    for name, arr in (("dark", dark), ("air", air)):
        if arr.shape != (channels, cols):
            raise ValueError(f"{name} must have shape (C, cols) = ({channels}, {cols}), got {arr.shape}")
    if bad is None:
        bad = np.zeros((channels, cols), dtype=bool)
    bad = np.asarray(bad)
    if bad.shape != (channels, cols) or bad.dtype != bool:
        raise ValueError(
            f"bad must be a bool array of shape (C, cols) = ({channels}, {cols}), got {bad.dtype} {bad.shape}"
        )
    thickness = np.asarray(thickness_cm, dtype=np.float64)
    if thickness.ndim != 1 or thickness.size == 0:
        raise ValueError(f"thickness_cm must be a non-empty 1-D sequence, got shape {thickness.shape}")
    if isinstance(lines_per_step, bool) or not isinstance(lines_per_step, (int, np.integer)) or lines_per_step < 1:
        raise ValueError(f"lines_per_step must be a positive integer, got {lines_per_step!r}")
    steps = thickness.size
    if steps * int(lines_per_step) != lines:
        raise ValueError(
            f"lines_per_step * len(thickness_cm) must equal the {lines} lines of counts, got "
            f"{lines_per_step} * {steps}"
        )
    gain = air - dark
    good = ~bad & np.isfinite(gain) & (gain > 0)
    if not good.any(axis=1).all():
        raise ValueError("bad (with air <= dark) leaves a channel without a good element")
    per_element = counts.reshape(channels, steps, int(lines_per_step), cols).mean(axis=2, dtype=np.float64)
    out = np.empty((steps, channels))
    for c in range(channels):
        t = (per_element[c][:, good[c]] - dark[c, good[c]]) / gain[c, good[c]]  # (steps, elements)
        n = t.shape[1]
        quarter = n // 4
        central = np.sort(t, axis=1)[:, quarter : n - quarter]
        out[:, c] = -np.log(np.maximum(central.mean(axis=1), _TRANSMISSION_FLOOR))
    return out


def _resampled(x_new: np.ndarray, x: np.ndarray, y: np.ndarray, *, right_slope: float) -> np.ndarray:
    """Monotone cubic (PCHIP) through (x, y), linear outside.

    Below ``x[0]`` the line continues the first secant; beyond ``x[-1]`` it
    continues the last secant times ``right_slope``.
    """
    out = _pchip(x[:, None], y[:, None], x_new[None, :])[0]
    low = x_new < x[0]
    out[low] = y[0] + (y[1] - y[0]) / (x[1] - x[0]) * (x_new[low] - x[0])
    high = x_new > x[-1]
    out[high] = y[-1] + right_slope * (y[-1] - y[-2]) / (x[-1] - x[-2]) * (x_new[high] - x[-1])
    return out


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Node derivatives of the Fritsch-Carlson monotone cubic, along axis 0.

    ``x`` (N, ...) strictly increasing along axis 0, ``y`` broadcastable to
    it. Interior nodes take the weighted harmonic mean of the neighbouring
    secants (0 where they differ in sign), end nodes the shape-preserving
    three-point formula; this is SciPy's PchipInterpolator.
    """
    h = np.diff(x, axis=0)
    delta = np.diff(y, axis=0) / h
    slopes = np.zeros(np.broadcast_shapes(x.shape, np.shape(y)))
    if x.shape[0] == 2:
        slopes[:] = delta
        return slopes
    w1 = 2 * h[1:] + h[:-1]
    w2 = h[1:] + 2 * h[:-1]
    same = (delta[:-1] * delta[1:]) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    slopes[1:-1] = np.where(same, harmonic, 0.0)
    for end, (h0, h1, d0, d1) in ((0, (h[0], h[1], delta[0], delta[1])), (-1, (h[-1], h[-2], delta[-1], delta[-2]))):
        m = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        m = np.where(np.sign(m) != np.sign(d0), 0.0, m)
        m = np.where((np.sign(d0) != np.sign(d1)) & (np.abs(m) > 3 * np.abs(d0)), 3 * d0, m)
        slopes[end] = m
    return slopes


def _pchip(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """PCHIP through nodes (N, P) per column, evaluated at x_new (Q, P) (P may broadcast); clamped outside."""
    slopes = _pchip_slopes(x, y)
    y = np.broadcast_to(y, x.shape)
    value, _, _ = _hermite(x, y, slopes, x_new)
    return value


def _hermite(
    x: np.ndarray, y: np.ndarray, slopes: np.ndarray, x_new: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic Hermite through nodes (N, P) at x_new (Q, P), clamped to the end nodes.

    Returns the values, the lower node's index and the fraction of the way
    (in y) from the lower to the upper node, all (Q, P).
    """
    n = x.shape[0]
    # Lower node of each point's interval (0 .. N-2): nodes at or below it.
    k = np.zeros(x_new.shape, dtype=np.intp)
    for i in range(1, n - 1):
        k += x_new >= x[i : i + 1]
    x0, x1 = np.take_along_axis(x, k, 0), np.take_along_axis(x, k + 1, 0)
    y0, y1 = np.take_along_axis(y, k, 0), np.take_along_axis(y, k + 1, 0)
    m0, m1 = np.take_along_axis(slopes, k, 0), np.take_along_axis(slopes, k + 1, 0)
    h = x1 - x0
    t = np.clip((x_new - x0) / h, 0.0, 1.0)
    t2, t3 = t * t, t * t * t
    value = (2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * h * m0 + (3 * t2 - 2 * t3) * y1 + (t3 - t2) * h * m1
    # Rounding may step a hair outside [y0, y1]; a monotone cubic never does.
    value = np.clip(value, np.minimum(y0, y1), np.maximum(y0, y1))
    span = y1 - y0
    fraction = np.where(span != 0, (value - y0) / np.where(span != 0, span, 1.0), t)
    return value, k, fraction


def fit_material_calibration(
    steps: Mapping[str, tuple[np.ndarray, np.ndarray]], *, grid_size: int = 64
) -> MaterialCalibration:
    """Fit the R(A_high) and areal-density curves of the reference materials.

    Parameters
    ----------
    steps : mapping of str to (ndarray, ndarray)
        ``steps[material] = (thickness_cm (S,), attenuation (S, 2))`` with
        attenuation (A_low, A_high) per step, e.g. from
        :func:`wedge_attenuation`. Keys are materials of
        :data:`nii.simulate.physics.MATERIALS` at their nominal density;
        lead and tungsten are ignored (their K edge lies in the high
        channel, see the module docstring).
    grid_size : int
        Number of A_high grid points K (log-spaced from 2^-6 to the largest
        usable A_high).

    Returns
    -------
    MaterialCalibration

    Notes
    -----
    A step is usable when ``A_high >= 2^-6`` (thinner, R is noise),
    ``T_high >= 1e-3`` (opaque otherwise) and ``T_low >= 1e-5`` (the low
    channel goes dark first). Each material needs two usable steps. Between
    its steps a material's R and ln(areal density) are monotone cubics
    (PCHIP) in ln A_high; toward thinner pixels they continue along the
    thinnest two steps' secant (R keeps rising as the beam hardens less).
    Past the thickest step ln(areal density) continues along the last
    secant and R along *half* the last secant: hardening slows as the
    spectrum hardens, so R(ln A_high) flattens and the truth lies between
    holding R and following the secant; half way halves the worst error.
    (Holding R there puts 1 cm of iron, nickel and copper 0.7-1.2 below
    their Zeff: the iron and copper wedges end at A_high 2.5 and 3.2, the
    pixels lie at 3-3.8.) Where two curves touch (noise, extrapolation)
    the higher-Z one is lifted 1e-3 above the lower.

    Raises
    ------
    ValueError
        For an unknown material, malformed arrays, a material with fewer
        than two usable steps, two materials of the same Zeff, or fewer than
        two materials left besides lead.
    """
    if not isinstance(steps, Mapping) or not steps:
        raise ValueError("steps must map at least two material names to (thickness_cm, attenuation)")
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 2:
        raise ValueError(f"grid_size must be an integer >= 2, got {grid_size!r}")
    max_a_high = -math.log(_MIN_TRANSMISSION_HIGH)
    max_a_low = -math.log(_MIN_TRANSMISSION_LOW)
    curves = []
    for name, pair in steps.items():
        if name not in physics.MATERIALS:
            raise ValueError(f"steps key {name!r} is not a material; use one of {', '.join(physics.MATERIALS)}")
        if name in _K_EDGE_MATERIALS:
            continue
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"steps[{name!r}] must be a pair (thickness_cm, attenuation)")
        thickness = _array(pair[0], f"steps[{name!r}] thickness_cm", 1)
        attenuation = _array(pair[1], f"steps[{name!r}] attenuation", 2)
        if attenuation.shape != (thickness.size, 2):
            raise ValueError(
                f"steps[{name!r}] attenuation must have shape (S, 2) = ({thickness.size}, 2), got {attenuation.shape}"
            )
        if not (np.all(np.isfinite(thickness)) and np.all(thickness > 0)) or np.isnan(attenuation).any():
            raise ValueError(f"steps[{name!r}] needs finite thicknesses > 0 cm and attenuations that are not NaN")
        order = np.argsort(thickness)
        thickness, attenuation = thickness[order], attenuation[order]
        a_low, a_high = attenuation[:, 0], attenuation[:, 1]
        usable = (a_high >= _MIN_A_HIGH) & (a_high <= max_a_high) & (a_low > 0) & (a_low <= max_a_low)
        if np.count_nonzero(usable) < 2:
            raise ValueError(
                f"steps[{name!r}] has {np.count_nonzero(usable)} usable steps (A_high in [{_MIN_A_HIGH:g}, "
                f"{max_a_high:.2f}], A_low <= {max_a_low:.2f}); at least 2 are needed"
            )
        a_low, a_high, thickness = a_low[usable], a_high[usable], thickness[usable]
        if np.any(np.diff(a_high) <= 0):
            raise ValueError(
                f"steps[{name!r}] attenuation must grow with thickness, got A_high {a_high.round(4).tolist()}"
            )
        areal = thickness * physics.MATERIALS[name].density_g_cm3
        curves.append((physics.effective_z(name), name, a_high, a_low / a_high, areal))
    if len(curves) < 2:
        raise ValueError("steps must hold at least two reference materials besides lead and tungsten")
    curves.sort(key=lambda curve: curve[0])
    zeff = np.array([curve[0] for curve in curves])
    if np.any(np.diff(zeff) <= 1e-6):
        same = [curves[i][1] for i in np.flatnonzero(np.diff(zeff) <= 1e-6)]
        raise ValueError(f"steps holds two materials of the same Zeff ({same[0]} and its neighbour)")
    a_max = max(float(curve[2][-1]) for curve in curves)
    grid = np.geomspace(_MIN_A_HIGH, a_max, int(grid_size))
    log_grid = np.log(grid)
    ratio = np.empty((len(curves), grid.size))
    areal = np.empty_like(ratio)
    for i, (_, _, a_high, r, rho_t) in enumerate(curves):
        log_a = np.log(a_high)
        ratio[i] = _resampled(log_grid, log_a, r, right_slope=0.5)  # half the secant: see Notes
        areal[i] = np.exp(_resampled(log_grid, log_a, np.log(rho_t), right_slope=1.0))
    # keV beams: R rises with Z; MeV beams: it falls (pair production).
    # Keep the curves apart in whichever order the wedges measured.
    rising = ratio[-1].mean() > ratio[0].mean()
    for i in range(1, ratio.shape[0]):
        if rising:
            ratio[i] = np.maximum(ratio[i], ratio[i - 1] + _MIN_RATIO_GAP)
        else:
            ratio[i] = np.minimum(ratio[i], ratio[i - 1] - _MIN_RATIO_GAP)
    return MaterialCalibration(
        materials=tuple(curve[1] for curve in curves),
        zeff=zeff,
        a_high=grid,
        ratio=ratio,
        areal_density=areal,
        a_high_max=a_max,
    )


# -- per pixel -------------------------------------------------------------------


def _pair(a_low: np.ndarray, a_high: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(a_low)
    high = np.asarray(a_high)
    if low.shape != high.shape:
        raise ValueError(f"a_low and a_high must have the same shape, got {low.shape} and {high.shape}")
    if low.dtype.kind not in "fiu" or high.dtype.kind not in "fiu":
        raise ValueError(f"a_low and a_high must be real arrays, got {low.dtype} and {high.dtype}")
    return np.ascontiguousarray(low, dtype=dtype), np.ascontiguousarray(high, dtype=dtype)


def estimate_zeff(
    a_low: np.ndarray, a_high: np.ndarray, calibration: MaterialCalibration
) -> tuple[np.ndarray, np.ndarray]:
    """Effective atomic number and areal density per pixel.

    Parameters
    ----------
    a_low, a_high : ndarray
        Low- and high-energy attenuation ``-ln(I_n)``, same shape (any).
    calibration : MaterialCalibration

    Returns
    -------
    zeff : ndarray of float32
        Zeff, within ``calibration.zeff[0] .. calibration.zeff[-1]``.
    areal_density : ndarray of float32
        g/cm^2.

    Notes
    -----
    At the pixel's A_high (clamped to ``a_high[0] .. a_high_max``) each
    material's R is interpolated linearly in ln A_high between grid points.
    ln Zeff then follows R through the materials' (R_m, ln Zeff_m) by a
    monotone cubic (PCHIP) between the two curves that bracket the pixel's
    R, shaped by their neighbours. Zeff is convex in R (the metals crowd
    together), so a straight line (Zeff linear in R) between neighbouring
    curves misreads the materials in between: on noise-free slabs of
    0.1-10 cm by 0.55 for PVC and 1.1 for titanium on average, against
    0.33 and under 0.3 this way. R below the
    lowest curve gives the lowest Zeff, above the highest the highest
    (Zeff is clamped to the calibration materials' range). The areal
    density mixes the two bracketing materials' areal densities at that
    A_high by the same fraction of the way (in ln Zeff) between them.

    Air: pixels with A_high below ``a_high[0]`` (R is noise there) get the
    lowest Zeff (organic side) and areal density 0. Opaque pixels (A_high
    above ``a_high_max``) get the values at ``a_high_max``. Nothing comes
    out NaN: a NaN A_high counts as opaque, a NaN ratio (0/0, inf/inf,
    NaN A_low) as above the highest curve.
    """
    low, high = _pair(a_low, a_high, np.float64)
    shape = high.shape
    low, high = low.reshape(-1), high.reshape(-1)
    zeff_out = np.empty(high.size, dtype=np.float32)
    areal_out = np.empty(high.size, dtype=np.float32)
    log_grid = np.log(calibration.a_high)
    log_areal = np.log(calibration.areal_density)
    log_z = np.log(calibration.zeff)[:, None]
    a0 = calibration.a_high[0]
    # Interpolate on R where it rises with Z, on -R where it falls (MeV).
    sign = 1.0 if calibration.rising else -1.0
    for start in range(0, high.size, _BLOCK):
        stop = min(start + _BLOCK, high.size)
        ah = np.where(np.isnan(high[start:stop]), np.inf, high[start:stop])
        al = low[start:stop]
        air = ~(ah >= a0)
        u = np.log(np.clip(ah, a0, calibration.a_high_max))
        j = np.clip(np.searchsorted(log_grid, u, side="right") - 1, 0, log_grid.size - 2)
        t = np.clip((u - log_grid[j]) / (log_grid[j + 1] - log_grid[j]), 0.0, 1.0)
        r_nodes = sign * (calibration.ratio[:, j] * (1 - t) + calibration.ratio[:, j + 1] * t)  # (M, n)
        rho_nodes = np.exp(log_areal[:, j] * (1 - t) + log_areal[:, j + 1] * t)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = al / ah
        r = sign * np.where(np.isnan(r), sign * np.inf, r)
        slopes = _pchip_slopes(r_nodes, log_z)
        log_zeff, k, w = _hermite(r_nodes, np.broadcast_to(log_z, r_nodes.shape), slopes, r[None, :])
        rho0 = np.take_along_axis(rho_nodes, k, 0)
        rho1 = np.take_along_axis(rho_nodes, k + 1, 0)
        areal = (rho0 * (1 - w) + rho1 * w)[0]
        zeff = np.exp(log_zeff[0])
        zeff[air] = calibration.zeff[0]
        areal[air] = 0.0
        zeff_out[start:stop] = zeff
        areal_out[start:stop] = areal
    return zeff_out.reshape(shape), areal_out.reshape(shape)


# -- lookup table -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class MaterialLookup:
    """:func:`estimate_zeff` precomputed on a quantised (A_high, R) grid.

    Cells are addressed by the float32 bit patterns of A_high and R, whose
    integer value grows piecewise-linearly with the log of the number:
    ``bits >> shift`` gives ``2**(23 - shift)`` cells per octave, so the
    quantisation is ~relative (a fixed fraction of A_high and of R) and
    needs no logarithm per pixel.

    Attributes
    ----------
    table : ndarray of float32, shape (rows * cols, 2)
        (Zeff, areal density g/cm^2) per cell, row-major; row 0 holds air
        (A_high below ``a_min``: lowest Zeff, areal density 0), the last
        rows the opaque side (values at ``a_max``).
    rows, cols : int
        Table shape.
    a_shift, r_shift : int
        Right shifts of the float32 bits of A_high and of R.
    row_origin : int
        ``bits(A_high) >> a_shift`` of table row 1 (the cell starting at
        ``a_min``).
    col_low, col_high : int
        ``bits(R) >> r_shift`` of the first and last column; R outside is
        clamped to them.
    a_min, a_max : float
        Quantised A_high range: air below, values held above.
    r_min, r_max : float
        R range of the columns.
    """

    table: np.ndarray
    rows: int
    cols: int
    a_shift: int
    r_shift: int
    row_origin: int
    col_low: int
    col_high: int
    a_min: float
    a_max: float
    r_min: float
    r_max: float


def _bits(value: float) -> int:
    return int(np.array(value, dtype=np.float32).view(np.int32))


def _from_bits(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.int32).view(np.float32)


def _shift_for(lo: float, hi: float, cells: int) -> int:
    """Smallest right shift whose bins of [lo, hi] number at most ``cells``."""
    for shift in range(0, 24):
        if (_bits(hi) >> shift) - (_bits(lo) >> shift) + 1 <= cells:
            return shift
    return 23


def material_lookup(
    calibration: MaterialCalibration, *, a_max: float | None = None, n_a: int = 512, n_r: int = 2048
) -> MaterialLookup:
    """Tabulate :func:`estimate_zeff` for :func:`lookup_zeff`.

    Parameters
    ----------
    calibration : MaterialCalibration
    a_max : float, optional
        Largest A_high tabulated; beyond it the values at ``a_max`` are
        held. Default ``calibration.a_high_max``.
    n_a : int
        At most this many rows between ``calibration.a_high[0]`` and
        ``a_max``, as a power of two per octave: 512 gives 64 per octave
        (cells 1.1% of A_high wide) for the usual 2^-6 .. ~4.
    n_r : int
        At most this many columns over the R range of the curves, as a
        power of two per octave: 2048 gives 512 per octave over the usual
        1.3 .. 6.9 (cells 0.14-0.2% of R wide, 0.005 at R = 3.4).

    Returns
    -------
    MaterialLookup
        Every cell holds :func:`estimate_zeff` at its centre (geometric in
        A_high, arithmetic in R), so the two agree to within a cell's
        variation. The table also carries rows above ``a_max`` up to
        A_high = 128 (held values), so that :func:`lookup_zeff` needs no
        row clamp; they cost memory only.

    Raises
    ------
    ValueError
        If ``a_max`` is not above the air threshold or ``n_a``, ``n_r`` are
        not integers >= 2.

    Notes
    -----
    The defaults are set by the iron-copper band: at A_high ~ 1 their
    curves lie only 0.05 apart in R, so Zeff there moves 60 per unit of R
    and ~35 per unit of ln A_high. 256 x 1024 cells put lookup_zeff up to
    0.23 from estimate_zeff in that band; 512 x 2048 keep it within 0.12
    on a simulated bag (and within 0.03 on 99% of its pixels), for a
    table of ~8 MB of which the cells a scan touches are a small part.
    """
    for name, value in (("n_a", n_a), ("n_r", n_r)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    a_min = float(calibration.a_high[0])
    top = calibration.a_high_max if a_max is None else a_max
    try:
        top = float(top)
    except (TypeError, ValueError):
        top = math.nan
    if not (math.isfinite(top) and a_min < top <= _LUT_TOP_A):
        raise ValueError(f"a_max must be a number in ({a_min:g}, {_LUT_TOP_A:g}], got {a_max!r}")
    r_min = float(calibration.ratio.min())
    r_max = float(calibration.ratio.max())
    a_shift = _shift_for(a_min, top, int(n_a))
    r_shift = _shift_for(r_min, r_max, int(n_r))
    # Row 1 starts at the bin holding a_min (exactly at it when a_min is a
    # power of two, as fit_material_calibration makes it); row 0 is air.
    row_origin = _bits(a_min) >> a_shift
    row_last = _bits(_LUT_TOP_A) >> a_shift
    col_low, col_high = _bits(r_min) >> r_shift, _bits(r_max) >> r_shift
    raw_rows = np.arange(row_origin, row_last + 1, dtype=np.int64)
    raw_cols = np.arange(col_low, col_high + 1, dtype=np.int64)
    half_a, half_r = (1 << a_shift) >> 1, (1 << r_shift) >> 1
    # Cell centres: the middle bit pattern is the geometric-ish middle in
    # A_high; for R the arithmetic middle of the bin's two edges.
    a_centre = _from_bits((raw_rows << a_shift) + half_a).astype(np.float64)
    a_centre = np.minimum(a_centre, top)
    r_edges = _from_bits(np.append(raw_cols, raw_cols[-1] + 1) << r_shift).astype(np.float64)
    r_centre = (r_edges[:-1] + r_edges[1:]) / 2
    a_grid = np.repeat(a_centre, raw_cols.size)
    zeff, areal = estimate_zeff(a_grid * np.tile(r_centre, raw_rows.size), a_grid, calibration)
    table = np.empty((raw_rows.size + 1, raw_cols.size, 2), dtype=np.float32)
    table[0, :, 0] = calibration.zeff[0]
    table[0, :, 1] = 0.0
    table[1:, :, 0] = zeff.reshape(raw_rows.size, raw_cols.size)
    table[1:, :, 1] = areal.reshape(raw_rows.size, raw_cols.size)
    table = table.reshape(-1, 2)
    table.flags.writeable = False
    return MaterialLookup(
        table=table,
        rows=raw_rows.size + 1,
        cols=raw_cols.size,
        a_shift=a_shift,
        r_shift=r_shift,
        row_origin=row_origin,
        col_low=col_low,
        col_high=col_high,
        a_min=a_min,
        a_max=top,
        r_min=float(r_edges[0]),
        r_max=float(r_edges[-1]),
    )


def lookup_zeff(
    a_low: np.ndarray,
    a_high: np.ndarray,
    lut: MaterialLookup,
    *,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Zeff and areal density per pixel from a :class:`MaterialLookup`.

    Parameters
    ----------
    a_low, a_high : ndarray
        Low- and high-energy attenuation, same shape (any); float32 avoids
        a conversion.
    lut : MaterialLookup
    out : (zeff, areal_density), optional
        C-contiguous float32 arrays of the inputs' shape to fill (a
        calibrator writes straight into the scan's maps this way).

    Returns
    -------
    zeff, areal_density : ndarray of float32
        As :func:`estimate_zeff` gives at the centre of the pixel's cell
        (``out`` itself when given).

    Raises
    ------
    ValueError
        If the inputs differ in shape or are not real arrays, or ``out``
        does not fit them.

    Notes
    -----
    Per block of pixels, all in 32-bit arithmetic: R = A_low / A_high;
    column ``clip(bits(R) >> r_shift)``; row ``bits(A_high) >> a_shift``;
    one ``np.take`` of the (Zeff, areal) pair, read as one 8-byte item,
    then split into the two maps while the block is still in cache.
    Rows are not clamped: A_high below ``a_min`` (air, zero, negative)
    gives a negative flat index, which ``mode="clip"`` sends to cell 0
    (air), and the table's rows run to A_high = 128, past which (and for
    +inf) its last cell answers. An infinite R lands in the last column, a
    negative one in the first, as in estimate_zeff. NaN inputs give finite
    values, not necessarily estimate_zeff's (a NaN's sign bit decides).
    Blocks of 64k pixels keep the temporaries in the L2 cache.
    """
    low, high = _pair(a_low, a_high, np.float32)
    shape = high.shape
    if out is None:
        out = (np.empty(shape, np.float32), np.empty(shape, np.float32))
    for target in out:
        if target.shape != shape or target.dtype != np.float32 or not target.flags.c_contiguous:
            raise ValueError(f"out must be two C-contiguous float32 arrays of shape {shape}")
    zeff, areal = out[0].reshape(-1), out[1].reshape(-1)
    low, high = low.reshape(-1), high.reshape(-1)
    n = high.size
    table = lut.table.view(np.uint64).reshape(-1)
    cols = np.int32(lut.cols)
    a_shift, r_shift = np.int32(lut.a_shift), np.int32(lut.r_shift)
    col_low, col_high = np.int32(lut.col_low), np.int32(lut.col_high)
    # Flat index = (row_bits - (row_origin - 1)) * cols + (col_bits - col_low).
    offset = np.int64((lut.row_origin - 1) * lut.cols + lut.col_low)
    block = max(1, min(_BLOCK, n))
    ratio = np.empty(block, dtype=np.float32)
    col = ratio.view(np.int32)
    row = np.empty(block, dtype=np.int32)
    index = np.empty(block, dtype=np.intp)
    pairs = np.empty(block, dtype=np.uint64)  # (Zeff, areal) float32 pairs, moved as one item
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, n, block):
            stop = min(start + block, n)
            size = stop - start
            r, c, i, k, p = ratio[:size], col[:size], row[:size], index[:size], pairs[:size]
            np.divide(low[start:stop], high[start:stop], out=r)
            np.right_shift(c, r_shift, out=c)
            np.clip(c, col_low, col_high, out=c)
            np.right_shift(high[start:stop].view(np.int32), a_shift, out=i)
            np.multiply(i, cols, out=i)
            np.add(i, c, out=i)
            np.subtract(i, offset, out=k)
            np.take(table, k, mode="clip", out=p)
            # De-interleave into the two maps (OpenCV's split beats two strided copies).
            cv2.split(p.view(np.float32).reshape(size, 1, 2),
                      [zeff[start:stop].reshape(size, 1), areal[start:stop].reshape(size, 1)])
    return out
