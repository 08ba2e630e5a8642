"""A job as callers see it: GET /v1/jobs/{id} returns it, and a webhook carries it.
Built from the record and its progress in one place, so the two never differ."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pydantic import BaseModel

from jobs.record import JobParams, JobRecord, JobStatus, Progress


class Timings(BaseModel):
    queued_s: float | None
    running_s: float | None


class JobResource(BaseModel):
    id: str
    status: JobStatus
    kind: str
    input_name: str
    input_bytes: int
    images: int  # in the upload (progress counts each phase's work: a filter scores first)
    params: JobParams
    progress: Progress
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    timings: Timings
    warnings: list[str]  # e.g. steps far outside what the model was calibrated for
    links: dict[str, str]


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def job_resource(record: JobRecord, progress: Progress) -> JobResource:
    """The job as callers see it: the record's public fields (never its owner or its
    webhook), its progress, its timings and the links that apply to its status."""
    base = f"/v1/jobs/{record.id}"
    links = {"self": base}
    if record.status == JobStatus.finished:
        links |= {
            "result": f"{base}/result",
            "report": f"{base}/report",
            "preview": f"{base}/preview.png",
        }
    end = record.finished_at or time.time()
    return JobResource(
        id=record.id,
        status=record.status,
        kind=record.kind,
        input_name=record.input_name,
        input_bytes=record.input_bytes,
        images=record.images,
        params=record.params,
        progress=progress,
        error=record.error if record.status == JobStatus.failed else None,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        expires_at=timestamp(record.expires_at),
        timings=Timings(
            queued_s=(record.started_at or end) - record.created_at,
            running_s=end - record.started_at if record.started_at else None,
        ),
        warnings=record.warnings,
        links=links,
    )
