"""The pipeline: ingest -> calibrate -> detect -> fuse -> decide -> render.

One :class:`Pipeline`, built from a small config file
(``configs/pipeline.toml``), analyses one scan into a :class:`ScanResult`.
The CLI (``nii analyze``), the service and batch re-analysis all call
:meth:`Pipeline.analyze`, so an officer, an analyst and a test see the same
verdict for the same scan, models and calibration.

Examples
--------
>>> pipeline = Pipeline.from_config()  # doctest: +SKIP
>>> result = pipeline.analyze("sample_scans/bag-threat.json")  # doctest: +SKIP
>>> result.decision, [a.label for a in result.alerts]  # doctest: +SKIP
('ALARM', ['1 narcotics 0.87', ...])
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nii.calibrate.calibrated import CalibratedScan
from nii.calibrate.correct import calibrate_with_scanner_profile
from nii.config import read_toml
from nii.detect.fuse import ALARM, CLEAR, Alert, decide, fuse_regions, threshold_test
from nii.detect.regions import ModelIdentity, Region
from nii.detect.registry import ModelArtifactError, detector_from_artifact, open_artifact
from nii.ingest import ScanReadError, ScanSource, read_scan, read_source
from nii.scan import Scan, ScanKind

__all__ = ["ALARM", "CLEAR", "DEFAULT_CONFIG", "STAGES", "AnalysisError", "check_alarm_thresholds", "ModelChoice", "PipelineConfig", "Pipeline", "ScanResult",
           "load_pipeline_config"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline.toml"
#: Stage names, in order, as ``ScanResult.timings_ms`` records them.
STAGES = ("ingest", "calibrate", "detect", "fuse", "decide", "render")
_SCAN_KINDS = tuple(kind.value for kind in ScanKind)


class AnalysisError(ValueError):
    """A scan could not be analysed; ``str(err)`` is one line saying why."""


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One model or rule the pipeline runs, as its config table names it.

    Parameters
    ----------
    name, version : str
        Registry name; version None for the newest registered.
    options : mapping
        Keyword arguments of the model's loader (a rule's thresholds...).
    scan_kinds : tuple of str, optional
        The scan kinds it may judge; None for every kind it applies to.
    skip_scanners : tuple of str
        Scanners it must not judge.
    alarm_thresholds : mapping of class to float
        Score from which a region alarms, per class (``"*"`` for all),
        overriding the card's operating point.
    """

    name: str
    version: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scan_kinds: tuple[str, ...] | None = None
    skip_scanners: tuple[str, ...] = ()
    alarm_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def judges(self, scan: Scan) -> bool:
        """Whether the config lets this model judge ``scan``."""
        if self.scan_kinds is not None and scan.kind.value not in self.scan_kinds:
            return False
        return scan.scanner_id not in self.skip_scanners


def check_alarm_thresholds(thresholds: Mapping[str, float], classes: Sequence[str]) -> None:
    """Refuse alarm thresholds for classes a model does not detect.

    A mistyped class (``"knfe"``) would otherwise be kept and change
    nothing, while whoever set it believes the alarm moved.

    Parameters
    ----------
    thresholds : mapping of class to float
        ``"*"`` stands for every class.
    classes : sequence of str
        The classes on the model's card.

    Raises
    ------
    ValueError
        Naming the first unknown class and the model's classes.
    """
    unknown = sorted(set(thresholds) - {"*", *classes})
    if unknown:
        raise ValueError(f"no class {unknown[0]!r} to set an alarm threshold for; it detects "
                         f"{', '.join(classes)} ('*' for all)")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What a pipeline runs: see ``configs/pipeline.toml`` for every field."""

    models: tuple[ModelChoice, ...]
    models_root: Path
    calibration_root: Path
    operating_point: str = "default"
    min_overlap: float = 0.3
    source: Path | None = None


def load_pipeline_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    """Read and check a pipeline config (the shipped one when ``path`` is None).

    Raises
    ------
    ValueError
        One line naming the file and what is wrong with it.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = read_toml(path, "the pipeline config")
    unknown = sorted(set(raw) - {"models_root", "calibration_root", "decision", "fusion", "models"})
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    models = _table(path, raw, "models")
    if not models:
        raise ValueError(f"{path}: names no [models.<name>] to run")
    choices = tuple(_model_choice(path, name, _table(path, models, name, f"models.{name}"))
                    for name in models)
    try:
        min_overlap = float(_table(path, raw, "fusion").get("min_overlap", 0.3))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: fusion.min_overlap must be a number") from None
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"{path}: fusion.min_overlap must lie in (0, 1], got {min_overlap}")
    for key in ("models_root", "calibration_root"):
        if not isinstance(raw.get(key, ""), str):
            raise ValueError(f"{path}: {key} must be a path (a string)")
    here = path.resolve().parent
    for key in ("models_root", "calibration_root"):
        # Named but absent: without its profiles every scan would go on
        # uncalibrated (self-normalised), a quieter failure than this one.
        if key in raw and not (here / raw[key]).is_dir():
            raise ValueError(f"{path}: {key} {raw[key]!r}: no such folder (relative to the config's folder)")
    return PipelineConfig(
        models=choices,
        models_root=here / raw.get("models_root", "../models"),
        calibration_root=here / raw.get("calibration_root", "../calibration"),
        operating_point=str(_table(path, raw, "decision").get("operating_point", "default")),
        min_overlap=min_overlap,
        source=path,
    )


