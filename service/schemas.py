"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.resource import JobResource
from pureebm.purifiers import Overrides


class PurifyParams(Overrides):  # type: ignore[valid-type,misc]
    """Purification parameters (every purifier family's, pureebm.purifiers); unset
    values take the model's preset's. The form's file parts come beside these, so
    this model does not refuse other fields itself: deps.strict_form does, naming
    them."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="NAME or NAME:VERSION; default: the service's")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="random seed; drawn if unset")


class JobSubmission(PurifyParams):
    """POST /v1/jobs's form fields: the purification parameters, and a webhook that
    hears of the job's events (docs/api.md#webhooks)."""

    webhook: str | None = Field(
        None, description="an https URL that each of the job's events is POSTed to, signed"
    )
    webhook_events: str | None = Field(
        None,
        description="comma-separated: start, progress, completed (any end); default: all",
    )


JOB_ID = "3f2c9a7e1b4d4c0e9a5b6c7d8e9f0a1b"
JOB_EXAMPLE = {  # a JobResource, as the OpenAPI document shows it (service.openapi)
    "id": JOB_ID,
    "status": "running",
    "kind": "zip",
    "input_name": "train.zip",
    "input_bytes": 48213,
    "images": 16,
    "params": {
        "model": "standard:1",
        "purifier": {
            "family": "langevin",
            "steps": 3,
            "eps": 0.01,
            "tau": 0.00390625,
            "init_noise": 0.0,
        },
        "filter": 0.5,
        "seed": 1234,
    },
    "progress": {
        "done": 28,
        "total": 32,
        "images_per_s": 40.0,
        "eta_s": 0.1,
        "queue_position": None,
    },
    "error": None,
    "created_at": "2025-06-01T12:00:00Z",
    "started_at": "2025-06-01T12:00:00.4Z",
    "finished_at": None,
    "expires_at": "2025-06-08T12:00:00Z",
    "timings": {"queued_s": 0.4, "running_s": 0.5},
    "warnings": [],
    "links": {"self": f"/v1/jobs/{JOB_ID}"},
}


class JobPage(BaseModel):
    items: list[JobResource]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class Health(BaseModel):
    status: Literal["ok", "lost"]
    reason: str | None = Field(None, description="lost: what `pureebm serve` gave up on")


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]] = Field(
        description="queue, workers, disk, model: each with `ok` and what was found",
        examples=[
            {
                "queue": {"ok": True},
                "workers": {"ok": True, "alive": 1},
                "disk": {"ok": True, "free_bytes": 52_000_000_000, "reserve_bytes": 1 << 30},
                "model": {"ok": True, "model": "standard:1"},
            }
        ],
    )


class ModelInfo(BaseModel):
    name: str
    default: bool  # a job without `model` runs one of this name's versions:
    default_version: int | None = None  # this one (the entry the default reference pins)
    versions: list[dict[str, Any]]


class WebhookSecret(BaseModel):
    secret: str = Field(
        description="signs this key's webhooks (Standard Webhooks: whsec_ and the base64 key)"
    )
