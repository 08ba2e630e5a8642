"""The FastAPI application: `create_app(settings)`.

The API never touches a GPU: it stores and checks uploads, queues work on
Redis/RQ, and serves results that workers wrote to the shared data volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from prometheus_client import Counter
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import cleaner
from jobs.folders import make_private
from jobs.keys import BATCH_LANES, SYNC_QUEUE
from jobs.logs import configure_logging
from jobs.queue import JobQueue
from jobs.store import JobStore
from jobs.webhooks import WebhookSender
from service import openapi, problems
from service.bodies import BodyGuard
from service.metrics import build_registry
from service.routers import health, jobs, models, purify, webhooks
from service.settings import Settings

log = logging.getLogger("pureebm.api")

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # others: "other"
FORM_FIELD_BYTES = 64 << 10
SPOOL_BYTES = 16 << 10
# An uploaded part is kept in memory up to this, then spooled to a temporary file
# (Starlette's default, 1 MiB, lets a thousand-part request hold a GiB).
MultiPartParser.spool_max_size = SPOOL_BYTES


async def clean_periodically(queue: JobQueue, interval_s: float) -> None:
    """The cleaner: fails stalled jobs, deletes expired jobs' data and metadata, and
    prunes the indexes expired records leave behind."""
    while True:
        try:
            failed = await asyncio.to_thread(cleaner.fail_stalled, queue)
            if failed:
                log.warning("stalled jobs failed", extra={"count": failed})
            deleted = await asyncio.to_thread(cleaner.delete_expired, queue.store)
            if deleted:
                log.info("expired jobs deleted", extra={"count": deleted})
            await asyncio.to_thread(cleaner.prune_indexes, queue.store)
        except Exception:
            log.exception("cleaner failed")
        await asyncio.sleep(interval_s)


def webhook_sender(store: JobStore, settings: Settings) -> WebhookSender | None:
    """The thread that delivers the jobs' webhooks, when the service sends them (it has
    a master secret)."""
    if settings.webhook_secret is None:
        return None
    return WebhookSender(
        store,
        settings.webhook_secret.get_secret_value().encode(),
        settings.webhook_targets,
        settings.webhook_attempts,
        settings.webhook_progress_interval_s,
    )


class CountRequests:
    """Counts every request by method, route and status, and answers an exception that
    no handler took with a problem+json 500 (so the connection stays healthy). Pure
    ASGI: no task or stream per request, which an upload cut in flight would pay for."""

    def __init__(self, app: ASGIApp, requests: Counter) -> None:
        self.app, self.requests = app, requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status: int | None = None

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if status is not None:  # the response had begun: nothing else can be sent
                raise
            status = 500
            await problems.unexpected_error(Request(scope), exc)(scope, receive, send)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.requests.labels(method, path, str(status or 500)).inc()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    if settings.redis_url is None:
        raise ValueError("the API needs a Redis URL (pureebm serve starts an embedded one)")
    # a Redis that stops answering (hung, overloaded) is a 503 after this, not a hang:
    # one wait per call, without redis-py's retries (with them, 25 s for a 2 s timeout)
    timeout = settings.redis_timeout_s
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    make_private(settings.data_dir)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    # uploads spool to the data volume, whose space admission counts, not to /tmp
    spool = settings.data_dir / "spool"
    spool.mkdir(exist_ok=True)
    tempfile.tempdir = str(spool)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cleaner = asyncio.create_task(
            clean_periodically(app.state.queue, settings.cleanup_interval_s)
        )
        sender = webhook_sender(app.state.store, settings)
        if sender is not None:
            sender.start()
        yield
        cleaner.cancel()
        if sender is not None:
            await asyncio.to_thread(sender.stop)
        redis.close()

    app = FastAPI(
        title="PureEBM",
        version="1.0",
        summary="Purify image training data of poisons with energy-based-model Langevin dynamics",
        lifespan=lifespan,
        docs_url=None,  # served from the package by service.openapi, not from a CDN
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
        generate_unique_id_function=openapi.operation_id,
        # form fields are small numbers and names: 64 KiB each, 100 at most, in memory
        form_limits={"max_fields": 100, "max_part_size": FORM_FIELD_BYTES},
    )
    app.state.settings = settings
    app.state.lost = lambda: None  # `pureebm serve` tells why its embedded Valkey is lost
    app.state.redis = redis
    app.state.store = JobStore(redis, settings)
    app.state.queue = JobQueue(app.state.store)
    app.state.metrics, requests = build_registry(app.state.queue, [SYNC_QUEUE, *BATCH_LANES])
    problems.install(app)
    for router in (jobs.router, purify.router, models.router, webhooks.router, health.router):
        app.include_router(router)
    openapi.serve_document(app)
    if settings.docs:
        openapi.serve_pages(app)

    app.add_middleware(BodyGuard, settings=settings)
    app.add_middleware(CountRequests, requests=requests)  # outermost: counts BodyGuard's too
    return app