def _table(path: Path, parent: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    """``parent[key]`` (empty when absent), refused in one line unless it is a TOML table."""
    value = parent.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: {where or key} must be a table ([{where or key}]), not {value!r}")
    return value


def _names(path: Path, value: Any, where: str, example: str) -> tuple[str, ...]:
    """A list of strings from the config, refused in one line otherwise."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: {where} must be a list of names, like [\"{example}\"], not {value!r}")
    return tuple(value)


def _model_choice(path: Path, name: str, table: Mapping[str, Any]) -> ModelChoice:
    known = {"version", "options", "scan_kinds", "skip_scanners", "alarm_thresholds"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"{path}: models.{name} has unknown settings {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    kinds = table.get("scan_kinds")
    if kinds is not None:
        kinds = _names(path, kinds, f"models.{name}.scan_kinds", "dual_energy")
        bad = [k for k in kinds if k not in _SCAN_KINDS]
        if bad:
            raise ValueError(f"{path}: models.{name}.scan_kinds has {', '.join(bad)}; kinds are "
                             f"{', '.join(_SCAN_KINDS)}")
    try:
        thresholds = {str(k): float(v) for k, v in table.get("alarm_thresholds", {}).items()}
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{path}: models.{name}.alarm_thresholds must map classes to numbers") from None
    # NaN or a value over 1 would silently stop every alarm of the class.
    outside = [f"{k} = {v}" for k, v in thresholds.items() if not 0.0 <= v <= 1.0]
    if outside:
        raise ValueError(f"{path}: models.{name}.alarm_thresholds must lie in [0, 1]; got {', '.join(outside)}")
    return ModelChoice(
        name=name,
        version=str(table["version"]) if "version" in table else None,
        options=dict(_table(path, table, "options", f"models.{name}.options")),
        scan_kinds=kinds,
        skip_scanners=_names(path, table.get("skip_scanners", []), f"models.{name}.skip_scanners", "cargo-linac"),
        alarm_thresholds=thresholds,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ScanResult:
    """Everything the pipeline found out about one scan.

    Parameters
    ----------
    scan : Scan
        As ingested.
    calibrated : CalibratedScan
        Its calibration (``calibrated.profile_id`` names the profile).
    alerts : tuple of Alert
        After fusion, highest score first; boxes in ``calibrated``'s pixels.
    decision : str
        ``"ALARM"`` or ``"CLEAR"`` at ``operating_point``.
    models : tuple of ModelIdentity
        Every model and rule that judged this scan.
    skipped : mapping of model name to reason
        Models in the config that did not judge it, and why.
    operating_point : str
    timings_ms : mapping of stage to milliseconds
        One entry per :data:`STAGES` name, plus ``detect:<model>`` for each
        model.
    annotated : ndarray of uint8, (rows, cols, 3)
        The operator rendering with the alerts drawn (CT: slices and MIPs).
    alarm_thresholds : mapping of model name to {class: threshold}
        The score from which each judging model's regions alarmed (``"*"``
        for every class): its card's operating point, with the config's and
        the service's changes. Evidence: an alarm is read against these.
    """

    scan: Scan
    calibrated: CalibratedScan
    alerts: tuple[Alert, ...]
    decision: str
    models: tuple[ModelIdentity, ...]
    skipped: Mapping[str, str]
    operating_point: str
    timings_ms: Mapping[str, float]
    annotated: np.ndarray
    alarm_thresholds: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def profile_id(self) -> str:
        return self.calibrated.profile_id


class _Stopwatch:
    """Times named stages into a dict (milliseconds)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def stage(self, name: str) -> "_Lap":
        return _Lap(self.ms, name)


class _Lap:
    def __init__(self, into: dict[str, float], name: str) -> None:
        self.into, self.name = into, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.into[self.name] = self.into.get(self.name, 0.0) + 1000.0 * (time.perf_counter() - self.started)


