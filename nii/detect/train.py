"""``nii train CONFIG``: train a contraband detector and publish it to the registry.

A config is a small TOML file (see ``configs/contraband-fcos.toml``):

* ``[model]``: name, version and the network (:func:`~nii.detect.contraband.build_model`);
* ``[train]``: epochs, batch size, learning rate, seed, threads, and for long
  runs ``ema_decay`` (publish a moving average of the weights) and
  ``attenuation_jitter`` (see :func:`attenuation_jitter`); ``init =
  "NAME/VERSION"`` starts from a published model's verified weights
  (fine-tuning) instead of random ones;
* ``[[train.data]]``: what it learns from -- Pascal VOC/COCO/YOLO sets,
  folders of clear scans, simulated scans and TIP composites (made by the
  data engine on first use, cached under ``runs/cache/``);
* ``[[evaluate]]``: named sets whose metrics go into the model card; the
  one named by ``operating_point.set`` fixes the alarm threshold at
  ``operating_point.pfa``.

Paths may start with ``{data}``: ``$NII_DATA``, else ``../shared/data``.
The same config and seed give the same weights on the same hardware
(training runs single-process, with seeded shuffling and augmentation).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from nii.config import read_toml
from nii.detect.contraband import ContrabandDetector, build_model, fit_image, image_tensor
from nii.detect.datasets import BoxSample, load_sample, read_box_dataset, read_clear
from nii.detect.evaluate import evaluate_sets
from nii.detect.fcos import for_inference, training_device
from nii.detect.regions import THREAT_CLASSES, ModelIdentity, dicos_category
from nii.detect.registry import (MODELS_ROOT, ModelArtifactError, check_model_identity, check_unpublished,
                                 open_artifact, publish_artifact)

__all__ = ["load_config", "resolve_data", "simulated_set", "training_samples", "flip_augment", "attenuation_jitter",
           "initial_weights", "learning_rate", "train", "publish_trained", "card_markdown", "metrics_markdown"]

CACHE = Path("runs/cache")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training config; one-line ValueError when it is not usable."""
    path = Path(path)
    config = read_toml(path, "the training config")
    for key in ("model", "train"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{path}: the config needs a [{key}] table")
    try:  # checked now, not after an hour of training
        check_model_identity(config["model"].get("name"), config["model"].get("version"))
    except ValueError as err:
        raise ValueError(f"{path}: [model] {err}") from None
    data = config["train"].get("data")
    if not data or not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ValueError(f"{path}: the config needs at least one [[train.data]] table")
    _check_settings(path, "train", config["train"], _TRAIN_SETTINGS)
    _check_settings(path, "model", config["model"], _MODEL_SETTINGS)
    point = config.get("operating_point", {})
    sets = [entry.get("name") for entry in config.get("evaluate", [])]
    if point and point.get("set") not in sets:
        raise ValueError(f"{path}: [operating_point] set must name an [[evaluate]] set ({', '.join(map(str, sets)) or 'none'}); "
                         f"got {point.get('set')!r}")
    if point and not (isinstance(point.get("pfa", 0.05), (int, float)) and 0.0 < point.get("pfa", 0.05) < 1.0):
        raise ValueError(f"{path}: [operating_point] pfa must lie in (0, 1), got {point.get('pfa')!r}")
    return config


# What each setting of the contraband detector's and the anomaly model's
# configs may be: (kind, least value, whether the least is allowed).
# Checked when the config is read, not after an hour of training.
_TRAIN_SETTINGS: dict[str, tuple[type, float, bool]] = {
    "epochs": (int, 1, True), "steps": (int, 1, True), "batch_size": (int, 1, True), "threads": (int, 1, True),
    "seed": (int, 0, True), "warmup_steps": (int, 0, True), "lr": (float, 0.0, False),
    "weight_decay": (float, 0.0, True), "ema_decay": (float, 0.0, True), "attenuation_jitter": (float, 0.0, True),
    "crop": (int, 16, True), "object_rate": (float, 0.0, True), "object_px": (list, 0, True), "data": (list, 0, True),
    "init": (str, 0, True),
}
_MODEL_SETTINGS: dict[str, tuple[type, float, bool]] = {
    "name": (str, 0, True), "version": (str, 0, True), "kind": (str, 0, True), "architecture": (str, 0, True),
    "classes": (list, 0, True), "widths": (list, 0, True), "depths": (list, 0, True), "fpn_channels": (int, 1, True),
    "head_convs": (int, 1, True), "min_size": (int, 32, True), "max_size": (int, 32, True),
    "train_min_sizes": (list, 0, True), "pixel_scale": (float, 0.0, False), "views": (int, 1, True),
    "region_threshold": (float, 0.0, True),
}


def _check_settings(path: Path, table: str, values: Mapping[str, Any], allowed: Mapping[str, tuple[type, float, bool]]) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: [{table}] has unknown settings {', '.join(unknown)} (known: {', '.join(allowed)})")
    for key, value in values.items():
        kind, least, inclusive = allowed[key]
        if kind in (int, float):
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or (kind is int and value != int(value)) or value < least or (value == least and not inclusive):
                bound = f"at least {least:g}" if inclusive else f"above {least:g}"
                raise ValueError(f"{path}: [{table}] {key} must be a {'whole ' if kind is int else ''}number "
                                 f"{bound}, got {value!r}")
        elif (kind is str and not isinstance(value, (str, int, float))) or (kind is list and not isinstance(value, list)):
            raise ValueError(f"{path}: [{table}] {key} must be a {'list' if kind is list else 'string'}, got {value!r}")
    if table == "train" and values.get("ema_decay", 0.0) >= 1.0:
        raise ValueError(f"{path}: [train] ema_decay must be below 1, got {values['ema_decay']!r}")


def _path(text: str) -> Path:
    return Path(text.replace("{data}", os.environ.get("NII_DATA", "../shared/data")))


def resolve_data(spec: Mapping[str, Any], *, cache: str | os.PathLike = CACHE,
                 progress: bool = True) -> list[BoxSample]:
    """The samples one ``[[train.data]]``/evaluation entry names.

    ``kind`` is ``voc``/``coco``/``yolo`` (``path``, ``split``), ``clear``
    (``path``, ``start``, ``stop``), ``simulated`` (``scanner``, ``n``,
    ``seed``, ``threat_rate``) or ``tip`` (``backgrounds`` with
    ``start``/``stop``, ``signatures``, ``n``, ``seed``,
    ``attenuation_scale``). Missing folders raise ``FileNotFoundError``.
    """
    kind = spec.get("kind")
    if kind in ("voc", "coco", "yolo"):
        path = _path(spec["path"])
        if not path.exists():
            raise FileNotFoundError(f"{path}: data set not found")
        return read_box_dataset(path, spec.get("split"))
    if kind == "clear":
        path = _path(spec["path"])
        if not path.exists():
            raise FileNotFoundError(f"{path}: folder of clear scans not found")
        return read_clear(path, spec.get("start", 0), spec.get("stop"))
    if kind == "simulated":
        return read_box_dataset(simulated_set(spec, cache=cache, progress=progress))
    if kind == "tip":
        from nii.simulate.composites import tip_dataset

        backgrounds = [Path(s.path) for s in resolve_data({**spec, "kind": "clear", "path": spec["backgrounds"]}, cache=cache)]
        signatures = spec.get("signatures", "simulated")
        signatures = signatures if signatures == "simulated" else _path(signatures)
        if signatures != "simulated" and not Path(signatures).exists():
            raise FileNotFoundError(f"{signatures}: threat signatures not found")
        n, seed = int(spec["n"]), int(spec.get("seed", 0))
        folder = Path(cache) / f"tip-{Path(str(signatures)).name}-n{n}-seed{seed}"
        if not (folder / "annotations.json").exists():
            tip_dataset(folder, backgrounds, signatures=signatures, n=n, seed=seed,
                        attenuation_scale=float(spec.get("attenuation_scale", 1.0)), progress=progress)
        return read_box_dataset(folder / "annotations.json")
    raise ValueError(f"unknown data kind {kind!r}; use voc, coco, yolo, clear, simulated or tip")


def simulated_set(spec: Mapping[str, Any], *, cache: str | os.PathLike = CACHE, progress: bool = True) -> Path:
    """The annotation file of a simulated set (``scanner``, ``n``, ``seed``,
    ``threat_rate``), simulated into ``cache`` on first use.

    The same spec always gives the same bytes, so the cache is only a
    shortcut: delete it and the set comes back identical.
    """
    from nii.simulate.engine import simulate_dataset

    scanner, n, seed = spec.get("scanner", "baggage-dual-kvp"), int(spec["n"]), int(spec.get("seed", 0))
    rate = float(spec.get("threat_rate", 0.5))
    folder = Path(cache) / f"simulated-{scanner}-n{n}-seed{seed}-threat{rate}"
    if not (folder / "annotations.json").exists():
        simulate_dataset(folder, scanner=scanner, n=n, seed=seed, threat_rate=rate, progress=progress)
    return folder / "annotations.json"


def _digest(samples: Sequence[BoxSample]) -> str:
    """sha256 over every sample's file bytes, boxes and classes (the card's data hash)."""
    total = hashlib.sha256()
    for sample in samples:
        total.update(hashlib.sha256(Path(sample.path).read_bytes()).digest())
        total.update(np.ascontiguousarray(sample.boxes, np.float32).tobytes())
        total.update("|".join(sample.classes).encode())
    return total.hexdigest()


def training_samples(config: Mapping[str, Any], *, cache: str | os.PathLike = CACHE,
                     progress: bool = True) -> tuple[list[BoxSample], list[dict]]:
    """All training samples, and per entry a record for the model card."""
    samples, sources = [], []
    for spec in config["train"]["data"]:
        part = resolve_data(spec, cache=cache, progress=progress)
        part = part * int(spec.get("repeat", 1))
        sources.append({**spec, "samples": len(part), "sha256": _digest(part)})
        samples.extend(part)
    return samples, sources


def _fit(image: np.ndarray, boxes: np.ndarray, short: int, long: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~nii.detect.contraband.fit_image`, with the boxes scaled alike."""
    image, scale = fit_image(image, short, long)
    return image, boxes * scale if scale < 1.0 else boxes


def flip_augment(image: np.ndarray, boxes: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Flips and quarter turns: a bag can lie any way round on the belt."""
    h, w = image.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        image, boxes[:, [0, 2]] = image[:, ::-1], w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        image, boxes[:, [1, 3]] = image[::-1], h - boxes[:, [3, 1]]
    if rng.random() < 0.5:  # transpose: (x, y) -> (y, x)
        image, boxes = image.transpose(1, 0, 2), boxes[:, [1, 0, 3, 2]]
    return np.ascontiguousarray(image), boxes


def attenuation_jitter(image: np.ndarray, spread: float, rng: random.Random) -> np.ndarray:
    """Scale the attenuation of a rendered bag by a random factor.

    Brightness in a pseudo-colour rendering follows transmission, exp(-mu t),
    so raising it to the power k is roughly the same bag k times as thick:
    the detector sees lighter and heavier packing than the archive holds.
    ``k`` is log-uniform in [1/(1+spread), 1+spread]. The hue is left as it
    is (a real thicker bag would also shift it), which is why this is an
    augmentation, not physics.
    """
    if spread <= 0:
        return image
    k = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(spread))
    table = np.round(255.0 * (np.arange(256) / 255.0) ** k).astype(np.uint8)
    return cv2.LUT(image, table)


def initial_weights(init: str, model: torch.nn.Module, models_root: str | os.PathLike = MODELS_ROOT) -> dict[str, str]:
    """Load a published model's weights into ``model`` (``init = "NAME/VERSION"``).

    The artifact is verified like any other load, so a fine-tuned model's
    card can name exactly what it started from.

    Returns
    -------
    dict
        ``name``, ``version`` and ``sha256`` of the starting artifact.

    Raises
    ------
    ValueError
        One line: ``init`` is not NAME/VERSION, the artifact is missing or
        fails verification, or its network is not this config's.
    """
    name, _, version = str(init).partition("/")
    if not name or not version:
        raise ValueError(f"[train] init must be NAME/VERSION of a published model, like contraband-fcos/1.2.0; got {init!r}")
    try:
        artifact = open_artifact(name, version, models_root)
        state = artifact.state_dict()
        model.load_state_dict(state)
    except ModelArtifactError as err:
        raise ValueError(f"[train] init {init}: {err}") from None
    except RuntimeError:  # load_state_dict: missing keys or other shapes
        raise ValueError(f"[train] init {init}: its network differs from this config's [model] "
                         "(widths, depths, channels or classes)") from None
    return {"name": name, "version": version, "sha256": artifact.identity.sha256}


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(
    config_path: str | os.PathLike,
    *,
    models_root: str | os.PathLike = MODELS_ROOT,
    max_steps: int | None = None,
    device: str | None = None,
    cache: str | os.PathLike = CACHE,
    progress: bool = True,
) -> ModelIdentity:
    """Train the detector a config describes, evaluate it, and publish it.

    Parameters
    ----------
    config_path : path-like
        The TOML config (copied verbatim into the artifact).
    models_root : path-like
        Registry root to publish into.
    max_steps : int, optional
        Stop after this many optimiser steps (smoke tests).
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default the GPU when there is one.
    cache : path-like
        Where simulated and TIP sets are made on first use.

    Returns
    -------
    ModelIdentity
        Name, version and sha256 of the published artifact.
    """
    started = time.monotonic()
    config = load_config(config_path)
    model_cfg, train_cfg = config["model"], config["train"]
    check_unpublished(model_cfg["name"], str(model_cfg["version"]), models_root)
    torch.set_num_threads(int(train_cfg.get("threads", os.cpu_count() or 1)))
    seed = int(train_cfg.get("seed", 0))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    target = training_device(device)
    classes = list(model_cfg.get("classes", THREAT_CLASSES))
    model = build_model(model_cfg, len(classes), training=True)
    # Checked before the data are made, which can take minutes.
    init = initial_weights(train_cfg["init"], model, models_root) if "init" in train_cfg else None

    samples, sources = training_samples(config, cache=cache, progress=progress)
    batch = int(train_cfg.get("batch_size", 8))
    if len(samples) < batch:
        raise ValueError(f"{config_path}: [train] batch_size {batch} is more than the {len(samples)} training samples")
    short = max(model_cfg.get("train_min_sizes", [model_cfg.get("min_size", 320)]))
    long = int(model_cfg.get("max_size", 448))
    cached = []
    for sample in tqdm(samples, desc="load training scans", unit="scan", disable=not progress):
        image, boxes = load_sample(sample.path, sample.boxes)
        image, boxes = _fit(image, boxes, short, long)
        labels = np.array([classes.index(c) + 1 for c in sample.classes], np.int64)
        cached.append((image, boxes, labels))

    model = model.to(target).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=float(train_cfg.get("lr", 2e-3)),
                                  weight_decay=float(train_cfg.get("weight_decay", 0.05)))
    epochs = int(train_cfg.get("epochs", 1))
    steps_per_epoch = max(1, len(cached) // batch)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    warmup = min(int(train_cfg.get("warmup_steps", 200)), max(1, total // 5))
    # An exponential moving average of the weights: long from-scratch runs
    # end on a smoother, better model than their last noisy step.
    ema_decay = float(train_cfg.get("ema_decay", 0.0))
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
                                               use_buffers=True) if ema_decay > 0 else None)
    jitter = float(train_cfg.get("attenuation_jitter", 0.0))
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    step, losses = 0, []
    while step < total:
        order = list(range(len(cached)))
        rng.shuffle(order)
        for first in range(0, len(order) - batch + 1, batch):
            if step >= total:
                break
            images, targets = [], []
            for index in order[first:first + batch]:
                image, boxes = flip_augment(cached[index][0], cached[index][1], rng)
                image = attenuation_jitter(image, jitter, rng)
                images.append(image_tensor(image).to(target))
                targets.append({"boxes": torch.from_numpy(boxes).float().to(target),
                                "labels": torch.from_numpy(cached[index][2]).to(target)})
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(step, total, float(train_cfg.get("lr", 2e-3)), warmup)
            loss_parts = model(images, targets)
            loss = sum(loss_parts.values())
            if not torch.isfinite(loss):
                raise RuntimeError(f"training diverged at step {step} (loss {loss.item()}); lower lr in the config")
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    train_minutes = (time.monotonic() - started) / 60

    model = (ema.module if ema is not None else model).cpu().eval()
    name, version = model_cfg["name"], str(model_cfg["version"])
    provisional = ModelIdentity(name, version, "unpublished")
    evaluated = build_model(model_cfg, len(classes))
    evaluated.load_state_dict(model.state_dict())
    # Evaluated as it will ship: from_artifact prepares it the same way.
    detector = ContrabandDetector(for_inference(evaluated), classes, provisional, device=target)
    metrics, operating_points = evaluate_sets(detector, config, cache=cache, progress=progress)
    return publish_trained(
        config_path, model.state_dict(), kind="contraband-fcos",
        detects="potential threat objects in 2D X-ray projections (pseudo-colour or calibrated dual-energy)",
        classes=classes, sources=sources, steps=step, losses=losses, minutes=train_minutes, device=target,
        metrics=metrics, operating_points=operating_points, models_root=models_root, init=init)


def publish_trained(config_path: str | os.PathLike, state: Mapping[str, torch.Tensor], *, kind: str, detects: str,
                    classes: Sequence[str], sources: Sequence[Mapping[str, Any]], steps: int,
                    losses: Sequence[float], minutes: float, device: torch.device,
                    metrics: Mapping[str, Any], operating_points: Mapping[str, Any],
                    models_root: str | os.PathLike = MODELS_ROOT,
                    init: Mapping[str, str] | None = None) -> ModelIdentity:
    """Publish a trained network: weights, its config verbatim, and the model card.

    The card records what was learned from (each source's sha256), how long
    and where, and the metrics and operating points measured after training.
    """
    config = load_config(config_path)
    model_cfg = config["model"]
    card = {
        "kind": kind,
        "detects": detects,
        "classes": list(classes),
        "dicos_categories": {c: dicos_category(c) for c in classes},
        "architecture": {k: v for k, v in model_cfg.items() if k not in ("name", "version")},
        "training": {
            "data": list(sources),
            "data_sha256": hashlib.sha256("".join(s["sha256"] for s in sources).encode()).hexdigest(),
            "steps": steps,
            "final_loss": float(np.mean(losses[-50:])) if len(losses) else None,
            "minutes": round(minutes, 1),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            **({"init": dict(init)} if init else {}),
        },
        "metrics": metrics,
        "operating_points": operating_points,
    }
    weights = io.BytesIO()
    torch.save(dict(state), weights)
    name, version = model_cfg["name"], str(model_cfg["version"])
    files = {"weights.pt": weights.getvalue(), "config.toml": Path(config_path).read_bytes()}
    return publish_artifact(name, version, files, card, models_root, card_markdown=card_markdown(card, name, version))


def card_markdown(card: Mapping[str, Any], name: str, version: str) -> str:
    """The human-readable model card (the JSON card is the record)."""
    lines = [f"# Model card: {name} {version}", "", card["detects"], "",
             "| class | DICOS threat category |", "| --- | --- |"]
    lines += [f"| {c} | {card['dicos_categories'][c]} |" for c in card["classes"]]
    lines += ["", "## Training data", "", "| kind | source | samples | sha256 |", "| --- | --- | --- | --- |"]
    for s in card["training"]["data"]:
        source = s.get("path") or s.get("scanner") or s.get("backgrounds", "")
        lines.append(f"| {s['kind']} | {source} {s.get('split', '')} | {s['samples']} | {s['sha256'][:16]} |")
    t = card["training"]
    lines += ["", f"All data sha256: `{t['data_sha256']}`. {t['steps']} steps in {t['minutes']} min on {t['device']} "
              f"({t['threads']} threads), torch {t['torch']}."]
    if "init" in t:
        lines.append(f"Fine-tuned from {t['init']['name']} {t['init']['version']} (sha256 `{t['init']['sha256'][:16]}`).")
    lines += ["", "## Metrics", ""]
    lines += metrics_markdown(card["metrics"])
    lines += ["## Operating points", "", "```json", json.dumps(card["operating_points"], indent=2), "```", ""]
    return "\n".join(lines)


def metrics_markdown(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown lines: one JSON block per evaluation set."""
    lines = []
    for set_name, m in metrics.items():
        lines += [f"### {set_name}", "", "```json", json.dumps(m, indent=2), "```", ""]
    return lines
