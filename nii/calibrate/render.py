"""Operator image tools: a calibrated scan to the 8-bit RGB image a screener sees.

Every tool is a pure function of a 2D :class:`~nii.calibrate.calibrated.CalibratedScan`
(attenuation ``(C, rows, cols)`` with the high-energy channel last, ``opaque``,
optionally ``zeff`` and ``material_class``) returning a new ``(rows, cols, 3)``
uint8 RGB array; inputs are never modified. :func:`render` dispatches by name:

==================  ========================================================
tool                what the operator sees
==================  ========================================================
``colour``          industry pseudo-colour: hue by material (orange organic,
                    green mixed, blue metal), brightness by attenuation,
                    black where opaque; grey for single-energy scans
``grey``            transmission ``exp(-A_high)``: white air, black opaque
``inverse``         ``255 - grey``
``high_penetration``  attenuation / 4: what is behind thick objects
``low_penetration``   attenuation * 4: thin organics stand out
``organic_only``    organic pixels coloured, the rest washed out light grey
``inorganic_only``  mixed and metal pixels coloured, organics washed out
``edge``            unsharp mask on the colour (or grey) image
``window``          grey stretched over ``window=(a_lo, a_hi)``
==================  ========================================================

``zoom``/``centre`` apply to any tool: the image is rendered whole, then a
region around ``centre`` is enlarged back to the full size.

Speed: ``colour`` is a table lookup, :func:`render_colour_fast` (exactly:
``render(cal) == render_colour_fast(cal.high, material_map(cal.zeff),
cal.opaque)``), 3-5 ms for a 1024 x 768 dual-energy frame on one core
(against ~100 ms evaluating the palette per pixel). The table holds the
palette rendered on a grid of 1024 attenuation by 64 material levels, built
once per palette (``functools.lru_cache``; palettes are frozen and
hashable); a frame is rounded to the grid and gathered, in row blocks that
stay in cache. The pseudo-colour model is :mod:`nii.calibrate.palette`, the
one :func:`nii.calibrate.archive.calibrate_archive` inverts, so a rendering
read back as an archive image gives back its attenuation and material class.
"""

from __future__ import annotations

import functools
import math
import warnings

import cv2
import numpy as np

from nii.calibrate.calibrated import CalibratedScan, MaterialClass, classify_zeff
from nii.calibrate.palette import SIXRAY_PALETTE, PseudoColourPalette, render_pseudo_colour
from nii.calibrate.palette import material_coordinate as _exact_material_coordinate
from nii.scan import ScanKind

__all__ = ["TOOLS", "render", "render_colour_fast", "material_map"]

TOOLS = (
    "colour",
    "grey",
    "inverse",
    "high_penetration",
    "low_penetration",
    "organic_only",
    "inorganic_only",
    "edge",
    "window",
)

# Colour lookup table: 1024 attenuation rows by 64 material columns, one
# uint16 index (row * 64 + column). Rows run from dense to air: row r shows
# A = (1023 - r) * _A_STEP, so row 1023 is air, row 1 is _A_MAX, and row 0
# is black, for opaque pixels and A beyond _A_MAX (transmission < 1e-7,
# nothing a detector sees). The step (0.0157) is finer than 8-bit brightness
# resolves; 64 material levels are finer than the palette's hue resolves
# (five anchors) and than dual-energy Zeff noise.
_A_MAX = 16.0
_A_LEVELS = 1024
_M_LEVELS = 64
_A_STEP = _A_MAX / (_A_LEVELS - 2)
# Rows are computed as the uint16 ``65535 - A / step`` minus this offset:
# saturation at 65535 makes A < 0 (air noise) air, and everything past the
# dense end (A > _A_MAX) lands below the offset, so the combined index
# saturates to 0, the black entry. No clipping pass is needed at either end.
# inf and NaN are another matter: how a float -> int cast treats them differs
# between OpenCV releases and CPUs (OpenCV 5 with AVX-512 makes them 65535,
# air), so they are found and blacked out explicitly.
_ROW_OFFSET = 65536 - _A_LEVELS

