"""Prometheus metrics. Workers are separate processes (often on other hosts), so they
write their figures to Redis; the API reads them back at each scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from rq import Queue

from jobs.keys import (
    CANCELED_KEY,
    IMAGES_KEY,
    SHARD_SECONDS_KEY,
    STATES_KEY,
    WEBHOOK_OUTCOMES_KEY,
    WORKER_RATE_KEY,
)
from jobs.queue import JobQueue
from jobs.record import JobStatus
from jobs.stats import BUCKETS

RATE_FRESH_S = 600


class QueueCollector(Collector):
    """Jobs by state, images purified, webhook deliveries, queue depth, live workers,
    shard durations, worker rates."""

    def __init__(self, queue: JobQueue, queue_names: list[str]) -> None:
        self.queue, self.redis = queue, queue.redis
        self.queue_names = queue_names

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("pureebm_jobs", "Jobs kept, by state", labels=["state"])
        states = [s.decode() for s in self.redis.hvals(STATES_KEY)]
        for state in JobStatus:
            if state != JobStatus.canceled:  # a canceled job is deleted: see the counter
                jobs.add_metric([state.value], states.count(state.value))
        yield jobs
        yield CounterMetricFamily(
            "pureebm_jobs_canceled",
            "Jobs canceled (DELETE of an active job, or a synchronous request's timeout)",
            value=int(self.redis.get(CANCELED_KEY) or 0),
        )

        yield CounterMetricFamily(
            "pureebm_images_purified",
            "Images purified by all workers",
            value=int(self.redis.get(IMAGES_KEY) or 0),
        )

        webhooks = CounterMetricFamily(
            "pureebm_webhook_deliveries",
            "Webhook deliveries: delivered, or failed (given up on after their last attempt)",
            labels=["outcome"],
        )
        outcomes = self.redis.hgetall(WEBHOOK_OUTCOMES_KEY)
        for outcome in ("delivered", "failed"):
            webhooks.add_metric([outcome], int(outcomes.get(outcome.encode(), 0)))
        yield webhooks

        depth = GaugeMetricFamily("pureebm_queue_depth", "RQ jobs waiting", labels=["queue"])
        for name in self.queue_names:
            depth.add_metric([name], Queue(name, connection=self.redis).count)
        yield depth
        yield GaugeMetricFamily(
            "pureebm_workers",
            "Workers whose heartbeat is fresh (as /readyz counts them)",
            value=self.queue.live_workers(),
        )

        raw = {k.decode(): float(v) for k, v in self.redis.hgetall(SHARD_SECONDS_KEY).items()}
        buckets = [(str(b), raw.get(f"le_{b}", 0.0)) for b in BUCKETS]
        buckets.append(("+Inf", raw.get("count", 0.0)))
        yield HistogramMetricFamily(
            "pureebm_shard_duration_seconds",
            "Time to purify one shard",
            buckets=buckets,
            sum_value=raw.get("sum", 0.0),
        )

        rate = GaugeMetricFamily(
            "pureebm_worker_images_per_second",
            "Each worker's rate on its last shard",
            labels=["worker"],
        )
        for worker, value in self.redis.hgetall(WORKER_RATE_KEY).items():
            images_per_s, at = value.decode().split(":")
            if time.time() - float(at) < RATE_FRESH_S:
                rate.add_metric([worker.decode()], float(images_per_s))
        yield rate


def build_registry(queue: JobQueue, queue_names: list[str]) -> tuple[CollectorRegistry, Counter]:
    registry = CollectorRegistry()
    registry.register(QueueCollector(queue, queue_names))
    requests = Counter(
        "pureebm_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    return registry, requests
