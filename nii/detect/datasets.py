"""Data sets for training and evaluation: boxes per scan, or clear/threat per scan.

Box data sets are lists of :class:`BoxSample` (a scan file and its boxes,
classes already mapped to :data:`~nii.detect.regions.THREAT_CLASSES`). The
readers take the layouts model developers have:

* Pascal VOC (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``)
  -- SIXray ships this way;
* COCO (one JSON; ``nii simulate`` and ``nii tip`` write this, so simulated
  sets are COCO sets);
* YOLO (``images/``, ``labels/`` and ``classes.txt`` or ``data.yaml``);
* a folder of clear scans (no boxes).

Image-level sets are a folder with ``clear/`` and ``threat/`` sub-folders,
read by :func:`read_image_level`. :func:`load_sample` turns a sample into
the detector's input image through the same calibration the pipeline uses.
Labels with no detector class (SIXray's pliers, the simulator's currency)
are dropped from the boxes, not guessed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nii.calibrate.correct import calibrate_with_scanner_profile
from nii.calibrate.profile import CALIBRATION_ROOT
from nii.detect.inputs import detector_image
from nii.detect.regions import canonical_class
from nii.ingest import find_scans, read_scan
from nii.scan import ScanKind

# A reader of one data-set layout: (path[, split]) -> samples.
Reader = Callable[..., "list[BoxSample]"]

__all__ = [
    "BoxSample",
    "ImageLabel",
    "read_voc",
    "read_coco",
    "read_yolo",
    "read_clear",
    "read_box_dataset",
    "read_image_level",
    "is_image_level",
    "load_sample",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True, eq=False)
class BoxSample:
    """One scan file with its ground-truth boxes.

    Parameters
    ----------
    path : Path
        The scan (any format :func:`nii.ingest.read_scan` reads).
    boxes : ndarray of float32, (n, 4)
        ``(x0, y0, x1, y1)`` in the file's pixels.
    classes : tuple of str
        Detector class of each box.
    """

    path: Path
    boxes: np.ndarray
    classes: tuple[str, ...]

    @property
    def image_id(self) -> str:
        return str(self.path)


@dataclasses.dataclass(frozen=True)
class ImageLabel:
    """One scan of an image-level set: is a threat in it?"""

    path: Path
    threat: bool


def _sample(path: Path, boxes: list[list[float]], names: list[str]) -> BoxSample:
    kept = [(box, canonical_class(name)) for box, name in zip(boxes, names) if canonical_class(name) is not None]
    array = np.array([box for box, _ in kept], dtype=np.float32).reshape(-1, 4)
    return BoxSample(path, array, tuple(name for _, name in kept))


def _one_line_when_malformed(layout: str) -> Callable[[Reader], Reader]:
    """Make a reader refuse a malformed data set with one ValueError naming it.

    The readers index into XML, JSON and label files written by other tools;
    a missing key or a wrong type there is the data set's fault, and the user
    is told which set and what, not shown a traceback.
    """
    def wrap(reader: Reader) -> Reader:
        @functools.wraps(reader)
        def read(path: str | os.PathLike, *args: Any) -> list[BoxSample]:
            try:
                return reader(path, *args)
            except (ValueError, OSError):  # already one line, naming the problem
                raise
            except Exception as err:  # noqa: BLE001 - KeyError, ParseError, YAML errors...
                detail = " ".join(str(err).split())[:200]
                raise ValueError(f"{path}: a malformed {layout} data set ({type(err).__name__}: {detail})") from None
        return read
    return wrap


@_one_line_when_malformed("Pascal VOC")
def read_voc(root: str | os.PathLike, split: str | None = None) -> list[BoxSample]:
    """A Pascal VOC data set (all annotations, or those listed in ``split``)."""
    root = Path(root)
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise ValueError(f"{root}: not a Pascal VOC folder (no Annotations/)")
    if split is None:
        files = sorted(annotations.glob("*.xml"))
    else:
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.exists():
            raise ValueError(f"{root}: no split {split!r} ({listing} missing)")
        files = [annotations / f"{line.split()[0]}.xml" for line in listing.read_text().splitlines() if line.strip()]
    samples = []
    for xml in files:
        tree = ET.parse(xml).getroot()
        image = root / "JPEGImages" / f"{xml.stem}.jpg"
        if not image.exists():
            name = tree.findtext("filename") or ""
            image = root / "JPEGImages" / name
        boxes, names = [], []
        for obj in tree.iter("object"):
            b = obj.find("bndbox")
            boxes.append([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            names.append(obj.findtext("name") or "")
        samples.append(_sample(image, boxes, names))
    return samples


@_one_line_when_malformed("COCO")
def read_coco(annotation_file: str | os.PathLike) -> list[BoxSample]:
    """A COCO detection file; ``file_name`` is relative to the file's folder."""
    annotation_file = Path(annotation_file)
    document = json.loads(annotation_file.read_text())
    names = {c["id"]: c["name"] for c in document.get("categories", [])}
    by_image: dict[int, tuple[list, list]] = {image["id"]: ([], []) for image in document["images"]}
    for ann in document.get("annotations", []):
        x, y, w, h = ann["bbox"]
        by_image[ann["image_id"]][0].append([x, y, x + w, y + h])
        by_image[ann["image_id"]][1].append(names.get(ann["category_id"], ""))
    return [_sample(annotation_file.parent / image["file_name"], *by_image[image["id"]]) for image in document["images"]]


