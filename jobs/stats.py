"""The figures workers leave in Redis after each shard, for the API's /metrics
(workers are separate processes, often on other hosts)."""

from __future__ import annotations

import time

from redis import Redis

from jobs.keys import IMAGES_KEY, SHARD_SECONDS_KEY, WORKER_RATE_KEY

BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)  # shard seconds, for the histogram


def record_shard(redis: Redis, worker: str, images: int, seconds: float) -> None:
    """Called by a worker after each shard."""
    with redis.pipeline() as pipe:
        pipe.incrby(IMAGES_KEY, images)
        for bound in BUCKETS:
            if seconds <= bound:
                pipe.hincrby(SHARD_SECONDS_KEY, f"le_{bound}", 1)
        pipe.hincrby(SHARD_SECONDS_KEY, "count", 1)
        pipe.hincrbyfloat(SHARD_SECONDS_KEY, "sum", seconds)
        pipe.hset(WORKER_RATE_KEY, worker, f"{images / max(seconds, 1e-9)}:{time.time()}")
        pipe.execute()
