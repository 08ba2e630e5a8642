"""The HTTP API end to end: real Valkey, real uvicorn on 127.0.0.1, a real worker process."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import UploadFile

from jobs.record import Report
from pureebm.images import Picture, UnsafeInput
from pureebm.pipeline import purify_pictures
from pureebm.preview import TILE
from pureebm.results import psnr
from service.schemas import PurifyParams
from service.submissions import request_fingerprint
from service.uploads import sent_filename
from tests.conftest import purifier_of
from tests.hostile import LIMITS, REFUSED, materialise
from tests.stack import KEY_A, KEY_B, Stack, png, submit_zip, zip_bytes


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_registry) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("api"), tiny_registry, **LIMITS)
    stack.start_worker()
    yield stack
    stack.stop()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_zip_with_folders_and_a_text_member_round_trips(stack, cifar, tiny_model):
    images = cifar["images"][:10]
    members = {f"train/{'cat' if i % 2 else 'dog'}/deep/{i}.png": png(images[i]) for i in range(10)}
    members = {"README.md": b"# labels\nbyte-exact \x00\xff", **members}
    with stack.client() as client:
        created = client.post(
            "/v1/jobs",
            files={"archive": ("data.zip", zip_bytes(members))},
            data={"steps": "5", "seed": "7"},
        )
        assert created.status_code == 202, created.text
        job = created.json()
        assert created.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["progress"]["total"] == 10 and job["status"] in ("queued", "running")
        # The model version and the model's defaults are pinned at submit.
        assert job["params"]["model"] == "tiny:1"
        assert (job["params"]["purifier"]["steps"], job["params"]["seed"]) == (5, 7)
        assert job["params"]["purifier"]["eps"] == tiny_model.manifest.purifier.eps
        job = stack.wait_job(client, job["id"])
        assert job["status"] == "finished", job
        assert job["progress"]["done"] == 10 and job["progress"]["images_per_s"] > 0
        result = client.get(job["links"]["result"])
        assert result.status_code == 200 and result.headers["content-type"] == "application/zip"
        assert 'filename="data.purified.zip"' in result.headers["content-disposition"]
        answer = client.get(job["links"]["report"])
        assert answer.headers["content-type"] == "application/json"
        report = Report.model_validate(answer.json()).model_dump(mode="json")
        schema = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/report"]
        assert schema["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Report"
        }
    with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
        assert archive.namelist() == list(members)
        assert archive.read("README.md") == members["README.md"]
        outputs = {n: decode(archive.read(n)) for n in archive.namelist()[1:]}
    assert [r["name"] for r in report["images"]] == list(members)[1:]
    assert report["seed"] == 7 and report["purifier"]["steps"] == 5
    # The same seed through the engine, split as the service splits (shards of 4),
    # gives the same pixels: every image was purified exactly once, in place.
    pictures = [(n, Picture(decode(members[n]), None, "RGB", "PNG")) for n in outputs]
    expected = []
    for start in range(0, 10, 4):
        expected += purify_pictures(
            purifier_of(tiny_model, steps=5), pictures[start : start + 4], 4, 7, range(start, 10)
        )
    for item in expected:
        assert not np.array_equal(outputs[item.name], decode(members[item.name]))
        assert np.abs(outputs[item.name].astype(int) - item.rgb.astype(int)).max() <= 1


def test_npz_keeps_keys_and_labels(stack, cifar):
    buffer = io.BytesIO()
    np.savez(
        buffer,
        images=cifar["images"][:6],
        labels=cifar["labels"][:6],
        names=np.array([f"img{i}" for i in range(6)]),
    )
    with stack.client() as client:
        job = client.post(
            "/v1/jobs", files={"archive": ("set.npz", buffer.getvalue())}, data={"steps": "3"}
        ).json()
        job = stack.wait_job(client, job["id"])
        result = client.get(f"/v1/jobs/{job['id']}/result").content
    with np.load(io.BytesIO(result), allow_pickle=False) as out:
        assert out.files == ["images", "labels", "names"]
        np.testing.assert_array_equal(out["labels"], cifar["labels"][:6])
        assert out["images"].shape == (6, 32, 32, 3)
        assert not np.array_equal(out["images"], cifar["images"][:6])


def test_tar_gz_and_single_jpeg(stack, cifar):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for i in range(3):
            data = png(cifar["images"][i])
            info = tarfile.TarInfo(f"imgs/{i}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with stack.client() as client:
        tar_job = client.post(
            "/v1/jobs", files={"archive": ("x.tar.gz", buffer.getvalue())}, data={"steps": "2"}
        ).json()
        jpeg_job = client.post(
            "/v1/jobs",
            files={"files": ("photo.jpg", png(cifar["images"][5], fmt="JPEG"))},
            data={"steps": "2"},
        ).json()
        assert stack.wait_job(client, tar_job["id"])["status"] == "finished"
        assert stack.wait_job(client, jpeg_job["id"])["status"] == "finished"
        tar_result = client.get(f"/v1/jobs/{tar_job['id']}/result")
        jpeg_result = client.get(f"/v1/jobs/{jpeg_job['id']}/result")
    with tarfile.open(fileobj=io.BytesIO(tar_result.content)) as archive:
        assert [m.name for m in archive if m.isfile()] == [f"imgs/{i}.png" for i in range(3)]
    assert jpeg_result.headers["content-type"] == "image/png"
    assert 'filename="photo.purified.png"' in jpeg_result.headers["content-disposition"]
    assert Image.open(io.BytesIO(jpeg_result.content)).size == (32, 32)


def test_synchronous_purify(stack, cifar):
    folders = stack.job_folders()
    with stack.client() as client:
        one = client.post(
            "/v1/purify", files={"files": ("a.png", png(cifar["images"][0]))}, data={"steps": "3"}
        )
        assert one.status_code == 200 and one.headers["content-type"] == "image/png"
        assert decode(one.content).shape == (32, 32, 3)
        two = client.post(
            "/v1/purify",
            data={"steps": "3"},
            files=[
                ("files", ("a.png", png(cifar["images"][0]))),
                ("files", ("b.png", png(cifar["images"][1]))),
            ],
        )
        assert two.status_code == 200 and two.headers["content-type"] == "application/zip"
        assert zipfile.ZipFile(io.BytesIO(two.content)).namelist() == ["a.png", "b.png"]
        assert two.headers["purified-positions"] == "0, 1"
        assert two.headers["purified-count"] == "2"
        sent = [png(cifar["images"][i]) for i in range(4)]
        filtered = client.post(  # the half of highest energy purified, the rest as sent
            "/v1/purify",
            data={"steps": "3", "filter": "0.5"},
            files=[("files", (f"{i}.png", data)) for i, data in enumerate(sent)],
        )
        assert filtered.status_code == 200, filtered.text
        back = zipfile.ZipFile(io.BytesIO(filtered.content))
        purified = [int(i) for i in filtered.headers["purified-positions"].split(", ")]
        assert len(purified) == 2 and filtered.headers["purified-count"] == "2"
        for i, data in enumerate(sent):
            assert (back.read(f"{i}.png") != data) == (i in purified)
        too_many = client.post(
            "/v1/purify",
            files=[("files", (f"{i}.png", png(cifar["images"][0]))) for i in range(65)],
        )
        assert too_many.status_code == 413
    # each synchronous job's folder is deleted just after its response is sent, so the
    # last one may still be there as the client reads it; none may stay (an earlier
    # test's folders may go meanwhile)
    stack.wait_for(
        lambda: set(stack.job_folders()) <= set(folders), "the synchronous jobs' folders to go", 30
    )


def test_concurrent_requests_with_one_idempotency_key_make_one_job(stack, cifar):
    """Eight uploads at once with the same key: those that lose the race to claim it
    drop the job they made and answer with the winner's."""
    upload = {"files": ("a.png", png(cifar["images"][5]))}
    with stack.client() as client, ThreadPoolExecutor(8) as pool:
        before = client.get("/v1/jobs").json()["total"]
        headers = {"Idempotency-Key": "race"}
        answers = list(
            pool.map(lambda _: client.post("/v1/jobs", files=upload, headers=headers), range(8))
        )
        assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
        assert client.get("/v1/jobs").json()["total"] == before + 1


