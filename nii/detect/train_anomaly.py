"""``nii train configs/anomaly.toml``: train the anomaly model on clear scans and publish it.

The recipe (see :mod:`nii.detect.anomaly` for why it works):

1. read the clear scans the config names, scaled by ``pixel_scale``;
2. take object colours from their dense pixels (:func:`~nii.detect.anomaly.dense_palette`);
3. for each step, cut random crops, put a made-up object into some of
   them (:func:`~nii.detect.anomaly.training_crop`), and teach the network
   to outline it (:func:`~nii.detect.anomaly.anomaly_loss`);
4. evaluate on the config's ``[[evaluate]]`` sets -- the only place threat
   scans are used -- set the operating point on the validation set, and
   publish weights, config and card.

The config has the same shape as the contraband detector's (``[model]``,
``[train]``, ``[[train.data]]``, ``[[evaluate]]``, ``[operating_point]``),
with ``kind = "anomaly"`` in ``[model]``; only ``clear`` and ``simulated``
data with ``threat_rate = 0`` may train it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nii.detect.anomaly import (
    ANOMALY_CLASS,
    AnomalyDetector,
    AnomalyNet,
    anomaly_loss,
    dense_palette,
    to_pixel_scale,
    training_crop,
)
from nii.detect.datasets import load_sample
from nii.detect.evaluate import evaluate_sets
from nii.detect.fcos import training_device
from nii.detect.regions import ModelIdentity
from nii.detect.registry import MODELS_ROOT, check_unpublished
from nii.detect.train import CACHE, learning_rate, load_config, publish_trained, training_samples

__all__ = ["is_anomaly_config", "check_clear_only", "build_anomaly_net", "train_anomaly"]


def is_anomaly_config(config: Mapping[str, Any]) -> bool:
    """True when a training config's ``[model]`` has ``kind = "anomaly"``."""
    return config.get("model", {}).get("kind") == "anomaly"


def check_clear_only(config: Mapping[str, Any]) -> None:
    """Refuse training data that could hold threats: the model must learn clear bags only."""
    for spec in config["train"]["data"]:
        kind = spec.get("kind")
        if kind == "clear" or (kind == "simulated" and float(spec.get("threat_rate", 0.5)) == 0.0):
            continue
        raise ValueError(f"the anomaly model learns from clear scans only; [[train.data]] kind {kind!r} "
                         "may hold threats (use kind 'clear', or 'simulated' with threat_rate = 0)")


def build_anomaly_net(model_config: Mapping[str, Any]) -> AnomalyNet:
    """The network a config's ``[model]`` table describes (random weights)."""
    return AnomalyNet(tuple(model_config.get("widths", (16, 32, 64, 128))),
                      tuple(model_config.get("depths", (1, 2, 2, 3))))


def train_anomaly(
    config_path: str | os.PathLike,
    *,
    models_root: str | os.PathLike = MODELS_ROOT,
    max_steps: int | None = None,
    device: str | None = None,
    cache: str | os.PathLike = CACHE,
    progress: bool = True,
) -> ModelIdentity:
    """Train the anomaly model a config describes, evaluate it, and publish it.

    Parameters are those of :func:`nii.detect.train.train`.

    Returns
    -------
    ModelIdentity
        Name, version and sha256 of the published artifact.
    """
    started = time.monotonic()
    config = load_config(config_path)
    if not is_anomaly_config(config):
        raise ValueError(f"{config_path}: not an anomaly model config ([model] kind = \"anomaly\")")
    check_clear_only(config)
    model_cfg, train_cfg = config["model"], config["train"]
    check_unpublished(model_cfg["name"], str(model_cfg["version"]), models_root)
    torch.set_num_threads(int(train_cfg.get("threads", os.cpu_count() or 1)))
    seed = int(train_cfg.get("seed", 0))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    target = training_device(device)
    scale = float(model_cfg.get("pixel_scale", 0.5))

    samples, sources = training_samples(config, cache=cache, progress=progress)
    images = [to_pixel_scale(load_sample(s.path)[0], scale)
              for s in tqdm(samples, desc="load clear scans", unit="scan", disable=not progress)]
    palette = dense_palette(images, seed=seed)

    model = build_anomaly_net(model_cfg).to(target).train()
    base_lr = float(train_cfg.get("lr", 2e-3))
    optimiser = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=float(train_cfg.get("weight_decay", 0.01)))
    total = int(train_cfg.get("steps", 3000)) if max_steps is None else min(max_steps, int(train_cfg.get("steps", 3000)))
    batch, size = int(train_cfg.get("batch_size", 16)), int(train_cfg.get("crop", 192))
    object_rate = float(train_cfg.get("object_rate", 0.6))
    object_px = tuple(int(v) for v in train_cfg.get("object_px", (12, 90)))
    warmup = min(int(train_cfg.get("warmup_steps", 100)), max(1, total // 5))
    losses = []
    for step in tqdm(range(total), desc="train", unit="step", disable=not progress):
        crops, masks = zip(*(training_crop(images[int(rng.integers(len(images)))], palette, rng, size=size,
                                           object_rate=object_rate, object_px=object_px) for _ in range(batch)))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0).to(target)
        y = torch.from_numpy(np.stack(masks))[:, None].to(target)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, total, base_lr, warmup)
        loss = anomaly_loss(model(x), y)
        if not torch.isfinite(loss):
            raise RuntimeError(f"training diverged at step {step} (loss {loss.item()}); lower lr in the config")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    train_minutes = (time.monotonic() - started) / 60

    model = model.cpu().eval()
    detector = AnomalyDetector(model, ModelIdentity(model_cfg["name"], str(model_cfg["version"]), "unpublished"),
                               pixel_scale=scale, region_threshold=float(model_cfg.get("region_threshold", 0.5)),
                               views=int(model_cfg.get("views", 1)), device=target)
    metrics, operating_points = evaluate_sets(detector, config, cache=cache, progress=progress)
    return publish_trained(
        config_path, model.state_dict(), kind="anomaly",
        detects=("anything a clear bag does not explain, threat or not, as a heat map and regions; "
                 "trained on clear scans only, with made-up objects, never on threats"),
        classes=[ANOMALY_CLASS], sources=sources, steps=total, losses=losses, minutes=train_minutes, device=target,
        metrics=metrics, operating_points=operating_points, models_root=models_root)