def _yolo_names(root: Path) -> list[str]:
    if (root / "classes.txt").exists():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    if (root / "data.yaml").exists():
        import yaml  # only YOLO sets need it; it comes with many tools

        names = yaml.safe_load((root / "data.yaml").read_text()).get("names", [])
        return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    raise ValueError(f"{root}: a YOLO set needs classes.txt or data.yaml naming its classes")


@_one_line_when_malformed("YOLO")
def read_yolo(root: str | os.PathLike) -> list[BoxSample]:
    """A YOLO set: ``images/**``, ``labels/**`` (class cx cy w h, normalised)."""
    import cv2

    root = Path(root)
    names = _yolo_names(root)
    samples = []
    for image in sorted(p for p in (root / "images").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label = root / "labels" / image.relative_to(root / "images").with_suffix(".txt")
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.exists() else []
        height, width = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
        boxes, labels = [], []
        for cls, cx, cy, w, h in ((int(r[0]), *map(float, r[1:5])) for r in rows):
            boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
            labels.append(names[cls])
        samples.append(_sample(image, boxes, labels))
    return samples


def read_clear(folder: str | os.PathLike, start: int = 0, stop: int | None = None) -> list[BoxSample]:
    """Clear scans (no boxes): the ``start:stop`` slice of ``folder``'s scans in name order."""
    sources = sorted(find_scans([folder]), key=lambda s: str(s.path))[start:stop]
    return [BoxSample(Path(s.path), np.zeros((0, 4), np.float32), ()) for s in sources]


def read_box_dataset(path: str | os.PathLike, split: str | None = None) -> list[BoxSample]:
    """Any box data set, by its layout (VOC folder, COCO JSON or folder holding
    ``annotations.json``, YOLO folder)."""
    path = Path(path)
    if (path / "Annotations").is_dir():
        return read_voc(path, split)
    if split is not None:  # silently ignored, the whole set would be scored as if it were the split
        raise ValueError(f"{path}: a split (ImageSets/Main/{split}.txt) applies to Pascal VOC sets only")
    if path.is_file() and path.suffix == ".json":
        return read_coco(path)
    if (path / "annotations.json").exists():
        return read_coco(path / "annotations.json")
    if (path / "labels").is_dir() and (path / "images").is_dir():
        return read_yolo(path)
    raise ValueError(f"{path}: not a box data set (Pascal VOC, COCO or YOLO), nor clear/ + threat/ folders")


def is_image_level(path: str | os.PathLike) -> bool:
    return (Path(path) / "clear").is_dir() and (Path(path) / "threat").is_dir()


def read_image_level(folder: str | os.PathLike) -> list[ImageLabel]:
    """Scans under ``folder/clear`` (threat=False) and ``folder/threat`` (True)."""
    folder = Path(folder)
    if not is_image_level(folder):
        raise ValueError(f"{folder}: an image-level set needs clear/ and threat/ sub-folders")
    return [ImageLabel(Path(s.path), name == "threat")
            for name in ("clear", "threat")
            for s in sorted(find_scans([folder / name]), key=lambda s: str(s.path))]


def load_sample(path: str | os.PathLike, boxes: np.ndarray | None = None,
                profile_root: str | os.PathLike = CALIBRATION_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """The detector's input image for a scan file, with ``boxes`` in its pixels.

    The scan is read and calibrated exactly as the pipeline does; where
    calibration resamples (line-scan aspect), boxes are scaled to match.
    """
    scan = read_scan(path)
    if scan.kind is ScanKind.PSEUDO_COLOUR:
        # detector_image of an archive rendering is the rendering itself;
        # skipping the palette inversion saves ~0.3 s a scan when thousands
        # are loaded for training.
        image = np.ascontiguousarray(scan.counts)
    else:
        image = detector_image(calibrate_with_scanner_profile(scan, profile_root))
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    rows, cols = scan.spatial_shape
    scale = np.array([image.shape[1] / cols, image.shape[0] / rows] * 2, np.float32)
    return image, boxes * scale
