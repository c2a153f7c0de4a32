"""Health, Prometheus metrics, alarm thresholds and the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Query, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nii.serve import audit
from nii.serve.auth import Permission
from nii.serve.deps import RowOffset, ServiceDep, allowed
from nii.serve.report import LiveCounts, live_counts
from nii.serve.service import Service
from nii.serve.store import scans

router = APIRouter(tags=["system"])


@router.get("/api/health")
def health(service: ServiceDep) -> dict[str, Any]:
    """Up, database reachable, workers running, and the queue. No login needed."""
    try:
        with service.store.read() as conn:
            counts = dict(conn.execute(sa.select(scans.c.status, sa.func.count()).group_by(scans.c.status)).all())
    except sa.exc.SQLAlchemyError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database unreachable") from None
    workers = service.workers_alive
    return {"status": "ok" if workers else "degraded", "database": "ok", "workers": workers,
            "queued": counts.get("queued", 0), "running": counts.get("running", 0),
            "done": counts.get("done", 0), "failed": counts.get("failed", 0)}


class _ServiceCollector:
    """Reads the service's counters and queue at scrape time (no global registry)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self):
        counters = CounterMetricFamily("nii_events", "Scans accepted, analysed, failed; decisions", labels=["event"])
        for event, count in sorted(self.service.counters.items()):
            counters.add_metric([event], count)
        yield counters
        queue = GaugeMetricFamily("nii_scans", "Scans in the store by status", labels=["status"])
        with self.service.store.read() as conn:
            for state, count in conn.execute(sa.select(scans.c.status, sa.func.count()).group_by(scans.c.status)):
                queue.add_metric([state], count)
            live = live_counts(conn)
        yield queue
        yield from _live_families(live)
        yield GaugeMetricFamily("nii_workers", "Analysis workers running", value=self.service.workers_alive)


def _live_families(live: LiveCounts) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    # From the store, not this process: the same totals from every replica and after a restart.
    decided = CounterMetricFamily("nii_officer_decisions", "Officer decisions recorded, reversals included",
                                  labels=["outcome"])
    for outcome, count in sorted(live.officer_decisions.items()):
        decided.add_metric([outcome], count)
    yield decided
    yield CounterMetricFamily("nii_decision_reversals", "Decisions a supervisor reversed", value=live.reversals)
    verdicts = CounterMetricFamily("nii_machine_verdicts", "Analysed scans by the machine's verdict",
                                   labels=["verdict"])
    for verdict, count in sorted(live.machine_verdicts.items()):
        verdicts.add_metric([verdict], count)
    yield verdicts
    yield GaugeMetricFamily("nii_alarms_awaiting_officer", "ALARM scans no officer has decided yet",
                            value=live.alarms_awaiting_officer)
    case_states = GaugeMetricFamily("nii_cases", "Cases by status", labels=["status"])
    for state, count in sorted(live.cases.items()):
        case_states.add_metric([state], count)
    yield case_states
    seized = GaugeMetricFamily("nii_seizures", "Cases marked seized, by threat category", labels=["category"])
    for category, count in sorted(live.seizures.items()):
        seized.add_metric([category], count)
    yield seized


def metrics_registry(service: Service) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_ServiceCollector(service))
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(service: ServiceDep) -> Response:
    """Prometheus text format: counters and the queue (no scan contents)."""
    return Response(generate_latest(metrics_registry(service)), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/config/thresholds")
def get_thresholds(service: ServiceDep, user: allowed(Permission.VIEW)) -> dict[str, Any]:
    """Alarm thresholds: the pipeline config's, and the changes made in the service."""
    return {"config": {m.name: dict(m.alarm_thresholds) for m in service.base_pipeline_config.models},
            "changed": service.threshold_overrides()}


@router.put("/api/config/thresholds")
def put_thresholds(changes: dict[str, dict[str, float]], service: ServiceDep,
                   user: allowed(Permission.CHANGE_THRESHOLDS)) -> dict[str, Any]:
    """Change alarm thresholds per model and class (``"*"`` for all); audited."""
    try:
        changed = service.set_thresholds(changes, username=user.username)
    except ValueError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None
    return {"changed": changed}


@router.get("/api/audit")
def read_audit(service: ServiceDep, user: allowed(Permission.READ_AUDIT),
               after: RowOffset = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 200,
               target: Annotated[str | None, Query(max_length=160)] = None) -> dict[str, Any]:
    """Audit entries after ``after``, oldest first."""
    with service.store.read() as conn:
        rows = audit.entries(conn, after=after, limit=limit, target=target)
    return {"entries": [r.to_dict() for r in rows]}
