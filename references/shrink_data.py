"""Shrink ``../shared/data`` to the detector's training size, for a GPU machine.

A lent GPU machine sees only the checkout and at most 64 MiB of it, while
the real X-ray sets are ~150 MiB of full-size JPEGs. The detector never
looks at them at full size: training fits every scan to the config's
largest training size first (``nii.detect.train._fit``). This script makes
that fit ahead of time, once, into a git-ignored folder with the same
layouts, so a config runs unchanged with ``NII_DATA`` pointing at it:

    python references/shrink_data.py configs/contraband-fcos-gpu.toml nii-data
    NII_DATA=nii-data nii train configs/contraband-fcos-gpu.toml

* ``sixray-subset``: every JPEG fitted, the VOC boxes (and sizes) scaled
  with it, the split lists copied;
* ``sixray-negatives``: every clear bag fitted;
* the config's TIP sets: made here at full size (as ``nii train`` would),
  then fitted into ``nii-data/cache/`` with their COCO boxes scaled. Copy
  that folder to ``runs/cache/`` on the GPU machine. The GDXray folder is
  left empty: the composites are already made.

The copies are JPEG (quality 85): the model card's data hashes are those of
the copies, and they differ from a CPU run's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from nii.detect.train import CACHE, _fit, _path, load_config, resolve_data

QUALITY = [cv2.IMWRITE_JPEG_QUALITY, 85]


def fitted(source: Path, target: Path, short: int, long: int) -> float:
    """Write ``source`` fitted to ``short``/``long`` as JPEG; the scale applied."""
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{source}: not an image")
    small, _ = _fit(image, np.zeros((0, 4), np.float32), short, long)
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(target), small, QUALITY)
    return small.shape[1] / image.shape[1]


def shrink_voc(source: Path, target: Path, short: int, long: int) -> None:
    shutil.copytree(source / "ImageSets", target / "ImageSets", dirs_exist_ok=True)
    (target / "Annotations").mkdir(parents=True, exist_ok=True)
    for xml in tqdm(sorted((source / "Annotations").glob("*.xml")), desc=source.name, unit="scan"):
        tree = ET.parse(xml)
        name = tree.findtext("filename") or f"{xml.stem}.jpg"
        image = source / "JPEGImages" / f"{xml.stem}.jpg"
        image = image if image.exists() else source / "JPEGImages" / name
        scale = fitted(image, target / "JPEGImages" / image.name, short, long)
        for tag in ("width", "height", "xmin", "ymin", "xmax", "ymax"):
            for node in tree.iter(tag):
                node.text = str(round(float(node.text) * scale, 2))
        tree.write(target / "Annotations" / xml.name)


def shrink_folder(source: Path, target: Path, short: int, long: int) -> None:
    for image in tqdm(sorted(source.glob("*.jpg")), desc=source.name, unit="scan"):
        fitted(image, target / image.name, short, long)


def shrink_coco(annotations: Path, target: Path, short: int, long: int) -> None:
    document = json.loads(annotations.read_text())
    scales = {}
    for record in tqdm(document["images"], desc=annotations.parent.name, unit="scan"):
        name = str(Path(record["file_name"]).with_suffix(".jpg"))
        scales[record["id"]] = fitted(annotations.parent / record["file_name"], target / name, short, long)
        record["file_name"] = name
        record["width"], record["height"] = (round(record[k] * scales[record["id"]]) for k in ("width", "height"))
    for ann in document.get("annotations", []):
        ann["bbox"] = [v * scales[ann["image_id"]] for v in ann["bbox"]]
    (target / "annotations.json").write_text(json.dumps(document))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the training config whose sizes and TIP sets to use")
    parser.add_argument("out", type=Path, help="the folder to write (git-ignored, e.g. nii-data)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    model = config["model"]
    short = max(model.get("train_min_sizes", [model.get("min_size", 320)]))
    long = int(model.get("max_size", 448))
    shared = _path("{data}")
    shrink_voc(shared / "sixray-subset", args.out / "sixray-subset", short, long)
    shrink_folder(shared / "sixray-negatives", args.out / "sixray-negatives", short, long)
    (args.out / "gdxray-threats").mkdir(parents=True, exist_ok=True)
    for spec in config["train"]["data"]:
        if spec["kind"] == "tip":
            resolve_data(spec)  # made in runs/cache at full size, as nii train would
            n, seed = int(spec["n"]), int(spec.get("seed", 0))
            folder = f"tip-{Path(str(spec.get('signatures', 'simulated'))).name}-n{n}-seed{seed}"
            shrink_coco(CACHE / folder / "annotations.json", args.out / "cache" / folder, short, long)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    from recipe import run  # references/recipe.py, beside this script

    run(main)
