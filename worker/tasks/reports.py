"""``generate_report``: render rows as a CSV or JSON report artifact."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.core.names import GENERATE_REPORT_TASK
from worker.handlers.reports import ReportFormat, Row, render_report
from worker.registry import TaskContext, task


class GenerateReportPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    report_id: str = Field(..., pattern=r"^[A-Za-z0-9._-]{1,128}$")
    data: list[Row] = Field(..., max_length=100_000, description="Rows: objects of scalars.")
    format: ReportFormat = "csv"


@task(name=GENERATE_REPORT_TASK, payload=GenerateReportPayload)
def generate_report(payload: GenerateReportPayload, ctx: TaskContext) -> dict[str, Any]:
    """Render ``data`` as a CSV (or JSON) report, downloadable by its artifact id."""
    report = render_report(payload.report_id, payload.data, payload.format)
    filename = f"{payload.report_id}.{payload.format}"
    artifact_id = ctx.artifacts.put(report.content, report.content_type, filename)
    return {
        "report_id": payload.report_id,
        "artifact_id": artifact_id,
        "rows": report.rows,
        "columns": report.columns,
        "totals": report.numeric_totals,
        "bytes": len(report.content),
    }
