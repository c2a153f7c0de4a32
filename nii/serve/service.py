"""The service core: the store, the analysis queue and its workers, and the scans' results.

:class:`Service` is what the HTTP routes, the DICOM SCP and the hot folder
hand scans to, and what they read results from. Analysis is
:meth:`nii.pipeline.Pipeline.analyze`, the CLI's and batch's code path too.

A scan moves ``queued -> running -> done | failed``. Workers take the oldest
queued scan; at start-up, scans a crash left ``running`` go back to
``queued``, so an accepted scan always ends with a result or a reason.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from nii.annotate.result import write_outputs
from nii.calibrate.calibrated import CalibratedScan
from nii.calibrate.correct import calibrate_with_scanner_profile, warm_scanner_profiles
from nii.config import read_toml
from nii.ingest import read_source
from nii.detect.regions import check_score
from nii.detect.registry import open_artifact
from nii.pipeline import AnalysisError, Pipeline, PipelineConfig, check_alarm_thresholds, load_pipeline_config
from nii.serve import audit
from nii.serve.intake import Accepted, IntakeLimits, Upload, accept_scan, materialise
from nii.serve.report import ReportingConfig, reporting_config
from nii.serve.store import Store, results, scans, settings, utc_now

__all__ = ["DEFAULT_SERVICE_CONFIG", "Service", "ServiceConfig", "TdrDestination", "load_service_config"]

DEFAULT_SERVICE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "service.toml"
log = logging.getLogger("nii.serve")

_THRESHOLDS_KEY = "alarm_thresholds"


@dataclasses.dataclass(frozen=True)
class TdrDestination:
    """A DICOS workstation that receives each machine TDR by C-STORE."""

    host: str
    port: int
    ae_title: str


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """Settings of one service; see ``configs/service.toml`` for each."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 1 << 30
    session_hours: float = 12.0
    dicom_port: int = 11112
    dicom_ae_title: str = "NII"
    tdr_destination: TdrDestination | None = None
    hot_folder: Path | None = None
    settle_seconds: float = 1.0
    workers: int = 2
    pipeline: Path | None = None
    max_attempts: int = 3
    reporting: ReportingConfig = ReportingConfig()  # [reporting]: time zone and shifts (nii.serve.report)


# The settings of each section; a misspelt one (wokers) is refused, not ignored.
_SERVICE_KEYS = {
    "http": {"host", "port", "max_upload_mb", "session_hours"},
    "dicom": {"port", "ae_title", "tdr_destination"},
    "dicom.tdr_destination": {"host", "port", "ae_title"},
    "hot_folder": {"path", "settle_seconds"},
    "processing": {"workers", "pipeline", "max_attempts"},
}


def _section(parent: dict, key: str, name: str | None = None) -> dict:
    """``parent[key]`` as a table of known settings (empty when absent)."""
    name = name or key
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{name}] must be a table, not {value!r}")
    unknown = sorted(set(value) - _SERVICE_KEYS[name])
    if unknown:
        raise ValueError(f"[{name}] has unknown settings {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_SERVICE_KEYS[name]))})")
    return value


def load_service_config(path: str | os.PathLike | None = None) -> ServiceConfig:
    """Read a service config (the shipped one when ``path`` is None).

    Raises
    ------
    ValueError
        One line naming the file and the bad setting.
    """
    path = Path(path) if path is not None else DEFAULT_SERVICE_CONFIG
    raw = read_toml(path, "the service config")
    here = path.resolve().parent
    try:
        unknown = sorted(set(raw) - {*_SERVICE_KEYS, "reporting"})
        if unknown:
            raise ValueError(f"unknown sections {', '.join(unknown)}")
        http, dicom, hot, processing = (_section(raw, k) for k in ("http", "dicom", "hot_folder", "processing"))
        destination = _section(dicom, "tdr_destination", "dicom.tdr_destination")
        config = ServiceConfig(
            host=str(http.get("host", "127.0.0.1")),
            port=int(http.get("port", 8000)),
            max_upload_bytes=int(float(http.get("max_upload_mb", 1024)) * (1 << 20)),
            session_hours=float(http.get("session_hours", 12)),
            dicom_port=int(dicom.get("port", 11112)),
            dicom_ae_title=str(dicom.get("ae_title", "NII")),
            tdr_destination=TdrDestination(str(destination["host"]), int(destination.get("port", 104)),
                                           str(destination.get("ae_title", "WORKSTATION")))
            if destination.get("host") else None,
            hot_folder=here / hot["path"] if hot.get("path") else None,
            settle_seconds=float(hot.get("settle_seconds", 1.0)),
            workers=int(processing.get("workers", 2)),
            pipeline=here / str(processing.get("pipeline", "pipeline.toml")),
            max_attempts=int(processing.get("max_attempts", 3)),
            reporting=reporting_config(raw.get("reporting")),
        )
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: {' '.join(str(err).split())}") from None
    if config.workers < 1 or config.max_attempts < 1 or config.max_upload_bytes < 1:
        raise ValueError(f"{path}: workers, max_attempts and max_upload_mb must be positive")
    return config