def test_idempotent_submit(stack, cifar):
    upload = {"files": ("a.png", png(cifar["images"][3]))}
    with stack.client() as client:
        first = client.post("/v1/jobs", files=upload, headers={"Idempotency-Key": "k1"})
        again = client.post("/v1/jobs", files=upload, headers={"Idempotency-Key": "k1"})
        other = client.post("/v1/jobs", files=upload, headers={"Idempotency-Key": "k2"})
    with stack.client(KEY_B) as client:
        bobs = client.post("/v1/jobs", files=upload, headers={"Idempotency-Key": "k1"})
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len({first.json()["id"], other.json()["id"], bobs.json()["id"]}) == 3


def test_an_idempotency_key_follows_the_ietf_draft(stack, cifar):
    """The same key with another body or other parameters is 422; once its job is
    deleted, the key starts afresh."""
    upload = {"files": ("a.png", png(cifar["images"][3]))}
    key = {"Idempotency-Key": "ietf-1"}
    with stack.client() as client:
        first = client.post("/v1/jobs", files=upload, headers=key)
        assert first.status_code == 202
        other_body = client.post(
            "/v1/jobs", files={"files": ("a.png", png(cifar["images"][4]))}, headers=key
        )
        other_steps = client.post("/v1/jobs", files=upload, data={"steps": "7"}, headers=key)
        assert (other_body.status_code, other_steps.status_code) == (422, 422)
        assert "different request" in other_body.json()["detail"]
        assert client.delete(f"/v1/jobs/{first.json()['id']}").status_code == 200
        fresh = client.post("/v1/jobs", files=upload, headers=key)
        assert fresh.status_code == 202 and "idempotent-replayed" not in fresh.headers
        assert fresh.json()["id"] != first.json()["id"]