# Zeff -> material coordinate for images, through a table on Zeff rounded to
# 1/8 (256 entries: Zeff 0 - 31.9, saturating above; the coordinate is flat
# beyond 26). Exact at the knots (all multiples of 1/8), within 0.0125 of
# material_coordinate between them: under one of the 64 colour levels and
# far under dual-energy Zeff noise, at a twentieth of np.interp's cost.
_ZEFF_STEPS_PER_UNIT = 8.0
_MATERIAL_LUT = _exact_material_coordinate(np.arange(256) / _ZEFF_STEPS_PER_UNIT).astype(np.float32)
_MATERIAL_LUT.flags.writeable = False

# Pixels per block of the colour lookup: a block's inputs, temporaries and
# output (~30 bytes a pixel) stay in cache, where passes over whole frames
# would stream every temporary through memory. Larger blocks amortise the
# per-call overhead of the ~8 OpenCV/numpy calls a block makes.
_BLOCK_PIXELS = 1 << 16

# Tool settings.
_PENETRATION_GAIN = 4.0  # high/low penetration: attenuation divided/multiplied by this
_WASH_FRACTION = 4  # washed-out pixels keep 1/4 of their contrast, as light grey
_EDGE_SIGMA = 2.0  # unsharp mask: Gaussian sigma in pixels ...
_EDGE_AMOUNT = 1.5  # ... and gain of the high-pass added back
_NEAREST_ZOOM = 2.0  # zoom from here on replicates pixels (no invented detail)


# ---------------------------------------------------------------------------
# Colour lookup
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _colour_table(palette: PseudoColourPalette) -> np.ndarray:
    """RGBA bytes packed in uint32, one per (row, material level); built once per palette.

    uint32 so one gather moves a whole pixel (numpy's take is several times
    faster on 4-byte items than on 3-byte rows); the alpha byte is dropped
    afterwards. Read-only: it is shared by every call.
    """
    rows = np.arange(_A_LEVELS)
    attenuation = np.broadcast_to(((_A_LEVELS - 1 - rows) * _A_STEP)[:, None], (_A_LEVELS, _M_LEVELS))
    material = np.arange(_M_LEVELS)[None, :] / (_M_LEVELS - 1)
    rgba = np.zeros((_A_LEVELS, _M_LEVELS, 4), np.uint8)
    rgba[..., :3] = render_pseudo_colour(attenuation, material, palette=palette)
    rgba[0] = 0  # the black row
    table = rgba.reshape(-1, 4).view(np.uint32).reshape(-1)
    table.flags.writeable = False
    return table


def material_map(zeff: np.ndarray) -> np.ndarray:
    """Material coordinate image of a Zeff image, as the ``colour`` tool computes it.

    :func:`~nii.calibrate.palette.material_coordinate` on Zeff rounded to
    1/8, through a 256-entry table: exact at the map's knots, within 0.0125
    elsewhere (less than one of the renderer's 64 material levels), about
    a millisecond a frame. NaN Zeff gives 0 (organic).

    Parameters
    ----------
    zeff : ndarray of float

    Returns
    -------
    ndarray of float32, same shape, in [0, 1]
    """
    zeff = np.asarray(zeff)
    if zeff.dtype not in (np.float32, np.float64):
        zeff = zeff.astype(np.float32)
    flat = np.ascontiguousarray(zeff).reshape(1, -1)
    steps = _zeff_steps(flat, np.empty(flat.shape, np.uint8), np.empty(flat.shape, bool))
    return cv2.LUT(steps, _MATERIAL_LUT).reshape(zeff.shape)