class Pipeline:
    """Runs the configured models on scans; see the module docstring.

    Parameters
    ----------
    config : PipelineConfig
    device : str, optional
        Where learned models run (``"cpu"``, ``"cuda"``); their loaders'
        default when None.

    Raises
    ------
    ValueError
        A model the config names is missing, tampered with, or refuses its
        options.
    """

    def __init__(self, config: PipelineConfig, *, device: str | None = None) -> None:
        self.config = config
        self.detectors: list[tuple[ModelChoice, Any]] = []
        thresholds: dict[str, dict[str, float]] = {}
        for choice in config.models:
            try:
                artifact = open_artifact(choice.name, choice.version, config.models_root)
                options = dict(choice.options)
                if device is not None and artifact.card.get("kind") != "physics-rule":
                    options["device"] = device
                detector = detector_from_artifact(artifact, **options)
                check_alarm_thresholds(choice.alarm_thresholds, artifact.card.get("classes", ()))
            except (ModelArtifactError, TypeError, ValueError) as err:
                raise ValueError(f"pipeline model {choice.name}: {' '.join(str(err).split())}") from None
            self.detectors.append((choice, detector))
            points = artifact.card.get("operating_points", {})
            point = points.get(config.operating_point)
            if points and point is None:  # a learned model without it would alarm on every region
                raise ValueError(f"pipeline model {choice.name}: its card has no operating point "
                                 f"{config.operating_point!r} (it has {', '.join(sorted(points))})")
            by_class = {"*": float(point["threshold"])} if point else {}
            by_class.update(choice.alarm_thresholds)
            if by_class:
                thresholds[detector.identity.name] = by_class
        self.thresholds = thresholds
        self._passes = threshold_test(thresholds)

    @classmethod
    def from_config(cls, path: str | os.PathLike | None = None, **kwargs: Any) -> Pipeline:
        """A pipeline from a config file (the shipped one when ``path`` is None)."""
        return cls(load_pipeline_config(path), **kwargs)

    @property
    def identities(self) -> tuple[ModelIdentity, ...]:
        """Every configured model's identity, in config order."""
        return tuple(detector.identity for _, detector in self.detectors)

    def analyze(self, source: Scan | ScanSource | str | os.PathLike) -> ScanResult:
        """Analyse one scan: a :class:`Scan`, a path, or what ``find_scans`` found.

        Raises
        ------
        AnalysisError
            One line saying why the scan could not be analysed (unreadable,
            no usable calibration, a model refused it).
        """
        from nii.annotate.image import annotate

        watch = _Stopwatch()
        try:
            with watch.stage("ingest"):
                scan = _ingest(source)
            with watch.stage("calibrate"):
                calibrated = calibrate_with_scanner_profile(scan, self.config.calibration_root)
            regions, ran, skipped = self._detect(calibrated, watch)
            with watch.stage("fuse"):
                alerts = fuse_regions(regions, min_overlap=self.config.min_overlap, passes=self._passes)
            with watch.stage("decide"):
                decision = decide(alerts)
            with watch.stage("render"):
                annotated = annotate(calibrated, alerts)
        except ScanReadError as err:
            raise AnalysisError(err.reason) from None
        except (ValueError, TypeError) as err:
            raise AnalysisError(" ".join(str(err).split()) or type(err).__name__) from None
        judged = {identity.name for identity in ran}
        return ScanResult(scan, calibrated, tuple(alerts), decision, tuple(ran), skipped,
                          self.config.operating_point, watch.ms, annotated,
                          {name: dict(by_class) for name, by_class in self.thresholds.items() if name in judged})

    def _detect(self, calibrated: CalibratedScan,
                watch: _Stopwatch) -> tuple[list[Region], list[ModelIdentity], dict[str, str]]:
        regions: list[Region] = []
        ran: list[ModelIdentity] = []
        skipped: dict[str, str] = {}
        with watch.stage("detect"):
            for choice, detector in self.detectors:
                if not choice.judges(calibrated.scan):
                    skipped[choice.name] = "not configured for this kind of scan or scanner"
                    continue
                if not detector.applies_to(calibrated):
                    skipped[choice.name] = "does not apply to this kind of scan"
                    continue
                with watch.stage(f"detect:{choice.name}"):
                    regions.extend(detector.detect(calibrated))
                ran.append(detector.identity)
        return regions, ran, skipped


def _ingest(source: Scan | ScanSource | str | os.PathLike) -> Scan:
    if isinstance(source, Scan):
        return source
    if isinstance(source, ScanSource):
        return read_source(source)
    return read_scan(source)