def test_keys_own_their_jobs(stack, cifar):
    with stack.client(KEY_A) as alice, stack.client(KEY_B) as bob:
        job = alice.post("/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))}).json()
        for path in ("", "/result", "/report"):
            assert bob.get(f"/v1/jobs/{job['id']}{path}").status_code == 404
        assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
        assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["items"]]
        assert job["id"] in [j["id"] for j in alice.get("/v1/jobs").json()["items"]]
    with stack.client(None) as anonymous:
        assert anonymous.get("/v1/jobs").status_code == 401
    with stack.client("not-a-key") as stranger:
        response = stranger.get("/v1/jobs")
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"


def test_result_before_finish_is_409_and_listing_pages(stack, cifar):
    with stack.client() as client:
        job = client.post(
            "/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))}, data={"steps": "2000"}
        ).json()
        early = client.get(f"/v1/jobs/{job['id']}/result")
        assert early.status_code == 409 and early.json()["status"] == 409
        page = client.get("/v1/jobs", params={"limit": 2}).json()
        assert len(page["items"]) == 2 and page["next_offset"] == 2 and page["total"] >= 3
        assert page["items"][0]["id"] == job["id"]  # newest first
        assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_cancel_stops_a_running_job_and_deletes_it(stack, cifar):
    members = {f"{i}.png": png(cifar["images"][i]) for i in range(24)}
    with stack.client() as client:
        job = client.post(
            "/v1/jobs", files={"archive": ("big.zip", zip_bytes(members))}, data={"steps": "2000"}
        ).json()
        stack.wait_for(
            lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running",
            "the job to start",
        )
        canceled = client.delete(f"/v1/jobs/{job['id']}")
        assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
        gone = client.get(f"/v1/jobs/{job['id']}")
        assert gone.status_code == 410 and "deleted by its owner at" in gone.json()["detail"]
        assert client.get(f"/v1/jobs/{'0' * 32}").status_code == 404  # never a job
        with stack.client(key=KEY_B) as bob:  # someone else's deleted job: still 404
            assert bob.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert job["id"] not in stack.job_folders()
        # the worker drops the rest after its current batch and takes the next job
        after = client.post(
            "/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))}, data={"steps": "2"}
        ).json()
        assert stack.wait_job(client, after["id"], timeout=180)["status"] == "finished"
    from rq.job import Job

    statuses = [
        Job.fetch(f"{job['id']}-shard-{i}", connection=stack.redis).get_status() for i in range(6)
    ]
    assert statuses.count("canceled") >= 4
    # the running shard reported progress after the delete: no key of the job came back
    assert stack.redis.keys(f"pureebm:job:{job['id']}*") == []
    with stack.client() as client:
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 410


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_inputs_get_their_status_and_leave_nothing(stack, cifar, case):
    status, spec, form = REFUSED[case]
    with stack.client() as client:
        before = client.get("/v1/jobs").json()["total"]
        folders = stack.job_folders()
        response = client.post("/v1/jobs", files=materialise(spec, cifar), data=form)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status and response.json()["detail"]
        assert client.get("/v1/jobs").json()["total"] == before
        assert client.get("/readyz").status_code == 200  # the service stays ready
    assert stack.job_folders() == folders


def test_a_job_over_its_compute_bound_is_told_by_how_much(stack, cifar):
    """Two 512 x 512 images x 2,000 Langevin steps against LIMITS' 1e8 pixel-passes; a
    filter of half purifies one of them, plus a scoring pass over both."""
    large = png(np.tile(cifar["images"][0], (16, 16, 1)))
    images = [("files", ("a.png", large)), ("files", ("b.png", large))]
    with stack.client() as client:
        response = client.post("/v1/jobs", files=images, data={"steps": "2000"})
        assert response.status_code == 413
        assert "1.05e+09 pixel-passes" in response.json()["detail"]
        assert "10.5x the 1e+08 limit" in response.json()["detail"]
        halved = client.post("/v1/jobs", files=images, data={"steps": "2000", "filter": "0.5"})
        assert "5.2x" in halved.json()["detail"]


def test_a_filtered_jobs_bound_counts_the_largest_images_it_could_choose(stack, cifar):
    """255 images of 32 x 32 and one of 512 x 512, filter 1/256, 400 steps: a filter
    takes its share of every size, so the large image is purified whatever its energy:
    (1,024 + 262,144) x 400 = 1.05e8 pixel-passes and the scoring pass, over 1e8."""
    small = png(cifar["images"][1])
    members = {f"{i}.png": small for i in range(255)}
    members["large.png"] = png(np.tile(cifar["images"][0], (16, 16, 1)))
    with stack.client() as client:
        response = client.post(
            "/v1/jobs",
            files={"archive": ("mixed.zip", zip_bytes(members))},
            data={"steps": "400", "filter": str(1 / 256)},
        )
    assert response.status_code == 413, response.text
    assert "at most 263168 pixels purified" in response.json()["detail"]


