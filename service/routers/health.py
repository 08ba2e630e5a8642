"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pureebm.registry import RegistryError
from service.deps import MetricsAccessDep, QueueDep, RedisDep, RegistryDep, SettingsDep
from service.disk import free_bytes
from service.problems import problem_responses
from service.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    responses=problem_responses()
    | {503: {"model": Health, "description": "lost: what `pureebm serve` gave up on"}},
)
async def healthz(request: Request) -> JSONResponse:  # on the event loop: no pool to wait for
    """The process is up, and nothing it needs is beyond repair (`pureebm serve`'s
    embedded Valkey has not been given up on)."""
    lost = request.app.state.lost()
    if lost:
        return JSONResponse({"status": "lost", "reason": lost}, 503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=problem_responses()
    | {503: {"model": Readiness, "description": "not ready: the checks say why"}},
)
def readyz(
    redis: RedisDep, queue: QueueDep, registry: RegistryDep, settings: SettingsDep
) -> JSONResponse:
    """Ready when the queue answers, a worker's heartbeat is fresh, the data volume
    has its reserve free and the default model verifies."""
    checks: dict[str, dict[str, object]] = {}
    try:
        redis.ping()
        checks["queue"] = {"ok": True}
        workers = queue.live_workers()
        checks["workers"] = {"ok": workers > 0, "alive": workers}
    except Exception as e:
        checks["queue"] = {"ok": False, "error": str(e)}
    free, reserve = free_bytes(settings.jobs_dir), settings.disk_reserve_bytes
    checks["disk"] = {"ok": free >= reserve, "free_bytes": free, "reserve_bytes": reserve}
    try:
        manifest = registry.verified_manifest(registry.default_ref(settings.default_model))
        checks["model"] = {"ok": True, "model": manifest.ref}
    except RegistryError as e:
        checks["model"] = {"ok": False, "error": str(e)}
    ready = all(c["ok"] for c in checks.values()) and "workers" in checks
    return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
    | problem_responses(401, 403),
)
def metrics(request: Request, _: MetricsAccessDep) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
