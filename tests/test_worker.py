"""Workers sharing one queue, and a worker killed with SIGKILL in the middle of a shard."""

from __future__ import annotations

import io
import os
import shutil
import signal
import zipfile

import numpy as np
from PIL import Image
from rq import Queue, Worker
from rq.job import Job

from tests.stack import Stack, png, zip_bytes

IMAGES = 24  # six shards of four


def submit_slow_job(stack: Stack, client, cifar, steps: int) -> tuple[str, dict[str, bytes]]:
    members = {f"part{i % 3}/{i:02d}.png": png(cifar["images"][i]) for i in range(IMAGES)}
    response = client.post(
        "/v1/jobs", files={"archive": ("set.zip", zip_bytes(members))}, data={"steps": str(steps)}
    )
    assert response.status_code == 202, response.text
    return response.json()["id"], members


def check_every_image_once(result: bytes, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(io.BytesIO(result)) as archive:
        names = archive.namelist()
        assert names == list(members)  # each member once, in order
        for name in names:
            before = np.asarray(Image.open(io.BytesIO(members[name])))
            after = np.asarray(Image.open(io.BytesIO(archive.read(name))))
            assert after.shape == before.shape and not np.array_equal(after, before)


def shard_workers(stack: Stack, job_id: str) -> set[str]:
    jobs = [Job.fetch(f"{job_id}-shard-{i}", connection=stack.redis) for i in range(6)]
    return {j.worker_name for j in jobs}


def test_two_workers_share_one_jobs_shards(tmp_path, tiny_registry, cifar):
    stack = Stack(tmp_path, tiny_registry)
    try:
        stack.start_worker()
        stack.start_worker()
        with stack.client() as client:
            job_id, members = submit_slow_job(stack, client, cifar, steps=600)
            job = stack.wait_job(client, job_id)
            assert job["status"] == "finished", job["error"]
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
        assert len(shard_workers(stack, job_id)) == 2
    finally:
        stack.stop()


def test_a_worker_killed_mid_shard_loses_nothing(tmp_path, tiny_registry, cifar):
    stack = Stack(tmp_path, tiny_registry)
    try:
        victim = stack.start_worker()
        with stack.client() as client:
            job_id, members = submit_slow_job(stack, client, cifar, steps=1500)
            queue = Queue("pureebm", connection=stack.redis)

            def victim_is_purifying() -> bool:
                for worker in Worker.all(queue=queue):
                    current = worker.get_current_job_id() or ""
                    if worker.pid == victim.pid and "-shard-" in current:
                        return True
                return False

            stack.wait_for(victim_is_purifying, "the first worker to be inside a shard")
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            stack.start_worker()  # the survivor: takes the retried shard and the rest
            job = stack.wait_job(client, job_id, timeout=300)
            assert job["status"] == "finished", job["error"]
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
            report = client.get(f"/v1/jobs/{job_id}/report").json()
            assert [r["name"] for r in report["images"]] == list(members)
        retried = [
            j
            for j in (Job.fetch(f"{job_id}-shard-{i}", connection=stack.redis) for i in range(6))
            if j.retries_left is not None and j.retries_left < 3
        ]
        assert len(retried) == 1  # exactly the shard the killed worker held
    finally:
        stack.stop()


def test_a_finaliser_that_keeps_failing_is_retried_then_fails_the_job(
    tmp_path, tiny_registry, cifar
):
    """A real fault: the job's result folder is replaced by a file before the
    finaliser runs, so writing the result raises. The finaliser is retried
    (SHARD_RETRIES = 1 here) and then the job is failed with the reason, never left
    running."""
    stack = Stack(tmp_path, tiny_registry, shard_retries=1)
    try:
        stack.start_worker()
        with stack.client() as client:
            job_id, _ = submit_slow_job(stack, client, cifar, steps=300)
            result_dir = tmp_path / "data" / "jobs" / job_id / "result"
            shutil.rmtree(result_dir, ignore_errors=True)
            result_dir.write_bytes(b"not a folder")
            job = stack.wait_job(client, job_id)
            assert job["status"] == "failed"
            assert "finalising failed" in job["error"]
        finaliser = Job.fetch(f"{job_id}-finalize", connection=stack.redis)
        assert finaliser.get_status() == "failed" and finaliser.retries_left == 0
    finally:
        stack.stop()


def test_readiness_and_sync_purify_notice_a_killed_worker_by_its_heartbeat(
    tmp_path, tiny_registry, cifar
):
    """kill -9 leaves the worker's registration in Redis for its TTL (17 s here);
    readiness counts only fresh heartbeats (2 leases = 4 s) and notices sooner."""
    stack = Stack(tmp_path, tiny_registry, worker_lease_s=2)
    try:
        worker = stack.start_worker()
        with stack.client() as client:
            stack.wait_for(lambda: client.get("/readyz").status_code == 200, "a live worker")
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            assert Worker.all(connection=stack.redis)  # still registered
            stack.wait_for(
                lambda: client.get("/readyz").status_code == 503, "readiness to drop", timeout=12
            )
            assert client.get("/readyz").json()["checks"]["workers"]["alive"] == 0
            image = {"files": ("a.png", png(cifar["images"][0]))}
            assert client.post("/v1/purify", files=image).status_code == 503
    finally:
        stack.stop()
