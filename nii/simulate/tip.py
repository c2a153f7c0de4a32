"""Threat image projection (TIP): insert threat signatures into real scans.

TIP puts a threat into a scan the way the physics would have: transmissions
multiply, so attenuations ``A = -ln T`` add, channel by channel. It serves
two users: the data engine (new training scans with exact ground truth) and
operator training (consoles show TIP images to keep screeners alert).

Signatures
    A :class:`ThreatSignature` is the attenuation of one threat per energy
    channel on a tight canvas, with its mask. It comes from the simulator
    (:func:`signature_from_objects`: scene objects through the scanner
    physics) or from real X-ray images of isolated threats
    (:func:`signature_from_grey_image`, :func:`load_gdxray_signatures`).
    :func:`transform_signature` rotates, flips and scales the footprint.

Targets
    Raw single- or dual-energy counts (:func:`project_into_counts`): counts
    above dark current are multiplied by the signature's transmission, with
    optional exact binomial thinning of the photons (noise stays right). Vendor-rendered
    pseudo-colour images (:func:`project_into_rendering`): the rendering is
    inverted to attenuation and material (:func:`estimate_pseudo_colour`),
    the threat is added there and re-rendered (:func:`render_pseudo_colour`)
    under the threat's mask only. An alpha blend would paste the threat on
    top of the bag; this lets clutter show through it as it does in reality.

Ground truth
    Both projections return an annotation dict: ``category``,
    ``dicos_category``, ``bbox_rc`` ``(row0, col0, row1, col1)`` exclusive
    ends in the scan's pixels, ``mask`` (bool, the box's shape), ``source``,
    ``zeff``, ``mass_g`` and ``method="tip"``.

Example
-------
>>> from nii.ingest import read_scan
>>> rng = np.random.default_rng(0)
>>> bag = read_scan("../shared/data/sixray-negatives/N0000001.jpg")  # doctest: +SKIP
>>> sigs = load_gdxray_signatures("../shared/data/gdxray-threats", limit=5)  # doctest: +SKIP
>>> sig = transform_signature(sigs[0], rng)  # doctest: +SKIP
>>> at = choose_location(bag, sig, rng)  # doctest: +SKIP
>>> tip_scan, truth = project_into_rendering(bag, sig, at=at)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import cv2
import numpy as np

from nii.calibrate.palette import (  # re-exported: older code imports them from here
    SIXRAY_PALETTE,
    PseudoColourPalette,
    _opaque,
    estimate_pseudo_colour,
    material_coordinate,
    render_pseudo_colour,
)
from nii.scan import Scan, ScanKind
from nii.simulate.scene import THREAT_CATEGORIES, SceneObject

if TYPE_CHECKING:  # the physics modules are imported where they are used
    from nii.simulate.scanner import ScannerModel

__all__ = [
    "ThreatSignature",
    "PseudoColourPalette",
    "SIXRAY_PALETTE",
    "material_coordinate",
    "signature_from_objects",
    "signature_from_grey_image",
    "load_gdxray_signatures",
    "transform_signature",
    "project_into_counts",
    "estimate_pseudo_colour",
    "render_pseudo_colour",
    "project_into_rendering",
    "choose_location",
]

# DICOS category of threat classes that real-image sets name but the data
# engine does not make (GDXray: shuriken, razor_blade).
_EXTRA_DICOS = {"shuriken": "PROHIBITED_ITEM", "razor_blade": "PROHIBITED_ITEM"}

# Transmission floor: -ln(1e-12) = 27.6 is far beyond any detector.
_T_FLOOR = 1e-12


def _dicos_category(category: str) -> str:
    return THREAT_CATEGORIES.get(category) or _EXTRA_DICOS.get(category, "OTHER")


# ---------------------------------------------------------------------------
# Signature
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class ThreatSignature:
    """The X-ray attenuation of one threat, ready to be projected.

    Parameters
    ----------
    category : str
        Threat class (``"handgun"``, ``"knife"``, ...); the DICOS category
        comes from :data:`nii.simulate.scene.THREAT_CATEGORIES`.
    attenuation : ndarray of float32, shape (C, h, w)
        ``-ln(transmission)`` per energy channel: ``C = 2`` (low, high) for
        dual energy, ``C = 1`` for a grey single-energy signature. Zero
        where the threat is absent. A 2-D array is taken as ``C = 1``.
    mask : ndarray of bool, shape (h, w)
        Footprint of the threat.
    zeff : float, optional
        Effective atomic number of the dominant material; sets the colour
        in pseudo-colour renderings (see :func:`material_coordinate`).
    material : str, optional
        Dominant material (a key of ``nii.simulate.physics.MATERIALS``).
    mass_g : float, optional
        Mass in grams where known (simulated threats).
    source : str
        Where the signature came from, e.g. ``"simulator:baggage-dual-kvp"``
        or ``"gdxray:handgun/B0049_0001.jpg"``.

    Raises
    ------
    ValueError
        If attenuation is not finite and non-negative, shapes disagree, the
        channel count is not 1 or 2, or the mask is empty.
    """

    category: str
    attenuation: np.ndarray
    mask: np.ndarray
    zeff: float | None = None
    material: str | None = None
    mass_g: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        att = np.array(self.attenuation, dtype=np.float32)  # a copy: frozen below
        if att.ndim == 2:
            att = att[None]
        if att.ndim != 3 or att.shape[0] not in (1, 2):
            raise ValueError(f"attenuation must have shape (C, h, w) with C = 1 or 2, got {att.shape}")
        mask = np.array(self.mask)
        if mask.dtype != bool:
            mask = mask != 0
        if mask.shape != att.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} does not match attenuation {att.shape}")
        if mask.size == 0 or not mask.any():
            raise ValueError("signature mask is empty")
        if not np.isfinite(att).all():
            raise ValueError("signature attenuation holds NaN or inf")
        if (att < 0).any():
            raise ValueError("signature attenuation must be non-negative (-ln T with T <= 1)")
        if self.zeff is not None and not (math.isfinite(self.zeff) and self.zeff > 0):
            raise ValueError(f"zeff must be positive, got {self.zeff}")
        if self.mass_g is not None and not (math.isfinite(self.mass_g) and self.mass_g >= 0):
            raise ValueError(f"mass_g must be non-negative, got {self.mass_g}")
        att = np.ascontiguousarray(att)
        mask = np.ascontiguousarray(mask)
        att.flags.writeable = False
        mask.flags.writeable = False
        object.__setattr__(self, "attenuation", att)
        object.__setattr__(self, "mask", mask)

    @property
    def channels(self) -> int:
        """Number of energy channels (1 or 2)."""
        return int(self.attenuation.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the signature canvas."""
        return self.mask.shape  # type: ignore[return-value]

    @property
    def dicos_category(self) -> str:
        """DICOS threat category (``"OTHER"`` for unknown classes)."""
        return _dicos_category(self.category)

    @property
    def transmission(self) -> np.ndarray:
        """``exp(-attenuation)``, shape (C, h, w)."""
        return np.exp(-self.attenuation)