class Service:
    """One running service over a data folder.

    Parameters
    ----------
    store : Store
    config : ServiceConfig
    pipeline_config : PipelineConfig, optional
        What the workers run; by default ``config.pipeline`` (the shipped
        ``configs/pipeline.toml``).
    """

    def __init__(self, store: Store, config: ServiceConfig = ServiceConfig(), *,
                 pipeline_config: PipelineConfig | None = None) -> None:
        self.store = store
        self.config = config
        self.base_pipeline_config = pipeline_config or load_pipeline_config(config.pipeline)
        self.intake_limits = IntakeLimits(max_bytes=config.max_upload_bytes)
        self.scratch = Path(tempfile.gettempdir())
        #: Called with the scan id after each result is stored (TDR send-back...).
        self.on_result: list[Callable[[str], None]] = []
        #: Called with each officer's decision once committed (operator TDR send-back...).
        self.on_decision: list[Callable[[Any], None]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._calibrated: collections.OrderedDict[str, CalibratedScan] = collections.OrderedDict()
        self._calibrated_lock = threading.Lock()
        self.started_at = time.time()
        self.counters: collections.Counter[str] = collections.Counter()
        # Bumped on every scan change in this process, so the live queue
        # hears of it at once instead of at its next poll.
        self._changes = threading.Condition()
        self.change_count = 0

    def notify_change(self) -> None:
        """Tell live listeners (the viewer's event stream) that a scan changed."""
        with self._changes:
            self.change_count += 1
            self._changes.notify_all()

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until ``change_count`` differs from ``seen`` or ``timeout`` passes; return it."""
        with self._changes:
            self._changes.wait_for(lambda: self.change_count != seen, timeout)
            return self.change_count

    # -- ingest ----------------------------------------------------------------------------------------------------

    def submit(self, uploads: Sequence[Upload], *, source: str, username: str | None) -> Accepted:
        """Accept one scan (see :func:`nii.serve.intake.accept_scan`) and wake a worker."""
        accepted = accept_scan(self.store, uploads, source=source, username=username,
                               limits=self.intake_limits, scratch=self.scratch)
        self.counters["scans_accepted" if not accepted.duplicate else "scans_duplicate"] += 1
        if not accepted.duplicate:
            self.notify_change()
        self._wake.set()
        return accepted

    # -- workers ---------------------------------------------------------------------------------------------------

    def start(self, workers: int | None = None) -> list[str]:
        """Requeue what a crash left running, then start the workers; return the requeued ids."""
        requeued = self.store.requeue_unfinished()
        if requeued:
            log.info("%d scans left unfinished by the last run are queued again", len(requeued))
        count = workers or self.config.workers
        _share_cores(count)
        # Load the models and tabulate every scanner's material lookup now, so
        # the first scans after a start do not wait seconds for it.
        for model, stale in self.stale_thresholds().items():
            log.warning("stored alarm thresholds for %s class %s are not applied: %s no longer detects %s",
                        model, ", ".join(stale), model, "it" if len(stale) == 1 else "them")
        config = self.pipeline_config()
        pipelines = [Pipeline(config) for _ in range(count)]
        warm_scanner_profiles(config.calibration_root)
        for i, pipeline in enumerate(pipelines):
            thread = threading.Thread(target=self._work, args=(pipeline, config), name=f"nii-worker-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return requeued

    def stop(self, timeout: float = 30.0) -> None:
        """Let each worker finish its scan, then stop them."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    @property
    def workers_alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def _work(self, pipeline: Pipeline, revision: PipelineConfig) -> None:
        while not self._stop.is_set():
            wanted = self.pipeline_config()
            if wanted != revision:  # thresholds changed in the service
                pipeline, revision = Pipeline(wanted), wanted
            with self.store.transaction() as conn:
                scan_id = self.store.claim_scan(conn)
            if scan_id is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._wake.set()  # there may be more: let another worker look too
            self.notify_change()
            self.analyze_stored(pipeline, scan_id)

    def analyze_stored(self, pipeline: Pipeline, scan_id: str) -> None:
        """Analyse one claimed scan and store its result (or why it failed)."""
        with self.store.read() as conn:
            attempts = conn.execute(sa.select(scans.c.attempts).where(scans.c.scan_id == scan_id)).scalar()
        if attempts is not None and attempts > self.config.max_attempts:
            self._fail(scan_id, f"gave up after {self.config.max_attempts} attempts: the analysis stopped the "
                                "service each time")
            return
        try:
            with tempfile.TemporaryDirectory(dir=self.scratch, prefix="analyse-") as folder:
                source = materialise(self.store, scan_id, Path(folder) / "scan")
                result = pipeline.analyze(source)
                outputs = write_outputs(result, Path(folder) / "out")
                record = json.loads(outputs["result"].read_text())
                record["scan"]["path"] = source.path.name if not source.slices else f"{len(source.slices)} slices"
                blobs = {key: self.store.blobs.put(outputs[key].read_bytes()) for key in ("annotated", "tdr")}
                blobs["result"] = self.store.blobs.put((json.dumps(record, indent=1) + "\n").encode())
        except AnalysisError as err:
            self._fail(scan_id, str(err))
            return
        except Exception as err:  # a bug must not take the worker down with the queue
            log.exception("analysis of %s failed", scan_id)
            self._fail(scan_id, f"internal error: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
            return
        alarms = sum(a.alarm for a in result.alerts)
        with self.store.transaction() as conn:
            conn.execute(results.insert().values(
                scan_id=scan_id, result_sha256=blobs["result"], annotated_sha256=blobs["annotated"],
                tdr_sha256=blobs["tdr"], profile_id=result.profile_id, created_at=utc_now(),
                models="\n".join(f"{m.name} {m.version} {m.sha256}" for m in result.models)))
            conn.execute(scans.update().where(scans.c.scan_id == scan_id).values(
                status="done", decision=result.decision, alert_count=len(result.alerts), alarm_count=alarms,
                finished_at=utc_now(), error=None, revision=self.store.next_revision(conn)))
            audit.append(self.store, conn, username=None, action="analyse", target=scan_id, detail={
                "decision": result.decision, "alerts": len(result.alerts), "profile": result.profile_id,
                "models": [f"{m.name} {m.version}" for m in result.models], "result_sha256": blobs["result"]})
        self.notify_change()
        self.counters["scans_analysed"] += 1
        self.counters[f"decision_{result.decision}"] += 1
        for listener in self.on_result:
            try:
                listener(scan_id)
            except Exception:  # a workstation that is down must not fail the analysis
                log.exception("result listener failed for %s", scan_id)

    def announce_decision(self, decision: Any) -> None:
        """Hand a committed decision to the ``on_decision`` listeners, off the officer's request."""
        def run() -> None:
            for listener in list(self.on_decision):
                try:
                    listener(decision)
                except Exception:  # a workstation that is down must not fail the decision
                    log.exception("decision listener failed for decision %s", getattr(decision, "id", "?"))

        if self.on_decision:
            threading.Thread(target=run, name="nii-decision-listeners", daemon=True).start()

    def _fail(self, scan_id: str, reason: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(scans.update().where(scans.c.scan_id == scan_id).values(
                status="failed", error=reason, finished_at=utc_now(), revision=self.store.next_revision(conn)))
            audit.append(self.store, conn, username=None, action="analysis_failed", target=scan_id,
                         detail={"reason": reason})
        self.notify_change()
        self.counters["scans_failed"] += 1

    # -- configuration ---------------------------------------------------------------------------------------------

    def threshold_overrides(self) -> dict[str, dict[str, float]]:
        """Alarm thresholds changed in the service, per model and class."""
        with self.store.read() as conn:
            value = conn.execute(sa.select(settings.c.value).where(settings.c.key == _THRESHOLDS_KEY)).scalar()
        return json.loads(value) if value else {}

    @functools.cached_property
    def model_classes(self) -> dict[str, tuple[str, ...]]:
        """The classes each model of the pipeline detects, from its verified card (read once)."""
        config = self.base_pipeline_config
        return {m.name: tuple(open_artifact(m.name, m.version, config.models_root).card.get("classes", ()))
                for m in config.models}

    def stale_thresholds(self) -> dict[str, list[str]]:
        """Stored threshold changes for classes a model no longer detects (after a model upgrade), per model."""
        overrides = self.threshold_overrides()
        return {model: stale for model, by_class in overrides.items() if model in self.model_classes
                and (stale := sorted(set(by_class) - {"*", *self.model_classes[model]}))}

    def pipeline_config(self) -> PipelineConfig:
        """The pipeline config file's, with the service's threshold changes on top.

        A change stored for a class the model no longer detects (a newer
        version dropped it) is left out, not applied and not an error: the
        service must still start. :meth:`start` logs each one.
        """
        overrides = self.threshold_overrides()
        base = self.base_pipeline_config
        if not overrides:
            return base

        def applicable(model: str) -> dict[str, float]:
            known = {"*", *self.model_classes.get(model, ())}
            return {cls: value for cls, value in overrides.get(model, {}).items() if cls in known}

        return dataclasses.replace(base, models=tuple(
            dataclasses.replace(m, alarm_thresholds={**m.alarm_thresholds, **applicable(m.name)})
            for m in base.models))

    def set_thresholds(self, changes: Mapping[str, Mapping[str, float]], *, username: str) -> dict[str, Any]:
        """Change alarm thresholds (per model, per class); applies to scans analysed from now on.

        Raises
        ------
        ValueError
            An unknown model or class, or a threshold outside [0, 1].
        """
        config = self.base_pipeline_config
        known = {m.name: m for m in config.models}
        for model, by_class in changes.items():
            if model not in known:
                raise ValueError(f"unknown model {model!r}; the pipeline runs {', '.join(sorted(known))}")
            for cls, value in by_class.items():
                check_score(f"{model} threshold for {cls!r}", value)
            try:
                check_alarm_thresholds(by_class, self.model_classes[model])
            except ValueError as err:
                raise ValueError(f"{model}: {err}") from None
        with self.store.transaction() as conn:
            current = conn.execute(sa.select(settings.c.value).where(settings.c.key == _THRESHOLDS_KEY)).scalar()
            merged = json.loads(current) if current else {}
            for model, by_class in changes.items():
                merged.setdefault(model, {}).update({str(k): float(v) for k, v in by_class.items()})
            values = {"value": json.dumps(merged, sort_keys=True), "updated_at": utc_now(), "updated_by": username}
            if current is None:
                conn.execute(settings.insert().values(key=_THRESHOLDS_KEY, **values))
            else:
                conn.execute(settings.update().where(settings.c.key == _THRESHOLDS_KEY).values(**values))
            audit.append(self.store, conn, username=username, action="change_thresholds", target=None,
                         detail={"changes": {m: dict(c) for m, c in changes.items()}, "now": merged})
        self._wake.set()
        return merged

    # -- reading results -------------------------------------------------------------------------------------------

    def calibrated(self, scan_id: str) -> CalibratedScan:
        """The calibrated scan (for the viewer's rendering tools), kept for the last few scans viewed."""
        with self._calibrated_lock:
            if scan_id in self._calibrated:
                self._calibrated.move_to_end(scan_id)
                return self._calibrated[scan_id]
        with tempfile.TemporaryDirectory(dir=self.scratch, prefix="view-") as folder:
            scan = read_source(materialise(self.store, scan_id, Path(folder)))
            calibrated = calibrate_with_scanner_profile(scan, self.base_pipeline_config.calibration_root)
        with self._calibrated_lock:
            self._calibrated[scan_id] = calibrated
            while len(self._calibrated) > 4:
                self._calibrated.popitem(last=False)
        return calibrated

    def wait_until_idle(self, timeout: float = 60.0) -> bool:
        """Block until no scan is queued or running (tests, the sample import)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.store.read() as conn:
                busy = conn.execute(sa.select(sa.func.count()).select_from(scans).where(
                    scans.c.status.in_(("queued", "running")))).scalar()
            if not busy:
                return True
            time.sleep(0.1)
        return False


def _share_cores(workers: int) -> None:
    """Give each worker its share of the cores, so torch threads do not fight."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
