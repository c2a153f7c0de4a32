"""Ground truth files: COCO JSON for 2D scans, a 3D-box JSON for CT.

COCO is what detection tool chains (torchvision references, pycocotools)
read, so the simulator's output drops into training recipes unchanged.
Masks are COCO *uncompressed* RLE (column-major run lengths, starting with
a run of zeros), which pycocotools and our own :func:`rle_decode` read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nii.simulate.scene import THREAT_CATEGORIES

__all__ = ["COCO_CATEGORIES", "rle_encode", "rle_decode", "coco_document", "volume_document", "write_json"]

# Category ids are fixed so files from different runs can be merged.
COCO_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": i, "name": name, "supercategory": dicos}
    for i, (name, dicos) in enumerate(THREAT_CATEGORIES.items(), start=1)
)
_CATEGORY_ID = {c["name"]: c["id"] for c in COCO_CATEGORIES}


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a boolean mask (full image size)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]  # COCO runs always start with zeros
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    rows, cols = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != rows * cols:
        raise ValueError(f"RLE covers {flat.size} pixels, size says {rows}x{cols}")
    return flat.reshape((rows, cols), order="F")


def coco_annotation(annotation: Mapping[str, Any], *, image_shape: tuple[int, int]) -> dict[str, Any]:
    """One threat annotation (bbox_rc + mask in its box) as a COCO record (ids added later)."""
    r0, c0, r1, c1 = (int(v) for v in annotation["bbox_rc"])
    full = np.zeros(image_shape, dtype=bool)
    full[r0:r1, c0:c1] = annotation["mask"]
    return {
        "category_id": _CATEGORY_ID[annotation["category"]],
        "bbox": [c0, r0, c1 - c0, r1 - r0],
        "area": int(full.sum()),
        "segmentation": rle_encode(full),
        "iscrowd": 0,
        "dicos_category": annotation.get("dicos_category", THREAT_CATEGORIES[annotation["category"]]),
        "mass_g": round(float(annotation["mass_g"]), 3) if annotation.get("mass_g") is not None else None,
        "materials": list(annotation.get("materials", [])),
        "occluded_fraction": annotation.get("occluded_fraction"),
    }


def coco_document(
    images: Sequence[Mapping[str, Any]],
    annotations: Iterable[Sequence[Mapping[str, Any]]],
    *,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Assemble a COCO document; ``annotations[i]`` belong to ``images[i]``.

    Image and annotation ids are 1-based positions, so the same inputs always
    give the same file.
    """
    coco_images, coco_annotations = [], []
    for image_id, (image, records) in enumerate(zip(images, annotations, strict=True), start=1):
        coco_images.append({"id": image_id, **image})
        for record in records:
            coco_annotations.append({"id": len(coco_annotations) + 1, "image_id": image_id, **record})
    return {
        "info": dict(info),
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": list(COCO_CATEGORIES),
    }


def volume_document(
    volumes: Sequence[Mapping[str, Any]],
    objects: Iterable[Sequence[Mapping[str, Any]]],
    *,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """The CT counterpart: volumes and their threats as 3D boxes ``box_zyx``."""
    out_volumes, out_objects = [], []
    for volume_id, (volume, records) in enumerate(zip(volumes, objects, strict=True), start=1):
        out_volumes.append({"id": volume_id, **volume})
        for record in records:
            out_objects.append({"id": len(out_objects) + 1, "volume_id": volume_id, **record})
    return {"info": dict(info), "volumes": out_volumes, "objects": out_objects, "categories": list(COCO_CATEGORIES)}


def write_json(document: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write compact, key-sorted JSON so equal documents give equal bytes."""
    path = Path(path)
    path.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
    return path
