"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.record import JobParams, JobStatus, Progress
from pureebm.purifiers import Overrides


class PurifyParams(Overrides):  # type: ignore[valid-type,misc]
    """Purification parameters (every purifier family's, pureebm.purifiers); unset
    values take the model's preset's. The form's file parts come beside these, so
    this model does not refuse other fields itself: deps.strict_form does, naming
    them."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="NAME or NAME:VERSION; default: the service's")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random seed; drawn if unset")


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


class JobPage(BaseModel):
    items: list[JobResource]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class ModelInfo(BaseModel):
    name: str
    default: bool  # a job without `model` runs one of this name's versions:
    default_version: int | None = None  # this one (the entry the default reference pins)
    versions: list[dict[str, Any]]
