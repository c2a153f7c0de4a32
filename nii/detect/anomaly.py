"""The unsupervised anomaly model: it learns clear bags only and flags what does not belong.

Threats are rare and new kinds keep appearing, so this model never sees a
threat. It learns from clear scans alone, in the way DRAEM (Zavrtanik et
al., ICCV 2021) learns from defect-free parts: every training crop of a clear
bag may get one *made-up* object superimposed -- a random shape with a
random thickness, in a colour taken from the clear bags' own dense pixels,
laid over the bag by Beer-Lambert multiplication as a real object would be
-- and a small fully convolutional network learns to segment whatever was
added. The made-up objects are shapes, not threats: the network learns
"something here is not part of an ordinary bag", so it can flag pliers,
scissors or hammers it was never shown.

:class:`AnomalyDetector` implements :class:`~nii.detect.regions.Detector`:
a heat map per scan (probability that a pixel belongs to something the clear
bags do not explain) and regions (its connected hot areas), class
``"anomaly"``.

Pixel scale matters: an X-ray pixel is one detector element, whatever the
size of the bag, so scans are scaled by a fixed factor (``pixel_scale``),
never to a fixed image size -- otherwise big clear bags and small threat
bags would differ in apparent object size, and the model would learn the
bag size.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from nii.calibrate.calibrated import CalibratedScan
from nii.detect.fcos import PlainBackbone, best_device
from nii.detect.inputs import detector_image
from nii.detect.regions import ModelIdentity, Region, check_score
from nii.scan import ScanKind

__all__ = [
    "ANOMALY_CLASS",
    "AnomalyNet",
    "to_pixel_scale",
    "dense_palette",
    "synthetic_object",
    "training_crop",
    "anomaly_loss",
    "heat_map_regions",
    "heat_map_overlay",
    "AnomalyDetector",
]

ANOMALY_CLASS = "anomaly"


class AnomalyNet(nn.Module):
    """Four stride-2 stages (:class:`~nii.detect.fcos.PlainBackbone`) and a
    two-scale head: one anomaly logit per pixel at stride 8.

    Parameters
    ----------
    widths, depths : sequences of 4 int
        The backbone's first four stages (strides 2, 4, 8, 16).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), depths: Sequence[int] = (1, 2, 2, 3)):
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError("widths and depths need one entry per stage (4)")
        body = PlainBackbone(tuple(widths) + (widths[-1],), tuple(depths) + (1,))
        self.stem = nn.Sequential(*list(body.children())[:3])  # to stride 8
        self.deep = list(body.children())[3]  # stride 16: context around each stride-8 cell
        self.head = nn.Sequential(
            nn.Conv2d(widths[2] + widths[3], 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] to (N, 1, ceil(H/8), ceil(W/8)) logits."""
        fine = self.stem((images - 0.8) / 0.25)
        coarse = nn.functional.interpolate(self.deep(fine), size=fine.shape[-2:], mode="bilinear",
                                           align_corners=False)
        return self.head(torch.cat([fine, coarse], 1))


def to_pixel_scale(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` resized by a fixed factor (area-averaged), at least 8 px a side.

    Training and detection both go through here, so the model always sees
    objects at the size it learned them.
    """
    size = (max(8, round(image.shape[1] * scale)), max(8, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def dense_palette(images: Sequence[np.ndarray], *, per_image: int = 200, seed: int = 0) -> np.ndarray:
    """Colours of the dense pixels of clear bags, as transmissions in (0, 1].

    A made-up object drawn in these colours looks like the materials the
    scanner really renders (organic orange, mixed green, metal blue), without
    borrowing anything from a threat.

    Returns
    -------
    ndarray, (n, 3) float32
    """
    rng = np.random.default_rng(seed)
    colours = []
    for image in images:
        pixels = image.reshape(-1, 3).astype(np.float32) / 255.0
        brightness = pixels.mean(1)
        dense = pixels[(brightness > 0.08) & (brightness < 0.75)]
        if len(dense):
            colours.append(dense[rng.integers(0, len(dense), min(per_image, len(dense)))])
    if not colours:
        raise ValueError("the clear scans have no dense pixels to take object colours from")
    return np.clip(np.concatenate(colours), 0.02, 1.0)


def _shape_mask(size: tuple[int, int], rng: np.random.Generator, min_px: int, max_px: int) -> np.ndarray:
    """A random object outline: one to three elongated ellipses, rectangles or polygons, touching."""
    rows, cols = size
    mask = np.zeros((rows, cols), np.uint8)
    length = rng.uniform(min_px, max_px)
    centre = np.array([rng.uniform(0.2, 0.8) * cols, rng.uniform(0.2, 0.8) * rows])
    for _ in range(int(rng.integers(1, 4))):
        width = length * rng.uniform(0.12, 0.6)
        angle = rng.uniform(0, 180)
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (max(1, int(length / 2)), max(1, int(width / 2))),
                        angle, 0, 360, 1, -1)
        elif kind == 1:
            box = cv2.boxPoints(((float(centre[0]), float(centre[1])), (float(length), float(width)), float(angle)))
            cv2.fillPoly(mask, [box.astype(np.int32)], 1)
        else:
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.2, 0.5, n) * length
            points = centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
            cv2.fillPoly(mask, [points.astype(np.int32)], 1)
        # The next part joins this one end-on, as a handle joins a blade.
        step = rng.uniform(0.3, 0.6) * length
        theta = np.deg2rad(angle)
        centre = centre + step * np.array([np.cos(theta), np.sin(theta)]) * rng.choice([-1, 1])
        length *= rng.uniform(0.4, 1.0)
    return mask.astype(bool)


def synthetic_object(image: np.ndarray, palette: np.ndarray, rng: np.random.Generator, *,
                     min_px: int = 12, max_px: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Superimpose one made-up object on a clear bag image.

    X-ray transmission multiplies: a pixel behind an object of transmission
    ``t`` per channel becomes ``pixel * t ** thickness``. The thickness varies
    smoothly inside the object, as real objects are thicker in places.

    Parameters
    ----------
    image : ndarray, (rows, cols, 3) uint8
        A clear bag (or a crop of one).
    palette : ndarray, (n, 3)
        Transmissions to draw the object's colour from (:func:`dense_palette`).
    rng : numpy Generator
    min_px, max_px : int
        Range of the object's length in pixels.

    Returns
    -------
    image : ndarray, uint8
        The bag with the object in it.
    mask : ndarray, bool
        Where the object is.
    """
    mask = _shape_mask(image.shape[:2], rng, min_px, max_px)
    if not mask.any():
        return image, mask
    colour = palette[rng.integers(0, len(palette))]
    noise = cv2.GaussianBlur(rng.standard_normal(image.shape[:2]).astype(np.float32), (0, 0), rng.uniform(2, 8))
    noise /= max(1e-6, float(np.abs(noise).max()))
    thickness = rng.uniform(0.5, 1.5) * (1.0 + 0.4 * noise)
    transmission = np.where(mask[..., None], colour[None, None, :] ** np.clip(thickness, 0.2, 3.0)[..., None], 1.0)
    out = np.clip(image.astype(np.float32) * transmission, 0, 255).astype(np.uint8)
    return out, mask


def training_crop(image: np.ndarray, palette: np.ndarray, rng: np.random.Generator, *, size: int = 192,
                  object_rate: float = 0.6, object_px: tuple[int, int] = (12, 90)) -> tuple[np.ndarray, np.ndarray]:
    """One training example: a random square crop of a clear bag, flipped or turned
    at random, holding a made-up object with probability ``object_rate``.

    Bags smaller than the crop are padded with white (air: full transmission).

    Returns
    -------
    crop : ndarray, (size, size, 3) uint8
    mask : ndarray, (size, size) bool
        Where the made-up object is (all False without one).
    """
    rows, cols = image.shape[:2]
    if rows < size or cols < size:
        image = cv2.copyMakeBorder(image, 0, max(0, size - rows), 0, max(0, size - cols), cv2.BORDER_CONSTANT,
                                   value=(255, 255, 255))
        rows, cols = image.shape[:2]
    top, left = int(rng.integers(0, rows - size + 1)), int(rng.integers(0, cols - size + 1))
    crop = image[top:top + size, left:left + size]
    # A bag can lie any way round on the belt.
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    if rng.random() < 0.5:
        crop = crop.transpose(1, 0, 2)
    crop = np.ascontiguousarray(crop)
    if rng.random() < object_rate:
        return synthetic_object(crop, palette, rng, min_px=object_px[0], max_px=object_px[1])
    return crop, np.zeros((size, size), bool)


def anomaly_loss(logits: torch.Tensor, masks: torch.Tensor, *, positive_weight: float = 4.0) -> torch.Tensor:
    """Weighted cross-entropy plus soft Dice between per-cell logits and object masks.

    ``masks`` (N, 1, H, W) at crop resolution are averaged down to the
    logits' cells, so a cell half covered by the object has target 0.5. The
    weight and the Dice term keep the few object cells from being drowned by
    the many clear ones.
    """
    target = nn.functional.adaptive_avg_pool2d(masks.float(), logits.shape[-2:])
    cross_entropy = nn.functional.binary_cross_entropy_with_logits(
        logits, target, pos_weight=torch.tensor(positive_weight, device=logits.device))
    probability = torch.sigmoid(logits)
    dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
    return cross_entropy + dice


def heat_map_regions(heat: np.ndarray, threshold: float, *, min_pixels: int = 1) -> list[tuple[float, tuple[int, int, int, int]]]:
    """Connected areas of a heat map at or above ``threshold``.

    When nothing reaches the threshold, the area around the hottest pixel
    (at half its value) is returned, so every scan has a region whose score
    is the scan's anomaly score and the whole Pd/Pfa curve can be drawn.

    Returns
    -------
    list of (score, (x0, y0, x1, y1))
        Score is the area's highest value; boxes in heat-map pixels,
        exclusive ends; hottest first.
    """
    peak = float(heat.max()) if heat.size else 0.0
    level = threshold if peak >= threshold else peak / 2
    count, labels, stats, _ = cv2.connectedComponentsWithStats((heat >= level).astype(np.uint8), connectivity=8)
    regions = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_pixels:
            continue
        regions.append((float(heat[labels == label].max()), (x, y, x + w, y + h)))
    regions.sort(key=lambda r: -r[0])
    # Below the threshold only the area around the hottest pixel stands for the scan.
    return regions if peak >= threshold else regions[:1]


def heat_map_overlay(image: np.ndarray, heat: np.ndarray, *, floor: float = 0.2, opacity: float = 0.6) -> np.ndarray:
    """The scan with its heat map laid over it, for people to look at.

    Pixels below ``floor`` keep the scan's own colours (the operator still
    reads the materials); hotter ones blend towards the "inferno" colour map.

    Parameters
    ----------
    image : ndarray, (rows, cols, 3) uint8 RGB
    heat : ndarray, (rows, cols) in [0, 1]
        From :meth:`AnomalyDetector.heat_map`.

    Returns
    -------
    ndarray, (rows, cols, 3) uint8 RGB
    """
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} does not match the image {image.shape[:2]}")
    colours = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    weight = (opacity * np.clip((heat - floor) / max(1e-6, 1 - floor), 0, 1))[..., None]
    return (image * (1 - weight) + colours * weight).astype(np.uint8)


class AnomalyDetector:
    """A trained anomaly model behind the :class:`~nii.detect.regions.Detector` interface.

    Parameters
    ----------
    model : AnomalyNet
    identity : ModelIdentity
    pixel_scale : float
        Scans are resized by this factor before the network (see the module notes).
    region_threshold : float
        Heat-map level outlining a region.
    min_score : float
        Regions below this are dropped (low by default: evaluation needs the whole curve).
    views : int
        1, 4 (flips) or 8 (flips and transposes): the heat map is the mean
        over these views of the scan.
    device : torch.device or str, optional
    operating_points : mapping, optional
        From the model card.
    """

    classes = (ANOMALY_CLASS,)
    # It names no threat class: nii evaluate measures whether its regions
    # sit on the threat instead of a per-class mAP.
    class_agnostic = True

    def __init__(self, model: AnomalyNet, identity: ModelIdentity, *, pixel_scale: float = 0.5,
                 region_threshold: float = 0.5, min_score: float = 0.0, views: int = 1,
                 device: torch.device | str | None = None,
                 operating_points: Mapping[str, Mapping[str, float]] | None = None):
        min_score = check_score("min_score", min_score)
        self.device = torch.device(device) if device is not None else best_device()
        self.model = model.to(self.device).eval()
        self.identity = identity
        self.pixel_scale = pixel_scale
        self.region_threshold = region_threshold
        self.min_score = min_score
        if views not in (1, 4, 8):
            raise ValueError(f"views must be 1, 4 or 8, got {views}")
        self.views = views
        self.operating_points = dict(operating_points or {})

    @classmethod
    def from_artifact(cls, artifact: Any, *, device: torch.device | str | None = None,
                      min_score: float = 0.0, region_threshold: float | None = None) -> AnomalyDetector:
        """Build from a verified :class:`~nii.detect.registry.ModelArtifact`."""
        config = tomllib.loads(artifact.read("config.toml").decode())
        model_cfg = config["model"]
        model = AnomalyNet(model_cfg.get("widths", (16, 32, 64, 128)), model_cfg.get("depths", (1, 2, 2, 3)))
        state = artifact.state_dict()
        model.load_state_dict(state)
        return cls(model, artifact.identity, pixel_scale=float(model_cfg.get("pixel_scale", 0.5)),
                   region_threshold=float(region_threshold if region_threshold is not None
                                          else model_cfg.get("region_threshold", 0.5)),
                   views=int(model_cfg.get("views", 1)), min_score=min_score, device=device,
                   operating_points=artifact.card.get("operating_points"))

    @torch.inference_mode()
    def heat_map(self, image: np.ndarray) -> np.ndarray:
        """Anomaly probability per pixel of ``image`` ((rows, cols, 3) uint8), same size, float32."""
        rows, cols = image.shape[:2]
        small = to_pixel_scale(image, self.pixel_scale)
        height, width = small.shape[:2]
        # Padded with air to a multiple of 16, so a flipped view's cells land
        # exactly on the unflipped view's.
        small = cv2.copyMakeBorder(small, 0, -height % 16, 0, -width % 16, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        tensor = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].float().div_(255.0)
        heat = self._views_mean(tensor.to(self.device))[0, 0].cpu().numpy()
        heat = cv2.resize(heat, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)[:height, :width]
        return cv2.resize(heat, (cols, rows), interpolation=cv2.INTER_LINEAR)

    def _views_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean probability over the scan seen as it lies and flipped or turned
        (``views`` of 1, 4 or 8). A bag can lie any way round, so each view is
        as valid as the others, and their mean is steadier than any one."""
        flips = [(), (3,), (2,), (2, 3)][:min(self.views, 4)]
        total = None
        for turned in ([False, True] if self.views == 8 else [False]):
            base = tensor.transpose(2, 3) if turned else tensor
            batch = torch.cat([base.flip(f) if f else base for f in flips])
            probability = torch.sigmoid(self.model(batch))
            for i, f in enumerate(flips):
                view = probability[i:i + 1].flip(f) if f else probability[i:i + 1]
                view = view.transpose(2, 3) if turned else view
                total = view if total is None else total + view
        return total / (len(flips) * (2 if self.views == 8 else 1))

    def applies_to(self, calibrated: CalibratedScan) -> bool:
        """2D projections only (the pipeline skips it for CT volumes)."""
        return calibrated.scan.kind is not ScanKind.CT_VOLUME

    def detect(self, calibrated: CalibratedScan) -> list[Region]:
        """Regions in one calibrated 2D scan, most anomalous first."""
        return self.detect_images([detector_image(calibrated)])[0]

    def detect_images(self, images: Sequence[np.ndarray]) -> list[list[Region]]:
        """Regions for each of several detector images."""
        results = []
        for image in images:
            heat = self.heat_map(image)
            regions = []
            for score, box in heat_map_regions(heat, self.region_threshold, min_pixels=16):
                if score < self.min_score:
                    continue
                w, h = box[2] - box[0], box[3] - box[1]
                regions.append(Region(
                    ANOMALY_CLASS, score, tuple(float(v) for v in box), self.identity,
                    explanation=(f"unlike anything in the clear bags the model learned: anomaly score {score:.2f} "
                                 f"over {w} x {h} px"),
                    measurements={"anomaly_score": round(score, 4), "width_px": w, "height_px": h},
                ))
            results.append(regions)
        return results
