"""TIP composites as a data set: threats projected into real or simulated bags.

Model developers train on these (real backgrounds, exact boxes); checkpoints
make operator-training images the same way. The projection itself lives in
:mod:`nii.simulate.tip`; this module picks backgrounds, signatures and
places, and writes scans plus COCO ground truth like ``nii simulate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from nii.ingest import ScanReadError, ScanSource, find_scans, read_source, write_scan
from nii.ingest.raw import write_raw
from nii.scan import Scan, ScanKind
from nii.simulate import annotations as gt
from nii.simulate import scenes, tip
from nii.simulate.physics import nominal_densities
from nii.simulate.scanner import ScannerModel, load_scanner
from nii.simulate.scene import THREAT_CATEGORIES

__all__ = ["simulated_signatures", "project_signature", "tip_dataset"]

# A threat that does not fit inside the bag at one angle and scale may fit
# at another: draw again, but not forever.
_PLACEMENT_TRIES = 20


def simulated_signatures(scanner: ScannerModel, rng: np.random.Generator, *, n: int) -> list[tip.ThreatSignature]:
    """Threat signatures from the scene generator, rendered on ``scanner``.

    Draws threat-bearing bag scenes and takes each threat group (an IED's
    charge, wires and battery stay together) as one signature.
    """
    densities = nominal_densities()
    signatures: list[tip.ThreatSignature] = []
    while len(signatures) < n:
        scene = scenes.bag_scene(rng, shape=(768, scanner.detector_elements), pixel_mm=scanner.pixel_mm,
                                 threat_rate=1.0)
        groups: dict[Any, list] = {}
        for obj in scene.objects:
            if obj.is_threat:
                groups.setdefault(obj.group if obj.group is not None else id(obj), []).append(obj)
        for parts in groups.values():
            signatures.append(tip.signature_from_objects(parts, scanner, pixel_mm=scene.pixel_mm, densities=densities))
    return signatures[:n]


def project_signature(
    background: Scan,
    signature: tip.ThreatSignature,
    rng: np.random.Generator,
    *,
    scanner: ScannerModel,
    attenuation_scale: float = 1.0,
) -> tuple[Scan, dict[str, Any]]:
    """Put one (randomly transformed) signature somewhere inside the bag.

    Raw single- or dual-energy backgrounds are taken to come from
    ``scanner`` (its dark level is subtracted before the transmission is
    applied); pseudo-colour backgrounds go through the rendering estimate.

    Raises
    ------
    ValueError
        If no placement inside the bag is found, or the kinds do not fit.
    """
    if background.kind is ScanKind.CT_VOLUME:
        raise ValueError("threat image projection takes 2D projection backgrounds, not CT volumes")
    if background.kind is not ScanKind.PSEUDO_COLOUR and background.scanner_id and \
            background.scanner_id != scanner.name:
        # Its dark level and spectra would be another scanner's: the threat
        # would not look as that scanner images it.
        raise ValueError(f"the background comes from {background.scanner_id}, not from the signatures' scanner "
                         f"{scanner.name} (--scanner)")
    last_error: ValueError | None = None
    for _ in range(_PLACEMENT_TRIES):
        placed = tip.transform_signature(signature, rng)
        try:
            at = tip.choose_location(background, placed, rng)
        except ValueError as err:  # too big for this bag at this angle: draw again
            last_error = err
            continue
        if background.kind is ScanKind.PSEUDO_COLOUR:
            return tip.project_into_rendering(background, placed, at=at, attenuation_scale=attenuation_scale)
        dark = np.asarray(scanner.dark_counts, dtype=np.float64)
        if background.kind is ScanKind.SINGLE_ENERGY:
            dark = dark[-1:]
        return tip.project_into_counts(background, placed, at=at, dark=dark, rng=rng)
    raise ValueError(f"no place inside the bag fits the threat after {_PLACEMENT_TRIES} tries: {last_error}")


def tip_dataset(
    out: str | os.PathLike,
    backgrounds: Sequence[str | os.PathLike],
    *,
    signatures: str | os.PathLike = "simulated",
    n: int = 10,
    seed: int = 0,
    scanner: str | os.PathLike = "baggage-dual-kvp",
    attenuation_scale: float = 1.0,
    progress: bool = True,
) -> Path:
    """Make ``n`` TIP composites in ``out/scans/`` with ``out/annotations.json``.

    Parameters
    ----------
    out : path-like
        Output folder.
    backgrounds : sequence of path-like
        Scans or folders of clear bags (pseudo-colour images such as SIXray
        negatives, or raw dual-energy scans from ``scanner``).
    signatures : "simulated" or path-like
        Threats from the scene generator, or a folder of isolated-threat
        images with one sub-folder per class (the GDXray layout).
    n, seed : int
        Composites to make; the same seed and inputs give the same files.
    scanner : str or path-like
        Virtual scanner for simulated signatures and for raw backgrounds.
    attenuation_scale : float
        Scales signature attenuation on rendered backgrounds (GDXray crops
        are darker than SIXray's own threats; 0.6 looks closer).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The COCO annotation file. Each image record names its background.

    Raises
    ------
    ValueError
        No readable background, no signature, or ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    model = load_scanner(scanner)
    missing = [str(p) for p in backgrounds if not Path(p).exists()]
    if missing:
        raise ValueError(f"background path does not exist: {missing[0]}")
    sources: list[ScanSource] = list(find_scans(backgrounds))
    if not sources:
        raise ValueError(f"no background scans found in {', '.join(map(str, backgrounds))}")
    rng = np.random.default_rng([seed, 0x719])
    if str(signatures) == "simulated":
        library = simulated_signatures(model, rng, n=min(n, 64))
    else:
        # Each signature is re-drawn at a random angle and scale, so a few
        # dozen per class go a long way; loading them all takes a minute.
        library = tip.load_gdxray_signatures(signatures, scanner=model, limit=min(n, 64))
    if not library:
        raise ValueError(f"no threat signatures found in {signatures}")
    out = Path(out)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    records, found = [], []
    skipped: list[str] = []
    for index in tqdm(range(n), desc="tip", unit="scan", disable=not progress):
        item_rng = np.random.default_rng([seed, index])
        source = sources[int(item_rng.integers(len(sources)))]
        try:
            background = read_source(source)
            composite, truth = project_signature(background, library[int(item_rng.integers(len(library)))],
                                                 item_rng, scanner=model, attenuation_scale=attenuation_scale)
        except (ScanReadError, ValueError) as err:
            skipped.append(f"{source.path}: {err}")
            continue
        stem = f"tip-{index:06d}"
        if composite.kind is ScanKind.PSEUDO_COLOUR:
            file_name = f"scans/{stem}.png"
            write_scan(composite, out / file_name)
        else:
            write_raw(composite, out / "scans" / f"{stem}.raw")
            file_name = f"scans/{stem}.json"
        rows, cols = composite.spatial_shape
        records.append({"file_name": file_name, "scan_id": composite.scan_id, "height": rows, "width": cols,
                        "background": str(source.path), "background_scan_id": background.scan_id})
        truth = {**truth, "category": _coco_category(truth["category"]), "source_class": truth["category"]}
        found.append([{**gt.coco_annotation(truth, image_shape=(rows, cols)), "source": truth.get("source"),
                       "source_class": truth["source_class"]}])
    if not records:
        raise ValueError(f"no composite could be made; first reason: {skipped[0]}")
    info = {"generator": "nii tip", "scanner": model.name, "seed": seed, "n": n, "signatures": str(signatures),
            "skipped": skipped}
    return gt.write_json(gt.coco_document(records, found, info=info), out / "annotations.json")


def _coco_category(category: str) -> str:
    # GDXray's shuriken and razor blades are bladed prohibited items: the
    # knife class, with the original class kept as source_class.
    return category if category in THREAT_CATEGORIES else "knife"