def _crop_to_mask(att: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("signature mask is empty")
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return att[:, r0:r1, c0:c1], mask[r0:r1, c0:c1]


# ---------------------------------------------------------------------------
# Signatures from the simulator
# ---------------------------------------------------------------------------
def _object_density(obj: SceneObject, index: int, densities: Any, materials: Mapping[str, Any]) -> float:
    if densities is not None:
        if isinstance(densities, Mapping):
            if obj.material in densities:
                return float(densities[obj.material])
        else:
            return float(densities[index])
    if obj.density_g_cm3 is not None:
        return float(obj.density_g_cm3)
    if obj.material not in materials:
        raise ValueError(f"unknown material {obj.material!r}; known: {sorted(materials)}")
    return float(materials[obj.material].density_g_cm3)


def signature_from_objects(
    objects: Sequence[SceneObject],
    scanner: "ScannerModel",
    *,
    pixel_mm: float | None = None,
    densities: Mapping[str, float] | Sequence[float] | None = None,
) -> ThreatSignature:
    """Render scene objects through the scanner physics into a signature.

    The objects' areal densities (g/cm^2, one map per material) are summed
    on their joint bounding box and passed through
    :func:`nii.simulate.scanner.transmission`, so the signature carries the
    scanner's polychromatic spectra, beam hardening included.

    Parameters
    ----------
    objects : sequence of SceneObject
        One threat, or the parts of one composite threat (an IED). Boxes are
        in a common frame; only their relative placement matters.
    scanner : ScannerModel
        Scanner whose channels the signature is made for.
    pixel_mm : float, optional
        Pixel pitch the objects are drawn at; defaults to
        ``scanner.pixel_mm``. Where it differs, the footprint is resampled
        to the scanner's pitch (attenuation per pixel is kept).
    densities : mapping or sequence, optional
        Density overrides in g/cm^3: by material name, or one per object.
        Otherwise ``obj.density_g_cm3`` or the material's nominal density.

    Returns
    -------
    ThreatSignature
        Category: the threat class of the heaviest threat object (or of the
        heaviest object when none is a threat); material and ``zeff``: the
        material with the most mass among the threat objects (all objects
        when none is a threat); ``mass_g``: total mass of all objects.
    """
    from nii.simulate import physics
    from nii.simulate import scanner as scanner_mod

    objects = list(objects)
    if not objects:
        raise ValueError("signature_from_objects needs at least one object")
    r0 = min(o.box[0] for o in objects)
    c0 = min(o.box[1] for o in objects)
    r1 = max(o.box[2] for o in objects)
    c1 = max(o.box[3] for o in objects)
    materials = list(dict.fromkeys(o.material for o in objects))
    areal = np.zeros((len(materials), r1 - r0, c1 - c0), np.float64)
    footprint = np.zeros((r1 - r0, c1 - c0), bool)
    pitch = float(pixel_mm if pixel_mm is not None else scanner.pixel_mm)
    pixel_area_cm2 = (pitch / 10.0) ** 2
    mass_by_object: list[float] = []
    for i, obj in enumerate(objects):
        density = _object_density(obj, i, densities, physics.MATERIALS)
        rho_t = np.asarray(obj.thickness_cm, np.float64) * density
        sl = (slice(obj.box[0] - r0, obj.box[2] - r0), slice(obj.box[1] - c0, obj.box[3] - c0))
        areal[materials.index(obj.material)][sl] += rho_t
        footprint[sl] |= obj.mask
        mass = float(rho_t.sum() * pixel_area_cm2)
        mass_by_object.append(mass)
    areal, footprint = _crop_to_mask(areal, footprint)
    factor = pitch / float(scanner.pixel_mm)
    if abs(factor - 1.0) > 1e-6:
        h, w = footprint.shape
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        areal = np.stack([cv2.resize(a.astype(np.float32), size, interpolation=interp) for a in areal])
        footprint = cv2.resize(footprint.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        if not footprint.any():
            raise ValueError("objects vanish when resampled to the scanner's pixel pitch")
    areal = np.where(footprint, np.maximum(areal, 0), 0).astype(np.float32)
    trans = np.asarray(scanner_mod.transmission(areal, materials, scanner), dtype=np.float64)
    att = -np.log(np.clip(trans, _T_FLOOR, 1.0))
    att = np.where(footprint, att, 0.0).astype(np.float32)
    if att.shape[0] > 2:
        raise ValueError(f"scanner {scanner.name} has {att.shape[0]} channels; TIP supports 1 or 2")

    threats = [i for i, o in enumerate(objects) if o.is_threat]
    pool = threats or list(range(len(objects)))
    category = objects[max(pool, key=lambda i: mass_by_object[i])].category
    pool_mass: dict[str, float] = {}
    for i in pool:
        pool_mass[objects[i].material] = pool_mass.get(objects[i].material, 0.0) + mass_by_object[i]
    material = max(pool_mass, key=pool_mass.__getitem__)
    return ThreatSignature(
        category=category,
        attenuation=att,
        mask=footprint,
        zeff=float(physics.effective_z(material)),
        material=material,
        mass_g=float(sum(mass_by_object)),
        source=f"simulator:{scanner.name}",
    )


# ---------------------------------------------------------------------------
# Signatures from real grey X-ray images
# ---------------------------------------------------------------------------
def _grey_attenuation(image: np.ndarray, background: float | None) -> tuple[np.ndarray, float]:
    img = np.asarray(image, dtype=np.float64)
    if background is None:
        background = float(np.percentile(img, 99.0))
    if not background > 0:
        raise ValueError(f"background level must be positive, got {background}")
    att = -np.log(np.clip(img, 0.5, None) / background)
    return np.maximum(att, 0.0), float(background)


def _object_mask(att: np.ndarray, threshold: float) -> np.ndarray:
    """Threshold, open away speckle, keep the large components, dilate the rim."""
    binary = (att > threshold).astype(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, disk)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return np.zeros(att.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.2 * areas.max()) + 1
    mask = np.isin(labels, keep).astype(np.uint8)
    # The rim below the threshold still attenuates: take two pixels of it.
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    return mask.astype(bool)


def _is_cluttered(att: np.ndarray, mask: np.ndarray, threshold: float) -> bool:
    """True where the threat is not alone on an empty belt.

    Either the object mask runs into the image border (a bag around it, or a
    cut-off object), or more than 2 % of the pixels away from it attenuate.
    """
    if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        return True
    away = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return bool(away.any() and (att[away] > threshold).mean() > 0.02)


def _high_to_channels(
    att_high: np.ndarray, material: str, scanner: "ScannerModel"
) -> tuple[np.ndarray, np.ndarray]:
    """Map observed high-channel attenuation to all channels via a 1-D lookup.

    Returns the (C, ...) attenuation and the areal density (g/cm^2) of
    ``material`` that gives ``att_high`` in the scanner's last (high)
    channel, beam hardening included.
    """
    from nii.simulate import scanner as scanner_mod

    grid = np.concatenate([[0.0], np.geomspace(1e-3, 500.0, 1023)]).astype(np.float32)
    trans = np.asarray(scanner_mod.transmission(grid[None, :], [material], scanner), dtype=np.float64)
    a_grid = -np.log(np.clip(trans, _T_FLOOR, 1.0))
    high = np.maximum.accumulate(a_grid[-1])
    keep = np.concatenate([[True], np.diff(high) > 1e-9])  # strictly increasing for interp
    grid_k, high_k = grid[keep].astype(np.float64), high[keep]
    rho_t = np.interp(att_high, high_k, grid_k)
    chans = [np.interp(rho_t, grid_k, a_grid[c][keep]) for c in range(a_grid.shape[0])]
    return np.stack(chans).astype(np.float32), rho_t


def _zeff(material: str) -> float:
    from nii.simulate import physics

    return float(physics.effective_z(material))


def _signature_from_grey_parts(
    att: np.ndarray,
    mask: np.ndarray,
    *,
    category: str,
    material: str,
    source: str,
    scanner: "ScannerModel | None",
) -> ThreatSignature:
    att3, mask = _crop_to_mask(np.where(mask, att, 0.0)[None], mask)
    if scanner is not None:
        att3, _ = _high_to_channels(att3[0], material, scanner)
        att3 = np.where(mask, att3, 0.0)
    return ThreatSignature(
        category=category,
        attenuation=att3.astype(np.float32),
        mask=mask,
        zeff=_zeff(material),
        material=material,
        mass_g=None,
        source=source,
    )


def signature_from_grey_image(
    image: np.ndarray,
    *,
    category: str,
    material: str = "steel",
    source: str,
    background: float | None = None,
    scanner: "ScannerModel | None" = None,
    threshold: float = 0.1,
) -> ThreatSignature:
    """Cut a threat signature out of a grey X-ray image of an isolated threat.

    The image shows one threat on an empty belt (bright background). The
    attenuation is ``A = -ln(I / I_background)``; the mask is ``A >
    threshold`` cleaned by morphology, keeping the large connected
    components, widened by two pixels to take the soft rim. Attenuation
    outside the mask is set to zero (belt noise is not part of the threat)
    and the canvas is cropped to the mask.

    Parameters
    ----------
    image : ndarray, shape (h, w), uint8 or uint16 (or float)
        Grey transmission image, bright = transparent.
    category : str
        Threat class.
    material : str
        Material the threat is made of; sets ``zeff`` and, with a scanner,
        the dual-energy ratio.
    source : str
        Provenance string stored in the signature.
    background : float, optional
        Pixel value of the empty belt; default the 99th percentile (robust
        to noise, right whenever the belt shows in over 1 % of the image).
    scanner : ScannerModel, optional
        Make a signature for this scanner's channels: the grey attenuation
        is taken as the scanner's high channel; the areal density of
        ``material`` giving it is found on a 1-D lookup through
        :func:`nii.simulate.scanner.transmission`, and every channel is the
        attenuation of that areal density. ``A_low / A_high`` is then the
        material's, beam hardening included. Without a scanner the
        signature has one grey channel.
    threshold : float
        Attenuation above which a pixel belongs to the object.

    Returns
    -------
    ThreatSignature
        ``mass_g`` is None: the image pitch is unknown. Saturated detector
        pixels give a lower bound of the attenuation.

    Raises
    ------
    ValueError
        If the image is not 2-D or no object stands out of the background.
    """
    if image.ndim != 2:
        raise ValueError(f"grey image must be 2-D, got shape {image.shape}")
    att, _ = _grey_attenuation(image, background)
    mask = _object_mask(att, threshold)
    if not mask.any():
        raise ValueError(f"no object above attenuation {threshold} in {source}")
    return _signature_from_grey_parts(
        att, mask, category=category, material=material, source=source, scanner=scanner
    )


def load_gdxray_signatures(
    folder: str | os.PathLike,
    *,
    scanner: "ScannerModel | None" = None,
    limit: int | None = None,
    include_cluttered: bool = False,
) -> list[ThreatSignature]:
    """Load GDXray threat crops as steel signatures.

    Parameters
    ----------
    folder : path-like
        ``<folder>/<class>/*.jpg`` (class = sub-folder name, e.g. handgun,
        shuriken, razor_blade), or one class folder holding the images.
    scanner : ScannerModel, optional
        Make dual-energy signatures (see :func:`signature_from_grey_image`).
    limit : int, optional
        At most this many signatures per class (files in sorted order).
    include_cluttered : bool
        GDXray series B0079-B0081 show the threats inside packed bags; their
        cut-outs would carry clutter. They are skipped unless this is True
        (then the mask holds the threat and whatever touches it).

    Returns
    -------
    list of ThreatSignature
        Sources ``"gdxray:<class>/<file>"``. Unreadable files, and files
        that are not single-energy images, are skipped.

    Raises
    ------
    FileNotFoundError
        If ``folder`` is not a folder.
    """
    from nii.ingest import ScanReadError, read_scan

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no GDXray folder at {root}")
    if any(root.glob("*.jpg")):
        class_dirs = [root]
    else:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    signatures: list[ThreatSignature] = []
    threshold = 0.1  # as signature_from_grey_image's default
    for class_dir in class_dirs:
        taken = 0
        for path in sorted(class_dir.glob("*.jpg")):
            if limit is not None and taken >= limit:
                break
            try:
                scan = read_scan(path)
            except ScanReadError:
                continue
            if scan.kind is ScanKind.SINGLE_ENERGY:
                grey = scan.counts
            elif scan.kind is ScanKind.PSEUDO_COLOUR:  # a grey picture stored as RGB
                grey = scan.counts.mean(axis=-1)
            else:
                continue
            att, _ = _grey_attenuation(grey, None)
            mask = _object_mask(att, threshold)
            if not mask.any() or (not include_cluttered and _is_cluttered(att, mask, threshold)):
                continue
            signatures.append(
                _signature_from_grey_parts(
                    att,
                    mask,
                    category=class_dir.name,
                    material="steel",
                    source=f"gdxray:{class_dir.name}/{path.name}",
                    scanner=scanner,
                )
            )
            taken += 1
    return signatures


# ---------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------
def transform_signature(
    sig: ThreatSignature,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.8, 1.2),
    rotate: bool = True,
    flip: bool = True,
) -> ThreatSignature:
    """Randomly rotate, flip and scale a signature's footprint.

    The rotation angle is uniform in [0, 360) and the canvas grows to hold
    the rotated object; a left-right flip happens with probability 1/2; the
    scale is uniform in ``scale_range``. Attenuation is resampled linearly,
    the mask by nearest neighbour. Scaling changes the footprint only, not
    the thickness: attenuation values are kept and ``mass_g`` scales with
    the area.

    Parameters
    ----------
    sig : ThreatSignature
    rng : numpy.random.Generator
    scale_range : (float, float)
        Footprint scale bounds (positive).
    rotate, flip : bool
        Whether to rotate and flip at all.

    Returns
    -------
    ThreatSignature
        Same category, material, zeff and source.
    """
    lo, hi = scale_range
    if not (0 < lo <= hi):
        raise ValueError(f"scale_range must be positive and ordered, got {scale_range}")
    scale = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    angle = float(rng.uniform(0.0, 360.0)) if rotate else 0.0
    att = np.asarray(sig.attenuation)
    mask = np.asarray(sig.mask)
    if flip and rng.random() < 0.5:
        att = att[:, :, ::-1]
        mask = mask[:, ::-1]
    h, w = mask.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w = int(math.ceil(h * sin + w * cos)) + 2
    new_h = int(math.ceil(h * cos + w * sin)) + 2
    matrix[0, 2] += (new_w - 1) / 2.0 - (w - 1) / 2.0
    matrix[1, 2] += (new_h - 1) / 2.0 - (h - 1) / 2.0
    warp = dict(dsize=(new_w, new_h), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    new_att = np.stack(
        [cv2.warpAffine(np.ascontiguousarray(a, np.float32), matrix, flags=cv2.INTER_LINEAR, **warp) for a in att]
    )
    new_mask = (
        cv2.warpAffine(np.ascontiguousarray(mask, np.uint8), matrix, flags=cv2.INTER_NEAREST, **warp) > 0
    )
    if not new_mask.any():
        raise ValueError("signature vanished under the transform (scale too small)")
    new_att = np.where(new_mask, np.maximum(new_att, 0.0), 0.0).astype(np.float32)
    new_att, new_mask = _crop_to_mask(new_att, new_mask)
    return dataclasses.replace(
        sig,
        attenuation=new_att,
        mask=new_mask,
        mass_g=None if sig.mass_g is None else sig.mass_g * scale * scale,
    )


# ---------------------------------------------------------------------------
# Placement helpers
# ---------------------------------------------------------------------------
def _placement(
    spatial: tuple[int, int], sig: ThreatSignature, at: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Scan and signature slices of the overlap of the signature placed at ``at``."""
    rows, cols = spatial
    h, w = sig.shape
    r, c = int(at[0]), int(at[1])
    r0, c0 = max(r, 0), max(c, 0)
    r1, c1 = min(r + h, rows), min(c + w, cols)
    if r0 >= r1 or c0 >= c1:
        raise ValueError(f"signature of shape {(h, w)} at {(r, c)} lies outside the scan {spatial}")
    scan_sl = (slice(r0, r1), slice(c0, c1))
    sig_sl = (slice(r0 - r, r1 - r), slice(c0 - c, c1 - c))
    if not sig.mask[sig_sl].any():
        raise ValueError(f"the part of the signature inside the scan at {(r, c)} is empty")
    return scan_sl, sig_sl


def _annotation(sig: ThreatSignature, scan_sl: tuple[slice, slice], sig_sl: tuple[slice, slice]) -> dict:
    mask = sig.mask[sig_sl]
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    r0 = scan_sl[0].start + int(rows[0])
    c0 = scan_sl[1].start + int(cols[0])
    r1 = scan_sl[0].start + int(rows[-1]) + 1
    c1 = scan_sl[1].start + int(cols[-1]) + 1
    return {
        "category": sig.category,
        "dicos_category": sig.dicos_category,
        "bbox_rc": (r0, c0, r1, c1),
        "mask": mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy(),
        "source": sig.source,
        "zeff": sig.zeff,
        "mass_g": sig.mass_g,
        "method": "tip",
    }


# ---------------------------------------------------------------------------
# Raw counts
# ---------------------------------------------------------------------------
def _dark_block(dark: np.ndarray | float, channels: int, cols: int, col_sl: slice) -> np.ndarray:
    d = np.asarray(dark, dtype=np.float64)
    if d.ndim == 0:
        return np.full((channels, 1, 1), float(d))
    if d.ndim == 1 and d.shape[0] == channels:
        return d[:, None, None]
    if d.ndim == 2 and d.shape == (channels, cols):
        return d[:, None, col_sl]
    raise ValueError(f"dark must be a scalar, ({channels},) or ({channels}, {cols}), got shape {d.shape}")


def project_into_counts(
    scan: Scan,
    signature: ThreatSignature,
    *,
    at: tuple[int, int],
    dark: np.ndarray | float,
    rng: np.random.Generator | None = None,
) -> tuple[Scan, dict]:
    """Insert a signature into raw single- or dual-energy detector counts.

    Per channel, inside the signature's mask placed with its top-left at
    ``at``: ``counts' = dark + (counts - dark) * exp(-A)``. Signatures
    partly outside the scan are clipped (the ground truth follows).

    Parameters
    ----------
    scan : Scan
        ``single_energy`` (rows, cols) or ``dual_energy`` (2, rows, cols)
        raw counts (not log-transformed or inverted images).
    signature : ThreatSignature
        C = 2 into dual energy. C = 1 into single energy. A C = 2 signature
        into a single-energy scan uses its high channel (single-energy
        scanners run at the high end of the tube voltages). A C = 1
        signature into dual energy is refused: it has no low channel; make
        it with a scanner (:func:`signature_from_grey_image`).
    at : (row, col)
        Top-left of the signature canvas in the scan; may be negative.
    dark : float or ndarray
        Dark (offset) counts: a scalar, one per channel ``(C,)`` or one per
        channel and detector column ``(C, cols)``.
    rng : numpy.random.Generator, optional
        Without it the mean is applied (deterministic). With it the photons
        above dark are thinned: each survives with probability ``T``, i.e.
        ``counts - Binomial(counts - dark, 1 - T)``, which is exact for
        photon counting and keeps the noise of the new, lower signal right.
        Counts at or below dark get the mean.

    Returns
    -------
    (Scan, dict)
        The new scan (same dtype; new content-hash id) and the annotation.

    Raises
    ------
    ValueError
        Wrong scan kind, mismatched channels, bad ``dark`` shape, or a
        placement outside the scan.
    """
    if scan.kind is ScanKind.DUAL_ENERGY:
        if signature.channels != 2:
            raise ValueError(
                f"{signature.channels}-channel signature cannot go into a dual-energy scan; "
                "make it dual energy with a scanner model"
            )
        att_all = signature.attenuation
        counts = np.asarray(scan.counts)
    elif scan.kind is ScanKind.SINGLE_ENERGY:
        att_all = signature.attenuation[-1:]
        counts = np.asarray(scan.counts)[None]
    else:
        raise ValueError(f"project_into_counts needs single_energy or dual_energy counts, got {scan.kind.value}")
    channels, _, cols = counts.shape
    scan_sl, sig_sl = _placement(scan.spatial_shape, signature, at)
    dark_b = _dark_block(dark, channels, cols, scan_sl[1])

    mask = signature.mask[sig_sl]
    block = counts[(slice(None), *scan_sl)].astype(np.float64)
    trans = np.exp(-att_all[(slice(None), *sig_sl)].astype(np.float64))
    signal = block - dark_b
    if rng is None:
        new = dark_b + signal * trans
    else:
        photons = np.maximum(np.rint(signal), 0.0)
        residual = signal - photons
        lost = rng.binomial(photons.astype(np.int64), np.clip(1.0 - trans, 0.0, 1.0))
        new = block - lost - residual * (1.0 - trans)
    new = np.where(mask, new, block)

    out = counts.copy()
    if out.dtype.kind in "ui":
        info = np.iinfo(out.dtype)
        new = np.clip(np.rint(new), info.min, info.max)
    out[(slice(None), *scan_sl)] = new.astype(out.dtype)
    if scan.kind is ScanKind.SINGLE_ENERGY:
        out = out[0]
    return scan.replace(counts=out), _annotation(signature, scan_sl, sig_sl)


# ---------------------------------------------------------------------------
# Pseudo-colour renderings (the palette model lives in nii.calibrate.palette)
# ---------------------------------------------------------------------------
def project_into_rendering(
    scan: Scan,
    signature: ThreatSignature,
    *,
    at: tuple[int, int],
    palette: PseudoColourPalette = SIXRAY_PALETTE,
    attenuation_scale: float = 1.0,
) -> tuple[Scan, dict]:
    """Insert a signature into a vendor-rendered pseudo-colour image.

    Under the signature's mask: ``(A_bg, m_bg)`` from
    :func:`estimate_pseudo_colour`; ``A = A_bg + A_sig``; ``m = (A_bg m_bg
    + A_sig m_sig) / A`` (dual-energy material signals mix weighted by
    attenuation); re-rendered with :func:`render_pseudo_colour`, never
    brighter than before in any channel. ``A_sig`` is the signature's high
    (or only grey) channel times ``attenuation_scale``; ``m_sig`` comes from
    its ``zeff`` (:func:`material_coordinate`). Pixels outside the mask, where the
    signature does not attenuate, or behind opaque background stay
    byte-identical (nothing shows through an opaque object).

    Parameters
    ----------
    scan : Scan
        ``pseudo_colour`` (rows, cols, 3) uint8.
    signature : ThreatSignature
    at : (row, col)
        Top-left of the signature canvas; may be partly outside the scan.
    palette : PseudoColourPalette
        Rendering model of the scan's console.
    attenuation_scale : float
        Factor from the signature's attenuation to the rendering's
        brightness scale (1: a signature transmission ``T`` darkens air to
        about ``T`` of white).

    Returns
    -------
    (Scan, dict)
        New scan (new content-hash id) and the annotation.
    """
    if scan.kind is not ScanKind.PSEUDO_COLOUR:
        raise ValueError(f"project_into_rendering needs a pseudo_colour scan, got {scan.kind.value}")
    if not attenuation_scale > 0:
        raise ValueError(f"attenuation_scale must be positive, got {attenuation_scale}")
    scan_sl, sig_sl = _placement(scan.spatial_shape, signature, at)
    block = np.asarray(scan.counts[scan_sl])
    a_sig = signature.attenuation[-1][sig_sl].astype(np.float64) * attenuation_scale
    m_sig = material_coordinate(signature.zeff)
    a_bg, m_bg = estimate_pseudo_colour(block, palette=palette)
    a_bg = a_bg.astype(np.float64)
    a_new = a_bg + a_sig
    m_new = (a_bg * m_bg + a_sig * m_sig) / np.maximum(a_new, 1e-12)
    # Adding an absorber never brightens a channel: the per-channel minimum
    # absorbs the estimate's quantisation error in dark backgrounds.
    rendered = np.minimum(render_pseudo_colour(a_new, m_new, palette=palette), block)
    change = signature.mask[sig_sl] & (a_sig > 0) & ~_opaque(block, palette)
    out = np.array(scan.counts)
    out[scan_sl] = np.where(change[..., None], rendered, block)
    return scan.replace(counts=out), _annotation(signature, scan_sl, sig_sl)


# ---------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------
def _scan_attenuation(scan: Scan) -> np.ndarray:
    """A rough attenuation map of a scan, air about 0, for placement only."""
    if scan.kind is ScanKind.PSEUDO_COLOUR:
        return estimate_pseudo_colour(scan.counts)[0]
    if scan.kind is ScanKind.DUAL_ENERGY:
        img = np.asarray(scan.counts[1], np.float64)
    elif scan.kind is ScanKind.SINGLE_ENERGY:
        img = np.asarray(scan.counts, np.float64)
    else:
        raise ValueError(f"cannot place a signature in a {scan.kind.value} scan")
    air = float(np.percentile(img, 99.5))
    if air <= 0:
        return np.zeros(img.shape, np.float32)
    return np.maximum(-np.log(np.clip(img, 1e-6, None) / air), 0.0).astype(np.float32)


def _object_region(att: np.ndarray, air_threshold: float) -> np.ndarray:
    """Pixels inside the bag: attenuating, closed and hole-filled."""
    region = (att > air_threshold).astype(np.uint8)
    size = max(3, (min(att.shape) // 40) | 1)
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    # Fill holes: background is what the border's flood reaches.
    padded = np.pad(region, 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (region > 0) | holes


def choose_location(
    scan: Scan,
    signature: ThreatSignature,
    rng: np.random.Generator,
    *,
    inside_object: bool = True,
    air_threshold: float = 0.1,
    min_inside: float = 0.9,
) -> tuple[int, int]:
    """Pick a top-left for the signature: within the scan and within the bag.

    The bag is where the scan attenuates above ``air_threshold`` (closed
    and hole-filled, so gaps between items count as inside); for raw counts
    air is taken as the 99.5th percentile of the high channel. A location
    is valid when the whole canvas lies in the scan and at least
    ``min_inside`` of the mask's pixels lie in the bag; one is drawn
    uniformly among the valid ones.

    Parameters
    ----------
    scan : Scan
        ``pseudo_colour``, ``dual_energy`` or ``single_energy``.
    signature : ThreatSignature
    rng : numpy.random.Generator
    inside_object : bool
        False: anywhere in the scan.
    air_threshold : float
        Attenuation above which a pixel is not air.
    min_inside : float
        Fraction of the footprint that must be inside the bag.

    Returns
    -------
    (row, col)

    Raises
    ------
    ValueError
        If the signature is larger than the scan or no location has enough
        of the footprint inside the bag.
    """
    rows, cols = scan.spatial_shape
    h, w = signature.shape
    if h > rows or w > cols:
        raise ValueError(f"signature {(h, w)} is larger than the scan {(rows, cols)}")
    if not inside_object:
        return int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
    region = _object_region(_scan_attenuation(scan), air_threshold)
    # Work at a coarser grid on large scans: coverage is smooth.
    step = max(1, int(max(rows, cols) // 512))
    region_s = cv2.resize(region.astype(np.float32), (math.ceil(cols / step), math.ceil(rows / step)),
                          interpolation=cv2.INTER_AREA)
    mask_s = cv2.resize(signature.mask.astype(np.float32), (max(1, math.ceil(w / step)), max(1, math.ceil(h / step))),
                        interpolation=cv2.INTER_AREA)
    kernel = mask_s / max(float(mask_s.sum()), 1e-9)
    # coverage[r, c] = mean of region over the mask placed with top-left (r, c)
    coverage = cv2.filter2D(region_s, cv2.CV_32F, kernel, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    max_r = (rows - h) // step
    max_c = (cols - w) // step
    coverage = coverage[: max_r + 1, : max_c + 1]
    valid = np.argwhere(coverage >= min_inside)
    if valid.size == 0:
        raise ValueError(
            f"no location puts {min_inside:.0%} of the signature inside the object "
            f"(best {float(coverage.max()):.0%})"
        )
    r, c = valid[int(rng.integers(len(valid)))] * step
    r = int(min(r + rng.integers(0, step), rows - h))
    c = int(min(c + rng.integers(0, step), cols - w))
    return r, c