def test_a_misspelled_repeated_or_raw_request_is_refused_naming_the_fault(stack, cifar):
    image = {"files": ("a.png", png(cifar["images"][0]))}
    with stack.client() as client:
        before = client.get("/v1/jobs").json()["total"]
        for sent, hint in [("step", "steps"), ("Steps", "steps"), ("modle", "model")]:
            answer = client.post("/v1/jobs", files=image, data={sent: "7"})
            assert answer.status_code == 422, answer.text
            detail = answer.json()["detail"]
            assert f"unknown field {sent!r}; did you mean {hint!r}?" in detail
            assert answer.json()["errors"][0]["loc"] == ["body", sent]
        answer = client.post("/v1/purify", files=image, data={"T": "7"})
        assert answer.status_code == 422 and "unknown field 'T'" in answer.json()["detail"]
        twice = [("files", image["files"]), ("steps", (None, "3")), ("steps", (None, "5"))]
        answer = client.post("/v1/jobs", files=twice)
        assert answer.status_code == 422 and "'steps' is given 2 times" in answer.json()["detail"]
        raw = client.post("/v1/jobs", content=zip_bytes({"a.png": png(cifar["images"][0])}))
        assert raw.status_code == 422 and "not a multipart form" in raw.json()["detail"]
        assert client.get("/v1/jobs").json()["total"] == before


def test_steps_far_past_the_models_calibration_come_with_a_warning(stack, cifar):
    """'tiny' keeps the paper's T = 150: 2,000 steps is 13x that, and says so."""
    image = {"files": ("a.png", png(cifar["images"][0]))}
    with stack.client() as client:
        far = client.post("/v1/jobs", files=image, data={"steps": "2000"}).json()
        usual = client.post("/v1/jobs", files=image).json()
        assert len(far["warnings"]) == 1 and "steps=2000 is 13x the 150 steps" in far["warnings"][0]
        assert client.get(f"/v1/jobs/{far['id']}").json()["warnings"] == far["warnings"]
        assert usual["warnings"] == []
        for job in (far, usual):
            client.delete(f"/v1/jobs/{job['id']}")


