"""Operational reports for supervisors: the figures as JSON, each table as CSV, and the report page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import FileResponse

from nii.serve.auth import Permission
from nii.serve.deps import ServiceDep, allowed
from nii.serve.report import TABLES, Grouping, Report, build_report, parse_period, report_csv, report_table
from nii.serve.service import Service

router = APIRouter(tags=["reports"])
Supervisor = allowed(Permission.READ_REPORTS)
_PAGE = Path(__file__).resolve().parents[1] / "viewer" / "report.html"

_FROM = Query(alias="from", description="first day (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM), site time zone",
              max_length=40)
_TO = Query(alias="to", description="end of the period, not included: a day or a time", max_length=40)
_BY = Query(description="one group per day, shift, lane or scanner")
By = Literal[tuple(g.value for g in Grouping)]
Table = Literal[TABLES]


def _report(service: Service, start: str, end: str, by: str) -> Report:
    config = service.config.reporting
    try:
        period = parse_period(start, end, timezone=config.timezone)
        with service.store.read() as conn:
            return build_report(conn, period, by=by, config=config)
    except ValueError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(err)) from None


@router.get("/api/report")
def get_report(service: ServiceDep, user: Supervisor, start: Annotated[str, _FROM], end: Annotated[str, _TO],
               by: Annotated[By, _BY] = "day") -> dict[str, Any]:
    """The figures of the period ``[from, to)`` per group and in total, and its tables as the CSVs have them.

    See :mod:`nii.serve.report` for what each figure counts.
    """
    report = _report(service, start, end, by)
    tables = {name: dict(zip(("columns", "rows"), report_table(report, name))) for name in TABLES}
    return {**report.to_dict(), "tables": tables}


@router.get("/api/report.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "one table, a row per group and a total"}})
def get_report_csv(service: ServiceDep, user: Supervisor, table: Annotated[Table, Query()],
                   start: Annotated[str, _FROM], end: Annotated[str, _TO],
                   by: Annotated[By, _BY] = "day") -> Response:
    """One table of the report as a CSV download."""
    report = _report(service, start, end, by)
    name = f"nii-{table}-by-{by}-{report.start.date()}-{report.end.date()}.csv"
    return Response(report_csv(report, table), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/report", include_in_schema=False)
def report_page() -> FileResponse:
    """The report page; it asks the API above, which checks the login."""
    return FileResponse(_PAGE)
