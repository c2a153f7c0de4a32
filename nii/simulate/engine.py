"""The data engine's recipe: scene -> physics -> detector -> Scan, with ground truth.

One function simulates one scan from a seeded generator; another writes a
whole data set (scans in the foundation's formats plus ``annotations.json``)
using a process pool. Scan ``i`` of a run draws only from
``default_rng([seed, i])``, so the same seed gives the same bytes whatever
the number of workers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from nii.ingest import write_scan
from nii.ingest.raw import write_raw
from nii.scan import Scan, ScanKind
from nii.simulate import annotations as gt
from nii.simulate import detector, scenes
from nii.simulate.physics import nominal_densities
from nii.simulate.scanner import ScannerModel, load_scanner, transmission
from nii.simulate.scene import Scene, VolumeScene

__all__ = ["SCENE_KINDS", "SimulatedScan", "default_scene", "simulate_scan", "simulate_dataset", "write_calibration_acquisitions"]

SCENE_KINDS = ("bag", "parcel", "cargo", "ct")
_FORMATS = ("raw", "dicos")
# Acquisition times start here and advance per scan, so files carry plausible
# but reproducible timestamps (never the wall clock: same seed, same bytes).
_EPOCH = datetime(2026, 1, 5, 6, 0, 0)
# Step-wedge thicknesses (cm) per reference material, spanning organic to
# opaque, for each kind of scanner: MeV cargo beams need ten times more.
STEP_WEDGES: Mapping[str, Mapping[str, tuple[float, ...]]] = {
    "line": {
        "pom": (0.5, 1, 2, 4, 8, 16),
        "pmma": (0.5, 1, 2, 4, 8, 16),
        "water": (1, 2, 4, 8, 16),
        "aluminium": (0.25, 0.5, 1, 2, 4, 8),
        "iron": (0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
        "copper": (0.05, 0.1, 0.2, 0.4, 0.8),
        "lead": (0.02, 0.05, 0.1, 0.2, 0.4),
    },
    "cargo": {
        "polyethylene": (5, 10, 20, 40, 80),
        "water": (5, 10, 20, 40, 80),
        "aluminium": (2, 5, 10, 20, 40),
        "iron": (1, 2, 5, 10, 20, 30),
        "lead": (0.5, 1, 2, 5, 10),
    },
}


def default_scene(scanner: ScannerModel) -> str:
    """The scene a scanner is built for: ct, cargo, or bag for line scanners."""
    return {"ct": "ct", "cargo": "cargo"}.get(scanner.kind, "bag")


@dataclasses.dataclass(frozen=True, eq=False)
class SimulatedScan:
    """A simulated scan with its exact ground truth.

    ``threats`` are in the scan's own pixel (or voxel) coordinates: for 2D
    scans ``bbox_rc`` and a boolean ``mask`` inside it; for CT ``box_zyx``.
    ``scene`` is the layout it was made from (objects, materials, manifest
    and, for cargo, ``manifest_truth``: what the container really holds).
    """

    scan: Scan
    scene_kind: str
    threats: list[dict[str, Any]]
    scene: Scene | VolumeScene

    @property
    def manifest_truth(self) -> dict[str, Any] | None:
        return getattr(self.scene, "manifest_truth", None) if self.scene_kind == "cargo" else None


_DEFAULT_SHAPE = {"bag": 768, "parcel": 512}


def simulate_scan(
    scanner: ScannerModel,
    rng: np.random.Generator,
    *,
    scene: str = "bag",
    threat_rate: float = 0.5,
    clear_bag_rate: float = 0.1,
    index: int = 0,
    shape: tuple[int, ...] | None = None,
) -> SimulatedScan:
    """Simulate one scan on ``scanner``.

    Parameters
    ----------
    scanner : ScannerModel
        A line or cargo scanner for 2D scenes, a CT scanner for ``"ct"``.
    rng : numpy.random.Generator
        The only source of randomness.
    scene : {"bag", "parcel", "cargo", "ct"}
        What is on the belt.
    threat_rate, clear_bag_rate : float
        Probability that a bag holds a threat, and that it is a clear
        (see-through) bag.
    index : int
        Position in a run: sets the acquisition time and the detector's slow
        drift (a scanner drifts over a day of scans).
    shape : tuple of int, optional
        Scene size in pixels (``(rows, cols)``, cols at most the detector's
        elements) or voxels for CT. Defaults: 768 lines of bag, 512 of
        parcel, a whole container, the CT scene's own default.

    Raises
    ------
    ValueError
        For an unknown scene, a scene the scanner cannot image, or a scene
        wider than the detector.
    """
    if scene not in SCENE_KINDS:
        raise ValueError(f"scene must be one of {', '.join(SCENE_KINDS)}; got {scene!r}")
    if (scene == "ct") != (scanner.kind == "ct"):
        raise ValueError(f"scanner {scanner.name} ({scanner.kind}) cannot image a {scene} scene")
    acquired_at = _EPOCH + timedelta(seconds=7 * index)
    if scene == "ct":
        return _simulate_ct(scanner, rng, threat_rate=threat_rate, acquired_at=acquired_at, shape=shape)
    if shape is None:
        rows = _DEFAULT_SHAPE.get(scene) or _cargo_rows(scanner)
        shape = (rows, scanner.detector_elements)
    if len(shape) != 2 or shape[1] > scanner.detector_elements:
        raise ValueError(f"shape must be (rows, cols) with cols <= {scanner.detector_elements} detector elements; "
                         f"got {shape}")
    return _simulate_projection(
        scanner, rng, scene=scene, threat_rate=threat_rate, clear_bag_rate=clear_bag_rate, index=index,
        acquired_at=acquired_at, shape=(int(shape[0]), int(shape[1])),
    )


def _simulate_projection(
    scanner: ScannerModel,
    rng: np.random.Generator,
    *,
    scene: str,
    threat_rate: float,
    clear_bag_rate: float,
    index: int,
    acquired_at: datetime,
    shape: tuple[int, int],
) -> SimulatedScan:
    densities = nominal_densities()
    if scene == "cargo":
        layout = scenes.cargo_scene(rng, pixel_mm=scanner.pixel_mm, shape=shape)
    else:
        layout = scenes.bag_scene(rng, shape=shape, pixel_mm=scanner.pixel_mm, kind=scene,
                                  threat_rate=threat_rate, clear_bag_rate=clear_bag_rate)
    materials = sorted({obj.material for obj in layout.objects})
    areal = scenes.areal_density(layout, materials, densities)
    # The scene is drawn with square pixels of layout.pixel_mm; the detector
    # samples at its own pitch across the belt, and one line per
    # belt_mm_per_line of travel (the calibration stage squares it again).
    scale = (layout.pixel_mm / scanner.belt_mm_per_line, layout.pixel_mm / scanner.pixel_mm)
    acquired_shape = (max(1, round(areal.shape[1] * scale[0])),
                      min(scanner.detector_elements, max(1, round(areal.shape[2] * scale[1]))))
    if acquired_shape != areal.shape[1:]:
        size = (acquired_shape[1], acquired_shape[0])
        areal = np.stack([cv2.resize(a, size, interpolation=cv2.INTER_AREA) for a in areal])
    trans = transmission(areal, materials, scanner)
    counts = detector.acquire(trans, scanner, rng, first_line=index * trans.shape[1])
    threats = [_resample_annotation(t, layout.shape, acquired_shape)
               for t in scenes.threat_annotations(layout, densities)]
    metadata: dict[str, Any] = {"scene": scene, "simulated": True}
    if layout.manifest is not None:
        metadata["container_number"] = layout.manifest.get("container_number")
        metadata["manifest"] = layout.manifest
    else:
        metadata["bag_tag"] = f"{int(rng.integers(10**9, 10**10)):010d}"
    dual = counts.shape[0] == 2
    scan = Scan(
        counts if dual else counts[0],
        kind=ScanKind.DUAL_ENERGY if dual else ScanKind.SINGLE_ENERGY,
        spacing_mm=(scanner.belt_mm_per_line, scanner.pixel_mm),
        energies_kv=tuple(scanner.nominal_kv) if dual else tuple(scanner.nominal_kv[:1]),
        scanner_id=scanner.name,
        acquired_at=acquired_at,
        metadata=metadata,
        bits_stored=scanner.bits,
    )
    return SimulatedScan(scan, scene, [t for t in threats if t["mask"].any()], layout)


def _cargo_rows(scanner: ScannerModel) -> int:
    # A 40 ft container is ~12.2 m long; at the cargo pitch that is the scan length.
    return max(64, round(12_200 / scanner.pixel_mm))


def _resample_annotation(threat: dict[str, Any], scene_shape: tuple[int, int],
                         acquired_shape: tuple[int, int]) -> dict[str, Any]:
    """Move a 2D annotation from scene pixels to acquired pixels (lines x elements)."""
    if tuple(scene_shape) == tuple(acquired_shape):
        return threat
    row_scale, col_scale = (a / s for a, s in zip(acquired_shape, scene_shape))
    r0, c0, r1, c1 = threat["bbox_rc"]
    n_r0, n_c0 = int(np.floor(r0 * row_scale)), int(np.floor(c0 * col_scale))
    n_r1 = min(acquired_shape[0], max(int(np.ceil(r1 * row_scale)), n_r0 + 1))
    n_c1 = min(acquired_shape[1], max(int(np.ceil(c1 * col_scale)), n_c0 + 1))
    mask = cv2.resize(threat["mask"].astype(np.uint8), (n_c1 - n_c0, n_r1 - n_r0), interpolation=cv2.INTER_NEAREST)
    return {**threat, "bbox_rc": (n_r0, n_c0, n_r1, n_c1), "mask": mask.astype(bool)}


def _simulate_ct(
    scanner: ScannerModel,
    rng: np.random.Generator,
    *,
    threat_rate: float,
    acquired_at: datetime,
    shape: tuple[int, ...] | None,
) -> SimulatedScan:
    densities = nominal_densities()
    options = {"shape": tuple(shape)} if shape else {}
    layout = scenes.ct_scene(rng, voxel_mm=tuple(scanner.ct_voxel_mm), threat_rate=threat_rate, **options)
    stored = detector.ct_reconstruct(layout, scanner, rng)
    scan = Scan(
        stored,
        kind=ScanKind.CT_VOLUME,
        spacing_mm=tuple(scanner.ct_voxel_mm),
        energies_kv=tuple(scanner.nominal_kv[:1]),
        scanner_id=scanner.name,
        acquired_at=acquired_at,
        metadata={"scene": "ct", "simulated": True, "bag_tag": f"{int(rng.integers(10**9, 10**10)):010d}"},
        # What the scanner claims; its true stored-value map differs a little,
        # which the air/water HU calibration corrects.
        rescale=(1.0, -1024.0),
    )
    return SimulatedScan(scan, "ct", scenes.volume_threat_annotations(layout, densities), layout)


# -- data sets -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    scanner: ScannerModel
    out: Path
    seed: int
    scene: str
    threat_rate: float
    clear_bag_rate: float
    fmt: str


def _run_one(job: _Job, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Simulate and write scan ``index``; return its image record and annotations."""
    rng = np.random.default_rng([job.seed, index])
    # Scans run in parallel processes; BLAS threads on top would oversubscribe.
    with threadpool_limits(limits=1, user_api="blas"):
        result = simulate_scan(job.scanner, rng, scene=job.scene, threat_rate=job.threat_rate,
                               clear_bag_rate=job.clear_bag_rate, index=index)
    scan = result.scan
    stem = f"{job.scene}-{index:06d}"
    if job.fmt == "raw" and scan.kind is not ScanKind.CT_VOLUME:
        write_raw(scan, job.out / "scans" / f"{stem}.raw")
        file_name = f"scans/{stem}.json"
    else:
        file_name = f"scans/{stem}.dcm"
        write_scan(scan, job.out / file_name)
    record: dict[str, Any] = {
        "file_name": file_name,
        "scan_id": scan.scan_id,
        "scanner": job.scanner.name,
        "scene": job.scene,
        "spacing_mm": list(scan.spacing_mm or ()),
    }
    if scan.kind is ScanKind.CT_VOLUME:
        record["shape"] = list(scan.counts.shape)
        return record, [_jsonable(t) for t in result.threats]
    rows, cols = scan.spatial_shape
    record.update(height=rows, width=cols)
    if result.manifest_truth is not None:
        record["manifest_declared"] = scan.metadata.get("manifest")
        record["manifest_truth"] = result.manifest_truth
    return record, [gt.coco_annotation(t, image_shape=(rows, cols)) for t in result.threats]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "mask"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def simulate_dataset(
    out: str | os.PathLike,
    *,
    scanner: str | os.PathLike = "baggage-dual-kvp",
    n: int = 10,
    seed: int = 0,
    scene: str | None = None,
    threat_rate: float = 0.5,
    clear_bag_rate: float = 0.1,
    fmt: str = "raw",
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Simulate ``n`` scans into ``out/scans/`` and write ``out/annotations.json``.

    Parameters
    ----------
    out : path-like
        Output folder (created).
    scanner : str or path-like
        A bundled scanner name (see :func:`nii.simulate.scanner.list_scanners`)
        or a TOML file.
    n, seed : int
        How many scans, and the run's seed: the same seed gives the same bytes.
    scene : {"bag", "parcel", "cargo", "ct"}, optional
        What to scan; by default what the scanner is for (``ct`` for a CT
        scanner, ``cargo`` for a cargo scanner, else ``bag``). CT runs write
        DICOS CT and a 3D-box annotation file; the others write COCO.
    threat_rate, clear_bag_rate : float
        As in :func:`simulate_scan`.
    fmt : {"raw", "dicos"}
        Raw dump + JSON sidecar, or DICOS DX. CT is always DICOS CT.
    workers : int, optional
        Processes to use (default: the machine's cores, at most ``n``).
    progress : bool
        Show a progress bar on stderr.

    Returns
    -------
    Path
        The annotation file.

    Raises
    ------
    ValueError
        Bad counts, rates, scene or format.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    for name, rate in (("threat_rate", threat_rate), ("clear_bag_rate", clear_bag_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be within [0, 1]; got {rate}")
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}; got {fmt!r}")
    model = load_scanner(scanner)
    scene = scene or default_scene(model)
    if scene not in SCENE_KINDS:
        raise ValueError(f"scene must be one of {', '.join(SCENE_KINDS)}; got {scene!r}")
    if (scene == "ct") != (model.kind == "ct"):
        raise ValueError(f"scanner {model.name} ({model.kind}) cannot image a {scene} scene")
    out = Path(out)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    job = _Job(model, out, seed, scene, threat_rate, clear_bag_rate, fmt)
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    records, annotations = [], []
    for record, found in tqdm(_map(job, n, workers), total=n, desc=f"simulate {scene}", unit="scan",
                              disable=not progress):
        records.append(record)
        annotations.append(found)
    info = {"generator": "nii simulate", "scanner": model.name, "seed": seed, "scene": scene, "n": n,
            "threat_rate": threat_rate, "clear_bag_rate": clear_bag_rate, "format": fmt}
    if scene == "ct":
        document = gt.volume_document(records, annotations, info=info)
    else:
        document = gt.coco_document(records, annotations, info=info)
    return gt.write_json(document, out / "annotations.json")


def _map(job: _Job, n: int, workers: int) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    run = functools.partial(_run_one, job)
    if workers == 1:
        yield from map(run, range(n))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # Ordered results: annotation ids follow scan order, whatever finishes first.
        yield from pool.map(run, range(n), chunksize=max(1, min(8, n // (4 * workers))))


def write_calibration_acquisitions(
    out: str | os.PathLike, *, scanner: str | os.PathLike = "baggage-dual-kvp", seed: int = 0, lines: int = 64
) -> list[Path]:
    """Write a scanner's own calibration acquisitions as raw dumps + sidecars.

    Line and cargo scanners: ``dark.raw`` (beam off), ``air.raw`` (beam on,
    empty belt) and one ``wedge-<material>.raw`` per reference material, whose
    sidecar lists the thickness of each block of lines under
    ``metadata.step_wedge``. CT scanners: ``air.dcm`` and ``water.dcm``
    phantom volumes for the HU calibration.

    Returns
    -------
    list of Path
        Files written (sidecars or DICOS files).
    """
    model = load_scanner(scanner)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xCA1])
    common = {"scanner_id": model.name, "energies_kv": tuple(model.nominal_kv), "acquired_at": _EPOCH,
              "bits_stored": model.bits}
    if model.kind == "ct":
        written = []
        for material in ("air", "water"):
            volume = detector.ct_phantom(model, rng, material=material)
            scan = Scan(volume, kind=ScanKind.CT_VOLUME, spacing_mm=tuple(model.ct_voxel_mm),
                        rescale=(1.0, -1024.0), metadata={"calibration": f"{material} phantom"},
                        **{**common, "energies_kv": tuple(model.nominal_kv[:1])})
            write_scan(scan, out / f"{material}.dcm")
            written.append(out / f"{material}.dcm")
        return written
    spacing = (model.belt_mm_per_line, model.pixel_mm)
    dual = len(model.channel_names) == 2
    kind = ScanKind.DUAL_ENERGY if dual else ScanKind.SINGLE_ENERGY

    def save(name: str, counts: np.ndarray, metadata: dict[str, Any]) -> Path:
        scan = Scan(counts if dual else counts[0], kind=kind, spacing_mm=spacing, metadata=metadata,
                    **{**common, "energies_kv": tuple(model.nominal_kv) if dual else tuple(model.nominal_kv[:1])})
        return write_raw(scan, out / f"{name}.raw")

    written = [
        save("dark", detector.dark_frames(model, rng, lines=lines), {"calibration": "dark"}),
        save("air", detector.air_frames(model, rng, lines=lines), {"calibration": "air"}),
    ]
    for material, thicknesses in STEP_WEDGES[model.kind].items():
        counts = detector.step_wedge(model, material, thicknesses, rng, lines_per_step=lines // 4)
        written.append(save(f"wedge-{material}", counts, {
            "calibration": "step_wedge", "material": material,
            "step_wedge": {"thickness_cm": list(thicknesses), "lines_per_step": lines // 4},
        }))
    return written
