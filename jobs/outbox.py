"""The webhook outbox: a job's event written into Redis for its webhook, its body
fixed then, for the API's sender (``jobs.webhooks``) to deliver. A delivery is a
hash (``webhook_delivery_key``: url, owner, job, event, body, attempts) and its id
in ``WEBHOOK_DUE_KEY``, scored by when its next attempt is due. The store writes
its jobs' events here (``JobStore.announce``); nothing here reads a job back."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel
from redis import Redis

from jobs.keys import WEBHOOK_DUE_KEY, webhook_delivery_key
from jobs.record import JobRecord, Progress, WebhookEvent
from jobs.resource import JobResource, job_resource

DELIVERY_TTL_S = 24 * 3600  # an undelivered delivery is forgotten after this


class WebhookBody(BaseModel):
    type: WebhookEvent
    timestamp: datetime
    data: JobResource


def event_body(record: JobRecord, event: WebhookEvent, progress: Progress) -> bytes:
    """The JSON body of the job's event (WebhookBody)."""
    job = job_resource(record, progress)
    return WebhookBody(type=event, timestamp=datetime.now(UTC), data=job).model_dump_json().encode()


def queue_delivery(
    redis: Redis, record: JobRecord, event: WebhookEvent, url: str, progress: Progress
) -> None:
    """Put the event of ``record`` (the job as it is now, with ``progress``) in the
    outbox, for ``url``."""
    body = event_body(record, event, progress)
    delivery_id = f"msg_{uuid.uuid4().hex}"  # webhook-id: the same on every attempt
    delivery = {
        "url": url,
        "owner": record.owner,
        "job": record.id,
        "event": event.value,
        "body": body,
        "attempts": 0,
    }
    now = time.time()
    with redis.pipeline() as pipe:
        pipe.hset(webhook_delivery_key(delivery_id), mapping=delivery)
        pipe.expire(webhook_delivery_key(delivery_id), DELIVERY_TTL_S)
        pipe.zadd(WEBHOOK_DUE_KEY, {delivery_id: now})
        # ids left by deliveries expired unsent (no sender ran: no secret, say)
        pipe.zremrangebyscore(WEBHOOK_DUE_KEY, "-inf", now - DELIVERY_TTL_S)
        pipe.execute()