def test_an_unexpected_error_is_a_problem_json_500_naming_the_job(stack, cifar):
    """A job record damaged in Redis (its params field gone) makes reading it fail
    in a way no handler expects: the answer is still problem+json."""
    with stack.client() as client:
        created = client.post("/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))})
        job_id = created.json()["id"]
        stack.wait_job(client, job_id)
        stack.redis.hdel(f"pureebm:job:{job_id}", "params")
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["job"] == job_id and "unexpected" in response.json()["detail"]
        client.delete(f"/v1/jobs/{job_id}")


def test_models_health_and_metrics(stack):
    with stack.client() as client:
        models = client.get("/v1/models").json()
        assert [m["name"] for m in models] == ["tiny"] and models[0]["default"]
        assert models[0]["default_version"] == 1  # the version a job without `model` runs
        version = models[0]["versions"][0]
        assert len(version["weights"]["sha256"]) == 64 and version["purifier"]["family"]
        training = version["weights"]["training"]
        assert "iterations" in training and not {"command", "data"} & set(training)
        assert str(Path(__file__).parent) not in client.get("/v1/models").text  # no paths
        assert client.get("/v1/models/absent").status_code == 404
    with stack.client(key=None) as anonymous:  # keys are configured: models need one too
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.get("/v1/models/tiny").status_code == 401
    with stack.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"]["alive"] >= 1
        assert "post" in client.get("/openapi.json").json()["paths"]["/v1/jobs"]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """A Prometheus text page as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_the_traffic_they_saw(tmp_path, tiny_registry, cifar):
    """One job of 6 images finished (2 shards), one canceled while its worker holds
    it: the samples say exactly that."""
    hold = tmp_path / "hold"
    stack = Stack(tmp_path, tiny_registry, hold_file=hold)
    try:
        stack.start_worker()
        with stack.client() as client:
            members = {f"{i}.png": png(cifar["images"][i]) for i in range(6)}
            done = submit_zip(client, members, steps=1)
            assert stack.wait_job(client, done)["status"] == "finished"
            hold.touch()
            held = submit_zip(client, members, steps=1)
            stack.wait_for(
                lambda: client.get(f"/v1/jobs/{held}").json()["status"] == "running", "a hold"
            )
            assert client.delete(f"/v1/jobs/{held}").status_code == 200
            page = samples(client.get("/metrics").text)
    finally:
        stack.stop()
    assert page[("pureebm_jobs", (("state", "finished"),))] == 1
    assert page[("pureebm_jobs", (("state", "running"),))] == 0
    assert page[("pureebm_jobs_canceled_total", ())] == 1
    assert page[("pureebm_images_purified_total", ())] >= 6  # and the held shard's, if done
    assert page[("pureebm_shard_duration_seconds_count", ())] >= 2
    assert page[("pureebm_workers", ())] == 1
    posts = (
        "pureebm_http_requests_total",
        (("method", "POST"), ("route", "/v1/jobs"), ("status", "202")),
    )
    assert page[posts] == 2, sorted(k for k in page if "http" in k[0])


def test_readyz_fails_without_workers(tmp_path: Path, tiny_registry):
    stack = Stack(tmp_path, tiny_registry)
    try:
        with stack.client() as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["workers"] == {"ok": False, "alive": 0}
            response = client.post("/v1/purify", files={"files": ("a.png", b"x")})
            assert response.status_code == 503
    finally:
        stack.stop()


def test_metrics_and_docs_can_be_closed(tmp_path: Path, tiny_registry):
    """With keys configured, /metrics, /docs and /openapi.json answer without one by
    default; the settings close them."""
    stack = Stack(tmp_path, tiny_registry, public_metrics="false", docs="false")
    try:
        with stack.client(key=None) as anonymous, stack.client() as keyed:
            assert anonymous.get("/metrics").status_code == 401
            assert keyed.get("/metrics").status_code == 200
            assert keyed.get("/docs").status_code == 404
            assert keyed.get("/openapi.json").status_code == 404
    finally:
        stack.stop()
    (tmp_path / "open").mkdir()
    stack = Stack(tmp_path / "open", tiny_registry)
    try:
        with stack.client(key=None) as anonymous:
            assert anonymous.get("/metrics").status_code == 200
            assert anonymous.get("/openapi.json").status_code == 200
    finally:
        stack.stop()


def test_concurrent_uploads_cannot_pass_the_active_job_quota(tmp_path: Path, tiny_registry, cifar):
    """40 uploads at once against a quota of 20 (no worker, so every job stays queued):
    exactly 20 are accepted, the rest get 429, and 20 jobs are active."""
    stack = Stack(tmp_path, tiny_registry, max_active_jobs_per_key=20)
    image = png(cifar["images"][0])

    def post(_: int) -> int:
        with stack.client() as client:
            return client.post("/v1/jobs", files={"files": ("a.png", image)}).status_code

    try:
        with ThreadPoolExecutor(40) as pool:
            statuses = list(pool.map(post, range(40)))
        assert sorted(set(statuses)) == [202, 429] and statuses.count(202) == 20, statuses
        with stack.client() as client:
            jobs = client.get("/v1/jobs", params={"limit": 200}).json()
        assert jobs["total"] == 20 and {j["status"] for j in jobs["items"]} == {"queued"}
    finally:
        stack.stop()


def test_a_filtered_job_purifies_the_highest_energy_images_and_passes_the_rest(stack, cifar):
    """Two phases over shards of 4: every image scored, the top ceil(0.5 x 9) = 5
    purified exactly as an unfiltered job with the same seed purifies them, the
    other 4 (and the non-image member) back byte for byte."""
    members = {f"img/{i}.png": png(cifar["images"][i]) for i in range(9)}
    members["labels.csv"] = b"name,label\n"
    with stack.client() as client:
        jobs, results = {}, {}
        for name, extra in (("all", {}), ("half", {"filter": "0.5"})):
            created = client.post(
                "/v1/jobs",
                files={"archive": ("data.zip", zip_bytes(members))},
                data={"steps": "3", "seed": "3", **extra},
            )
            assert created.status_code == 202, created.text
            jobs[name] = stack.wait_job(client, created.json()["id"])
            assert jobs[name]["status"] == "finished", jobs[name]
            results[name] = client.get(jobs[name]["links"]["result"]).content
        report = client.get(jobs["half"]["links"]["report"]).json()
        preview = client.get(jobs["half"]["links"]["preview"])
        auto = client.post(
            "/v1/jobs",
            files={"archive": ("data.zip", zip_bytes(members))},
            data={"filter": "auto"},
        )
        out_of_range = client.post(
            "/v1/jobs",
            files={"archive": ("data.zip", zip_bytes(members))},
            data={"filter": "1.5"},
        )
    assert jobs["half"]["params"]["filter"] == 0.5
    assert jobs["half"]["progress"]["done"] == jobs["half"]["progress"]["total"] == 2 * 9
    assert report["filter"] == 0.5 and report["purified"] == 5
    assert [row["name"] for row in report["images"]] == list(members)[:-1]
    ranked = sorted(report["images"], key=lambda row: -row["energy_before"])
    chosen = {row["name"] for row in ranked[:5]}
    assert chosen == {row["name"] for row in report["images"] if row["purified"]}
    with (
        zipfile.ZipFile(io.BytesIO(results["all"])) as every,
        zipfile.ZipFile(io.BytesIO(results["half"])) as half,
    ):
        assert half.namelist() == list(members)
        assert half.read("labels.csv") == members["labels.csv"]
        for name in list(members)[:-1]:
            expected = every.read(name) if name in chosen else members[name]
            assert half.read(name) == expected
    assert auto.status_code == 400 and "threshold" in auto.json()["detail"]
    assert out_of_range.status_code == 422
    # the card: 5 purified samples (sent, purified, difference), then the histogram
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    card = Image.open(io.BytesIO(preview.content))
    assert card.width >= 640 and card.height > 5 * TILE + 200
    for row in report["images"]:  # how far each purified image moved, from the same pixels
        if row["purified"]:
            purified = decode(every_result(results["all"], row["name"]))
            assert row["psnr"] == pytest.approx(
                psnr(cifar["images"][int(row["name"][4:-4])], purified), abs=1e-3
            )
        else:
            assert row["psnr"] is None
    assert report["score"] == "energy"


def every_result(archive: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return opened.read(name)


def test_a_page_past_any_list_is_refused(stack):
    with stack.client() as client:
        answer = client.get("/v1/jobs", params={"offset": 9223372036854775807})
        assert answer.status_code == 422 and answer.headers["content-type"] == (
            "application/problem+json"
        )


def test_a_keys_file_without_keys_is_an_error_not_open_access(tmp_path):
    from pydantic import ValidationError

    from service.settings import Settings

    keys = tmp_path / "keys.txt"
    keys.write_text("# no keys yet\n\n")
    with pytest.raises(ValidationError, match="lists no key"):
        Settings(api_keys_file=keys)


def test_file_names_come_back_as_sent_or_are_refused(stack, cifar):
    """Names in any script and with spaces come back unchanged; a path or a control
    character in a name is refused."""
    images = {
        name: png(cifar["images"][i]) for i, name in enumerate(["猫.png", "犬.png", "my photo.png"])
    }
    with stack.client() as client:
        created = client.post(
            "/v1/jobs", files=[("files", (name, data)) for name, data in images.items()]
        )
        assert created.status_code == 202, created.text
        job = stack.wait_job(client, created.json()["id"])
        assert job["status"] == "finished", job
        result = client.get(job["links"]["result"])
        longest = "a" * 196 + ".png"  # 200 bytes: its result's name, written aside, fits in 255
        kept = client.post("/v1/jobs", files={"files": (longest, images["猫.png"])})
        assert stack.wait_job(client, kept.json()["id"])["status"] == "finished"
        for bad in ("../x.png", "dir/x.png", "..", "a" * 197 + ".png"):
            refused = client.post("/v1/jobs", files={"files": (bad, images["猫.png"])})
            assert refused.status_code == 422, (bad, refused.text)
    with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
        assert archive.namelist() == list(images)
    with pytest.raises(UnsafeInput):  # httpx percent-encodes these; other clients may not
        sent_filename("a\x01.png", "x")


def test_a_chunked_upload_over_the_limit_is_413_like_a_declared_one(stack, cifar):
    """No Content-Length: the body is cut while it streams, and the answer is still 413."""
    boundary = "pureebm-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(12):  # 6 MB against the stack's 5 MB
            yield bytes(500_000)
        yield f"\r\n--{boundary}--\r\n".encode()

    with stack.client() as client:
        folders = stack.job_folders()
        answer = client.post(
            "/v1/jobs",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert answer.status_code == 413, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
    assert stack.job_folders() == folders


def test_every_image_in_a_container_is_purified_whatever_its_name(stack, cifar):
    images = cifar["images"]
    members = {
        "a.png": png(images[0]),
        "b.jfif": png(images[1], fmt="JPEG"),
        "c.jpe": png(images[2], fmt="JPEG"),
        "no-extension": png(images[3]),
        "x.png.bak": png(images[4]),
    }
    with stack.client() as client:
        job_id = submit_zip(client, {**members, "labels.csv": b"a.png,3\n"}, steps=2)
        job = stack.wait_job(client, job_id)
        assert job["status"] == "finished" and job["progress"]["total"] == len(members)
        report = client.get(f"/v1/jobs/{job_id}/report").json()
        assert [row["name"] for row in report["images"]] == list(members)
        result = client.get(f"/v1/jobs/{job_id}/result").content
    with zipfile.ZipFile(io.BytesIO(result)) as archive:
        assert archive.read("labels.csv") == b"a.png,3\n"
        for name, sent in members.items():
            back = archive.read(name)
            assert Image.open(io.BytesIO(back)).format == Image.open(io.BytesIO(sent)).format
            assert back != sent, name


def test_a_single_cmyk_image_comes_back_cmyk(stack, cifar):
    cmyk = io.BytesIO()
    Image.fromarray(cifar["images"][0]).convert("CMYK").save(cmyk, "JPEG")
    with stack.client() as client:
        response = client.post(
            "/v1/purify", files={"files": ("c.jpg", cmyk.getvalue())}, data={"steps": "2"}
        )
    assert response.status_code == 200, response.text
    assert 'filename="c.purified.tif"' in response.headers["content-disposition"]
    back = Image.open(io.BytesIO(response.content))
    assert (back.format, back.mode, back.size) == ("TIFF", "CMYK", (32, 32))


def raw_post(
    port: int,
    headers: dict[str, str],
    body: bytes = b"",
    wait_s: float = 20,
    trickle: int = 0,
) -> str:
    """POST /v1/jobs over a bare socket, sending ``body`` (maybe less than declared)
    and then ``trickle`` more bytes, one every half second, and the status line the
    server answers with, within ``wait_s``."""
    lines = [f"{name}: {value}" for name, value in headers.items()]
    request = "\r\n".join(["POST /v1/jobs HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""])
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        connection.sendall(request.encode() + body)
        for _ in range(trickle):
            time.sleep(0.5)
            connection.sendall(b"x")
        return connection.recv(4096).decode(errors="replace").split("\r\n")[0]


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": "1000000"}


def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(stack):
    """The body never comes: the answer can only be given from the headers."""
    assert raw_post(stack.port, MULTIPART).startswith("HTTP/1.1 401")
    assert raw_post(stack.port, {**MULTIPART, "X-API-Key": "wrong"}).startswith("HTTP/1.1 403")


def test_a_body_that_stalls_is_cut_with_408_and_one_waiting_for_its_turn_gets_503(
    tmp_path, tiny_registry
):
    """One upload may be read at a time here. A slow one (a byte every half second)
    holds the turn for 4 s; the one behind it waits 2 s for it, then gets 503; the
    slow one, once silent for 2 s, is cut with 408."""
    stack = Stack(tmp_path, tiny_registry, body_timeout_s=2, max_uploads_in_flight=1)
    try:
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(
                raw_post, stack.port, {**MULTIPART, "X-API-Key": KEY_A}, b"--b\r\n", 20, 8
            )
            time.sleep(0.5)
            behind = raw_post(stack.port, {**MULTIPART, "X-API-Key": KEY_A})
            assert behind.startswith("HTTP/1.1 503"), behind
            assert slow.result().startswith("HTTP/1.1 408")
        assert stack.job_folders() == []
    finally:
        stack.stop()


def test_an_upload_spools_to_the_data_volume_not_the_system_temp(tmp_path, tiny_registry):
    """A part past the in-memory spool (16 KiB) is written to <data_dir>/spool, where
    the disk admission looks, while its body is still coming."""
    stack = Stack(tmp_path, tiny_registry, body_timeout_s=4)
    try:
        part = b'--b\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\n'
        headers = {**MULTIPART, "X-API-Key": KEY_A}
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(raw_post, stack.port, headers, part + bytes(200_000), 20)

            def spooled() -> list[str]:
                fds = Path(f"/proc/{stack.api.pid}/fd")
                links = [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()]
                return [link for link in links if str(stack.data_dir / "spool") in link]

            Stack.wait_for(lambda: spooled() != [], "a spooled part", 10)
            assert answer.result().startswith("HTTP/1.1 408")  # then it stalls: cut
    finally:
        stack.stop()


def test_admitted_jobs_hold_the_space_they_will_write(tmp_path, tiny_registry, cifar):
    """No worker runs, so admitted jobs stay queued: the first of four 1-Mpx images
    (16 MB of shards, 16 MB of result) fits above a reserve 50 MB under the free
    space; an identical second would fit the space still free, but not beside
    what the first will write: 507. Once the first is deleted, the second fits."""
    flat = png(np.zeros((1000, 1000, 3), np.uint8))
    archive = {"archive": ("f.zip", zip_bytes({f"{i}.png": flat for i in range(4)}))}
    free = shutil.disk_usage(tmp_path).free
    stack = Stack(tmp_path, tiny_registry, disk_reserve_bytes=free - (50 << 20))
    try:
        with stack.client() as client:
            first = client.post("/v1/jobs", files=archive)
            assert first.status_code == 202, first.text
            second = client.post("/v1/jobs", files=archive)
            assert second.status_code == 507, second.text
            assert "held for the jobs admitted before" in second.json()["detail"]
            client.delete(f"/v1/jobs/{first.json()['id']}")
            assert client.post("/v1/jobs", files=archive).status_code == 202
    finally:
        stack.stop()


def test_a_job_the_disk_cannot_hold_is_507_and_readiness_says_so(tmp_path, tiny_registry, cifar):
    """The reserve is set just under the free space: a small job fits above it, one
    whose shards need ~180 MB does not, and with a reserve past the disk every upload
    is refused and /readyz is false."""
    flat = png(np.zeros((1000, 1000, 3), np.uint8))  # a few KB, 3 MB of pixels
    free = shutil.disk_usage(tmp_path).free
    stack = Stack(tmp_path, tiny_registry, disk_reserve_bytes=free - (60 << 20))
    try:
        stack.start_worker()
        with stack.client() as client:
            small = client.post("/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))})
            assert small.status_code == 202, small.text
            large = client.post(
                "/v1/jobs",
                files={"archive": ("l.zip", zip_bytes({f"{i}.png": flat for i in range(60)}))},
            )
            assert large.status_code == 507, large.text
            assert "reserve" in large.json()["detail"]
            assert client.get("/readyz").json()["checks"]["disk"]["ok"]
    finally:
        stack.stop()
    (tmp_path / "full").mkdir()
    stack = Stack(tmp_path / "full", tiny_registry, disk_reserve_bytes=free * 4)
    try:
        stack.start_worker()
        with stack.client() as client:
            refused = client.post("/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))})
            assert refused.status_code == 507 and stack.job_folders() == []
            ready = client.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["disk"]["ok"]
    finally:
        stack.stop()


def test_files_without_extensions_are_images_by_their_content(stack, cifar):
    files = [
        ("files", (name, png(cifar["images"][i]))) for i, name in enumerate(["scan1", "scan2"])
    ]
    with stack.client() as client:
        created = client.post("/v1/jobs", files=files, data={"steps": "1"})
        assert created.status_code == 202, created.text
        job = stack.wait_job(client, created.json()["id"])
        assert job["status"] == "finished" and job["progress"]["total"] == 2
        result = client.get(job["links"]["result"]).content
    with zipfile.ZipFile(io.BytesIO(result)) as archive:
        assert archive.namelist() == ["scan1", "scan2"]
        assert Image.open(io.BytesIO(archive.read("scan1"))).format == "PNG"


def test_a_synchronous_result_keeps_a_name_in_any_script(stack, cifar):
    with stack.client() as client:
        answer = client.post("/v1/purify", files={"files": ("猫.png", png(cifar["images"][0]))})
    assert answer.status_code == 200, answer.text
    assert (
        answer.headers["content-disposition"]
        == "attachment; filename*=utf-8''%E7%8C%AB.purified.png"
    )


def test_a_body_holds_its_turn_only_while_it_is_read(tmp_path, tiny_registry, cifar):
    """One body may be read at a time. A /v1/purify request whose body is in waits for
    its (held) worker; another upload is read and accepted meanwhile."""
    hold = tmp_path / "hold"
    hold.touch()
    stack = Stack(
        tmp_path, tiny_registry, hold_file=hold, max_uploads_in_flight=1, body_timeout_s=2
    )
    try:
        stack.start_worker()
        with stack.client() as client, ThreadPoolExecutor(1) as pool:
            image = {"files": ("a.png", png(cifar["images"][0]))}
            waiting = pool.submit(client.post, "/v1/purify", files=image, data={"steps": "1"})
            stack.wait_for(lambda: stack.job_folders() != [], "the synchronous job")
            time.sleep(3)  # past body_timeout_s: a turn still held would now refuse
            accepted = client.post("/v1/jobs", files=image)
            assert accepted.status_code == 202, accepted.text
            hold.unlink()
            assert waiting.result(timeout=60).status_code == 200
    finally:
        stack.stop()


def test_two_requests_never_share_a_fingerprint_by_running_together():
    """One file whose bytes end like a second part, against the two parts sent apart."""
    params = PurifyParams()

    def upload(name: str, data: bytes) -> UploadFile:
        return UploadFile(io.BytesIO(data), filename=name)

    joined = [upload("a.png", b"AAAA\0b.png\0BBBB")]
    apart = [upload("a.png", b"AAAA"), upload("b.png", b"BBBB")]
    assert request_fingerprint(params, joined, None) != request_fingerprint(params, apart, None)
    assert request_fingerprint(params, apart, None) == request_fingerprint(
        params, [upload("a.png", b"AAAA"), upload("b.png", b"BBBB")], None
    )
    as_archive = request_fingerprint(params, None, upload("z.zip", b"ZZZZ"))
    assert as_archive != request_fingerprint(params, [upload("z.zip", b"ZZZZ")], None)


def test_a_mixed_size_archive_has_each_size_filtered_alike_and_a_warning(stack, cifar):
    """Four 32 px and four 128 px images through the worker's two phases, filter 0.5:
    two of each size purified; the large ones are named in the job's warnings."""
    small = [png(image) for image in cifar["images"][:4]]
    large = [png(image.repeat(4, 0).repeat(4, 1)) for image in cifar["images"][4:8]]
    members = {f"{i}.png": data for i, data in enumerate([*small, *large])}
    with stack.client() as client:
        created = client.post(
            "/v1/jobs",
            files={"archive": ("mixed.zip", zip_bytes(members))},
            data={"steps": "2", "filter": "0.5"},
        )
        assert created.status_code == 202, created.text
        job = stack.wait_job(client, created.json()["id"])
        assert job["status"] == "finished", job
        report = client.get(job["links"]["report"]).json()
    purified = [row["purified"] for row in report["images"]]
    assert sum(purified[:4]) == 2 and sum(purified[4:]) == 2
    (warning,) = job["warnings"]
    assert "4 of 8 images" in warning and "32 px" in warning
