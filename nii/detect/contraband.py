"""The supervised contraband detector: FCOS over the detector image.

:class:`ContrabandDetector` implements :class:`~nii.detect.regions.Detector`:
``detect(calibrated)`` renders :func:`~nii.detect.inputs.detector_image`,
runs the network (on the GPU when there is one) and returns
:class:`~nii.detect.regions.Region` objects carrying the artifact's identity.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes

from nii.calibrate.calibrated import CalibratedScan
from nii.detect.fcos import best_device, fcos_plain, for_inference
from nii.detect.inputs import detector_image
from nii.detect.regions import ModelIdentity, Region, check_score
from nii.scan import ScanKind

__all__ = ["ContrabandDetector", "build_model", "image_tensor", "fit_image"]


def build_model(model_config: Mapping[str, Any], num_classes: int, *, training: bool = False) -> torch.nn.Module:
    """The network a config's ``[model]`` table describes (random weights).

    ``train_min_sizes`` (several short-side sizes) apply when ``training``;
    otherwise ``min_size``.
    """
    keys = ("widths", "depths", "fpn_channels", "head_convs", "max_size")
    options = {k: (tuple(model_config[k]) if isinstance(model_config[k], list) else model_config[k])
               for k in keys if k in model_config}
    sizes = model_config.get("train_min_sizes") if training else None
    options["min_size"] = tuple(sizes) if sizes else model_config.get("min_size", 320)
    if model_config.get("architecture", "fcos-plain") != "fcos-plain":
        raise ValueError(f"unknown architecture {model_config['architecture']!r}; this version builds fcos-plain")
    return fcos_plain(num_classes, **options)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(rows, cols, 3) uint8 RGB to the (3, rows, cols) float tensor in [0, 1] the model takes."""
    # Scans' pixel arrays are read-only; torch wants writable memory to wrap.
    array = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)
    # Planar before float: the model's normalisation and resize run ~2x
    # faster on a contiguous (3, rows, cols) tensor than on a permuted view.
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div_(255.0)


def fit_image(image: np.ndarray, short: int, long: int) -> tuple[np.ndarray, float]:
    """Shrink ``image`` so its short side is at most ``short`` and its long side
    at most ``long``, averaging over areas; the scale applied (1.0: unchanged).

    Training fits every scan this way before the model's own resize, and
    inference must do the same: the model's bilinear resize reads only 2x2
    pixels per output, so shrinking a 1300 px bag four-fold with it alone
    aliases fine texture into noise the detector never saw in training.
    """
    scale = min(1.0, short / min(image.shape[:2]), long / max(image.shape[:2]))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


class ContrabandDetector:
    """A trained FCOS contraband detector.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision FCOS with weights loaded.
    classes : sequence of str
        Class of each label (label ``i + 1`` is ``classes[i]``).
    identity : ModelIdentity
    min_score : float
        Regions scoring below this are dropped. Low (0.05) by default so
        evaluation sees the whole Pd/Pfa curve; the pipeline's operating
        point decides what alarms.
    device : torch.device, optional
        Default: the GPU when there is one.
    operating_points : mapping, optional
        From the model card: name -> {"threshold": ..., ...}.
    """

    def __init__(self, model: torch.nn.Module, classes: Sequence[str], identity: ModelIdentity, *,
                 min_score: float = 0.05, device: torch.device | str | None = None,
                 operating_points: Mapping[str, Mapping[str, float]] | None = None):
        min_score = check_score("min_score", min_score)
        self.device = torch.device(device) if device is not None else best_device()
        self.model = model.to(self.device).eval()
        # Candidates below min_score would be dropped afterwards anyway; the
        # model drops them before its NMS instead, which then has fewer boxes
        # to sort. What survives above min_score is the same: a box is only
        # ever suppressed by a higher-scoring one.
        # (The model keeps scores strictly above its threshold; the float32
        # just below min_score keeps a score of exactly min_score too.)
        if hasattr(self.model, "score_thresh"):
            below = float(np.nextafter(np.float32(min_score), np.float32(0.0)))
            self.model.score_thresh = max(float(self.model.score_thresh), below)
        self.classes = tuple(classes)
        self.identity = identity
        self.min_score = min_score
        self.operating_points = dict(operating_points or {})

    @classmethod
    def from_artifact(cls, artifact: Any, *, device: torch.device | str | None = None,
                      min_score: float = 0.05) -> ContrabandDetector:
        """Build from a verified :class:`~nii.detect.registry.ModelArtifact`."""
        config = tomllib.loads(artifact.read("config.toml").decode())
        classes = artifact.card["classes"]
        model = build_model(config["model"], len(classes))
        state = artifact.state_dict()
        model.load_state_dict(state)
        return cls(for_inference(model), classes, artifact.identity, min_score=min_score, device=device,
                   operating_points=artifact.card.get("operating_points"))

    def applies_to(self, calibrated: CalibratedScan) -> bool:
        """2D projections only (the pipeline skips it for CT volumes)."""
        return calibrated.scan.kind is not ScanKind.CT_VOLUME

    def detect(self, calibrated: CalibratedScan) -> list[Region]:
        """Regions in one calibrated 2D scan, highest score first."""
        return self.detect_images([detector_image(calibrated)])[0]

    @torch.inference_mode()
    def detect_images(self, images: Sequence[np.ndarray]) -> list[list[Region]]:
        """Regions for each of several detector images (one batch)."""
        # Shrunk as in training (fit_image), then to the exact size the
        # model's transform picks; resizing before its normalisation also
        # normalises ~6x fewer pixels of a bag. Boxes then go back to full
        # size as the transform's postprocess would take them.
        short, long = self.model.transform.min_size[-1], self.model.transform.max_size
        small = [self.model.transform.resize(image_tensor(fit_image(image, short, long)[0]).to(self.device))[0]
                 for image in images]
        outputs = self.model(small)
        results = []
        for output, image, after in zip(outputs, images, small):
            keep = output["scores"] >= self.min_score
            boxes = resize_boxes(output["boxes"][keep], after.shape[-2:], image.shape[:2]).cpu().numpy()
            scores = output["scores"][keep].cpu().numpy()
            labels = output["labels"][keep].cpu().numpy()
            results.append([
                Region(self.classes[label - 1], float(score), tuple(float(v) for v in box), self.identity)
                for box, score, label in zip(boxes, scores, labels)
                if 1 <= label <= len(self.classes)
            ])
        return results
