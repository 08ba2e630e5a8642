"""Workers sharing one queue (faults are in test_faults.py)."""

from __future__ import annotations

from rq.job import Job

from tests.stack import Stack, check_every_image_once, png, submit_zip

IMAGES = 24  # six shards of four


def shard_workers(stack: Stack, job_id: str) -> set[str]:
    jobs = [Job.fetch(f"{job_id}-shard-{i}", connection=stack.redis) for i in range(6)]
    return {j.worker_name for j in jobs}


def test_two_workers_share_one_jobs_shards(tmp_path, tiny_registry, cifar):
    stack = Stack(tmp_path, tiny_registry)
    try:
        stack.start_worker()
        stack.start_worker()
        with stack.client() as client:
            members = {f"part{i % 3}/{i:02d}.png": png(cifar["images"][i]) for i in range(IMAGES)}
            job_id = submit_zip(client, members, steps=600)
            job = stack.wait_job(client, job_id)
            assert job["status"] == "finished", job["error"]
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
        assert len(shard_workers(stack, job_id)) == 2
    finally:
        stack.stop()