def _zeff_steps(zeff: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
    """|8 Zeff| rounded and saturated to 0..255 in one SIMD pass, NaN as 0, into ``out``.

    Zeff is never negative, and anything below 6 maps to 0 either way. NaN
    is set explicitly: OpenCV's cast of it differs between releases.
    """
    cv2.convertScaleAbs(zeff, dst=out, alpha=_ZEFF_STEPS_PER_UNIT)
    unknown = _not_finite(zeff, work)
    if unknown is not None:
        out[unknown & np.isnan(zeff)] = 0
    return out


def _material_level(m: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Material coordinate to uint16 levels 0 .. _M_LEVELS - 1 (rounded, clipped), into ``out``."""
    cv2.addWeighted(m, float(_M_LEVELS - 1), m, 0.0, 0.0, dst=out, dtype=cv2.CV_16U)
    return cv2.min(out, _M_LEVELS - 1, dst=out)


# Zeff (in 1/8 steps) straight to material levels: the same rounding as
# _material_level applied to _MATERIAL_LUT, so a frame rendered from Zeff
# equals render_colour_fast of material_map(zeff), one table lookup cheaper.
_ZEFF_LEVEL_LUT = _material_level(_MATERIAL_LUT.reshape(1, -1), np.empty((1, 256), np.uint16)).reshape(-1)
_ZEFF_LEVEL_LUT.flags.writeable = False


class _Scratch:
    """Per-call work buffers for one block, reused block after block.

    Reuse keeps them hot in the L2 cache and spares an allocation (and the
    page faults of fresh memory) per temporary per block. Created inside
    each call, never shared: the functions stay pure.
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.zeff_steps = np.empty((rows, cols), np.uint8)
        self.m_level = np.empty((rows, cols), np.uint16)
        self.row = np.empty((rows, cols), np.uint16)
        self.index = np.empty((rows, cols), np.uint16)
        self.index_intp = np.empty((rows, cols), np.intp)
        self.rgba = np.empty((rows, cols), np.uint32)
        self.finite = np.empty((rows, cols), bool)


def _not_finite(x: np.ndarray, work: np.ndarray) -> np.ndarray | None:
    """Where ``x`` is inf or NaN, or None when nowhere (the usual case, one quick pass)."""
    finite = np.isfinite(x, out=work)
    return None if finite.all() else ~finite


def _colour_block(
    a: np.ndarray, m_level: np.ndarray, opaque: np.ndarray, table: np.ndarray, out: np.ndarray, work: _Scratch
) -> None:
    """Fill ``out`` (n, cols, 3) from one block of A, material levels 0-63 and opaque."""
    n = a.shape[0]
    row, index = work.row[:n], work.index[:n]
    # OpenCV's saturating casts round and clip in the same pass (see _ROW_OFFSET).
    cv2.addWeighted(a, -1.0 / _A_STEP, a, 0.0, 65535.0, dst=row, dtype=cv2.CV_16U)
    unknown = _not_finite(a, work.finite[:n])
    black = opaque if unknown is None else opaque | unknown
    if black.any():  # most blocks have none: skip the masked pass
        cv2.bitwise_and(row, 0, dst=row, mask=black.view(np.uint8))
    cv2.addWeighted(row, float(_M_LEVELS), m_level, 1.0, -float(_ROW_OFFSET * _M_LEVELS), dst=index,
                    dtype=cv2.CV_16U)
    np.copyto(work.index_intp[:n], index, casting="unsafe")
    rgba = np.take(table, work.index_intp[:n], mode="wrap", out=work.rgba[:n])  # indices are all valid
    cv2.cvtColor(rgba.view(np.uint8).reshape(*a.shape, 4), cv2.COLOR_RGBA2RGB, dst=out)


def _float_image(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2D (rows, cols), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def _colour_image(
    a_high: np.ndarray,
    opaque: np.ndarray,
    *,
    material: np.ndarray | None = None,
    zeff: np.ndarray | None = None,
    palette: PseudoColourPalette,
) -> np.ndarray:
    """The lookup over row blocks, from a material coordinate or (fused) from Zeff."""
    a = _float_image(a_high, "a_high")
    source = _float_image(material if material is not None else zeff, "material_coordinate")
    if source.shape != a.shape or np.shape(opaque) != a.shape:
        raise ValueError(
            f"a_high, material/zeff and opaque must have one shape, got {a.shape}, {source.shape}, {np.shape(opaque)}"
        )
    opaque = np.ascontiguousarray(opaque, dtype=bool)
    table = _colour_table(palette)
    rows, cols = a.shape
    out = np.empty((rows, cols, 3), np.uint8)
    step = min(rows, max(1, _BLOCK_PIXELS // max(cols, 1)))
    work = _Scratch(step, cols)
    for r0 in range(0, rows, step):
        block = slice(r0, min(r0 + step, rows))
        n = block.stop - r0
        m_level = work.m_level[:n]
        if material is not None:
            _material_level(source[block], m_level)
        else:
            steps = _zeff_steps(source[block], work.zeff_steps[:n], work.finite[:n])
            cv2.LUT(steps, _ZEFF_LEVEL_LUT, dst=m_level)
        _colour_block(a[block], m_level, opaque[block], table, out[block], work)
    return out


def render_colour_fast(
    a_high: np.ndarray,
    material_coordinate: np.ndarray,
    opaque: np.ndarray,
    *,
    palette: PseudoColourPalette = SIXRAY_PALETTE,
) -> np.ndarray:
    """Pseudo-colour RGB by table lookup: the ``colour`` tool's engine.

    :func:`~nii.calibrate.palette.render_pseudo_colour` evaluated once per
    palette on a grid (1024 attenuation levels over 0-16, 64 material
    levels; cached per palette with :func:`functools.lru_cache`), then
    gathered: A and m are rounded to the grid, the pair indexes the table.
    Within a few 8-bit levels of the exact rendering (A rounded to 0.008).
    Opaque pixels and A > 16, inf or NaN are black; A < 0 is air; m is
    clipped to [0, 1].

    Parameters
    ----------
    a_high : ndarray of float, (rows, cols)
        High-energy (or only) attenuation ``-ln T``.
    material_coordinate : ndarray of float, (rows, cols)
        0 organic ... 1 metal (:func:`~nii.calibrate.palette.material_coordinate`
        of Zeff; :func:`material_map` is the fast version ``render`` uses).
    opaque : ndarray of bool, (rows, cols)
    palette : PseudoColourPalette

    Returns
    -------
    ndarray of uint8, (rows, cols, 3)

    Raises
    ------
    ValueError
        If the arrays are not 2D of one shape.
    """
    return _colour_image(a_high, opaque, material=material_coordinate, palette=palette)


# ---------------------------------------------------------------------------
# Grey and class-based tools
# ---------------------------------------------------------------------------
def _grey_level(a_high: np.ndarray, opaque: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Transmission ``exp(-gain A)`` as uint8 (rows, cols): air white, opaque black."""
    a = np.maximum(np.asarray(a_high, np.float32), np.float32(0.0))
    level = np.rint(np.float32(255.0) * np.exp(np.float32(-gain) * a)).astype(np.uint8)
    level[np.asarray(opaque, bool)] = 0
    return level


def _rgb(level: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(level), cv2.COLOR_GRAY2RGB)


def _colour_or_grey(cal: CalibratedScan, palette: PseudoColourPalette, gain: float = 1.0) -> np.ndarray:
    """Colour with attenuation scaled by ``gain``; grey where there is no Zeff."""
    if cal.zeff is None:
        return _rgb(_grey_level(cal.high, cal.opaque, gain))
    a = cal.high if gain == 1.0 else np.asarray(cal.high, np.float32) * np.float32(gain)
    return _colour_image(a, cal.opaque, zeff=cal.zeff, palette=palette)


def _classes(cal: CalibratedScan) -> np.ndarray:
    if cal.material_class is not None:
        return np.asarray(cal.material_class)
    if cal.zeff is not None:
        return classify_zeff(np.asarray(cal.zeff), np.asarray(cal.opaque, bool))
    raise ValueError("organic_only/inorganic_only need material information (zeff or material_class)")


def _only(cal: CalibratedScan, keep_classes: tuple[MaterialClass, ...], palette: PseudoColourPalette) -> np.ndarray:
    """Colour where the class is kept (and where opaque), light grey elsewhere."""
    keep = np.isin(_classes(cal), keep_classes) | np.asarray(cal.opaque, bool)
    grey = _grey_level(cal.high, cal.opaque)
    # Washed out, not erased: the faint outline keeps the operator oriented.
    washed = _rgb(255 - (255 - grey) // _WASH_FRACTION)
    return np.where(keep[..., None], _colour_or_grey(cal, palette), washed)


def _edge(cal: CalibratedScan, palette: PseudoColourPalette) -> np.ndarray:
    """Unsharp mask: image + amount * (image - blur), saturated to uint8."""
    base = _colour_or_grey(cal, palette)
    blur = cv2.GaussianBlur(base, (0, 0), sigmaX=_EDGE_SIGMA)
    return cv2.addWeighted(base, 1.0 + _EDGE_AMOUNT, blur, -_EDGE_AMOUNT, 0.0)


def _window(cal: CalibratedScan, window: tuple[float, float]) -> np.ndarray:
    """Grey, linear in attenuation: a_lo and below white, a_hi and above black."""
    lo, hi = (float(v) for v in window)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        warnings.warn(
            f"degenerate window {window!r}: needs finite a_lo < a_hi; showing the grey image instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return _rgb(_grey_level(cal.high, cal.opaque))
    a = np.asarray(cal.high, np.float32)
    fraction = np.clip((np.float32(hi) - a) / np.float32(hi - lo), 0.0, 1.0)
    level = np.rint(np.float32(255.0) * fraction).astype(np.uint8)
    level[np.asarray(cal.opaque, bool)] = 0
    return _rgb(level)


# ---------------------------------------------------------------------------
# Zoom and dispatch
# ---------------------------------------------------------------------------
def _zoom(image: np.ndarray, zoom: float, centre: tuple[float, float] | None) -> np.ndarray:
    """Enlarge the region around ``centre`` by ``zoom`` back to the full size."""
    rows, cols = image.shape[:2]
    if centre is None:
        centre = ((rows - 1) / 2.0, (cols - 1) / 2.0)
    row, col = (float(v) for v in centre)
    if not (0 <= row <= rows - 1 and 0 <= col <= cols - 1):
        raise ValueError(f"centre must lie in the image (rows {rows}, cols {cols}), got {centre!r}")
    if zoom == 1.0:
        return image
    h, w = max(1, round(rows / zoom)), max(1, round(cols / zoom))
    # Crop centred on the pixel (the lower of the two middle pixels of an
    # even crop lands on the centre, so it shows at the output's middle);
    # near the border it shifts, never shrinks: the zoom factor holds.
    r0 = min(max(math.floor(row + 0.5 - h / 2.0), 0), rows - h)
    c0 = min(max(math.floor(col + 0.5 - w / 2.0), 0), cols - w)
    crop = np.ascontiguousarray(image[r0 : r0 + h, c0 : c0 + w])
    # From 2x, whole pixels are replicated (pixel-centre exact) so nothing is
    # invented between detector pixels; below, linear avoids uneven blocks.
    interpolation = cv2.INTER_NEAREST_EXACT if zoom >= _NEAREST_ZOOM else cv2.INTER_LINEAR
    return cv2.resize(crop, (cols, rows), interpolation=interpolation)


def _check(calibrated: CalibratedScan) -> None:
    att = calibrated.attenuation
    if calibrated.scan.kind is ScanKind.CT_VOLUME or att.ndim != 3 or att.shape[0] not in (1, 2):
        raise ValueError(
            "render needs a 2D projection scan, attenuation (C, rows, cols) with C = 1 or 2; "
            f"got {calibrated.scan.kind.value} with attenuation shape {att.shape}"
        )
    if np.shape(calibrated.opaque) != att.shape[1:]:
        raise ValueError(f"opaque must have shape {att.shape[1:]}, got {np.shape(calibrated.opaque)}")
    for name in ("zeff", "material_class"):
        value = getattr(calibrated, name)
        if value is not None and np.shape(value) != att.shape[1:]:
            raise ValueError(f"{name} must have shape {att.shape[1:]}, got {np.shape(value)}")


def render(
    calibrated: CalibratedScan,
    *,
    tool: str = "colour",
    window: tuple[float, float] | None = None,
    zoom: float = 1.0,
    centre: tuple[float, float] | None = None,
    palette: PseudoColourPalette = SIXRAY_PALETTE,
) -> np.ndarray:
    """Render a calibrated 2D scan for the operator with one of :data:`TOOLS`.

    Parameters
    ----------
    calibrated : CalibratedScan
        Single- or dual-energy (or archive-estimated) projection scan.
    tool : str
        One of :data:`TOOLS` (see the module docstring for what each shows).
    window : (a_lo, a_hi), optional
        Attenuation range for ``tool="window"`` (required there, refused
        elsewhere). A degenerate window (``a_hi <= a_lo`` or not finite)
        warns and shows the grey image.
    zoom : float
        Magnification >= 1 of the region around ``centre``, applied after
        the tool; the output keeps the input's size. Pixels are replicated
        from 2x on (``cv2.INTER_NEAREST_EXACT``), interpolated below.
    centre : (row, col), optional
        Centre of the zoomed region, in pixels of the scan; defaults to
        the image centre. Near a border the region shifts to stay inside.
    palette : PseudoColourPalette
        Colour model of the ``colour``-based tools.

    Returns
    -------
    ndarray of uint8, (rows, cols, 3)
        A new array; ``calibrated`` is not modified.

    Raises
    ------
    ValueError
        Unknown tool; ``window`` missing for or given to the wrong tool;
        ``zoom < 1``; ``centre`` outside the image; not a 2D projection
        scan; ``organic_only``/``inorganic_only`` without zeff or
        material_class.
    """
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {', '.join(TOOLS)}; got {tool!r}")
    if tool == "window" and window is None:
        raise ValueError("tool='window' needs window=(a_lo, a_hi)")
    if tool != "window" and window is not None:
        raise ValueError(f"window applies to tool='window' only, not {tool!r}")
    if not (math.isfinite(zoom) and zoom >= 1.0):
        raise ValueError(f"zoom must be a finite factor >= 1, got {zoom!r}")
    _check(calibrated)

    if tool == "colour":
        image = _colour_or_grey(calibrated, palette)
    elif tool == "grey":
        image = _rgb(_grey_level(calibrated.high, calibrated.opaque))
    elif tool == "inverse":
        image = 255 - _rgb(_grey_level(calibrated.high, calibrated.opaque))
    elif tool == "high_penetration":
        image = _colour_or_grey(calibrated, palette, 1.0 / _PENETRATION_GAIN)
    elif tool == "low_penetration":
        image = _colour_or_grey(calibrated, palette, _PENETRATION_GAIN)
    elif tool == "organic_only":
        image = _only(calibrated, (MaterialClass.ORGANIC,), palette)
    elif tool == "inorganic_only":
        image = _only(calibrated, (MaterialClass.MIXED, MaterialClass.METAL), palette)
    elif tool == "edge":
        image = _edge(calibrated, palette)
    else:
        image = _window(calibrated, window)
    return _zoom(image, float(zoom), centre)
