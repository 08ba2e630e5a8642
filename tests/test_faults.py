"""Fault injection: real processes killed with SIGKILL, Valkey stopped mid-job, a
shard that fails every time, and the embedded worker of `pureebm serve` killed.
Every job must end (finished with every image exactly once, or failed with a
reason), never stay `running`."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from redis import Redis
from redis.exceptions import NoPermissionError, RedisError
from rq import Queue, Worker
from rq.job import Job

from jobs.keys import BATCH_LANES
from tests.stack import (
    Stack,
    check_every_image_once,
    children_running,
    free_port,
    png,
    submit_zip,
    worker_pids,
)

IMAGES = 24  # six shards of four


def cifar_members(cifar, count: int = IMAGES) -> dict[str, bytes]:
    return {f"part{i % 3}/{i:02d}.png": png(cifar["images"][i]) for i in range(count)}


def wait_until_busy_with(stack: Stack, worker: subprocess.Popen, suffix: str) -> None:
    queue = Queue(BATCH_LANES[0], connection=stack.redis)

    def busy() -> bool:
        return any(
            w.pid == worker.pid and (w.get_current_job_id() or "").endswith(suffix)
            for w in Worker.all(queue=queue)
        )

    stack.wait_for(busy, f"the worker to be inside a job ending in {suffix!r}")


def kill(process: subprocess.Popen | int) -> None:
    pid = process if isinstance(process, int) else process.pid
    os.kill(pid, signal.SIGKILL)
    if not isinstance(process, int):
        process.wait()


def held_stack(tmp_path: Path, registry: Path, **settings: object) -> tuple[Stack, Path]:
    """A stack whose workers pause inside each shard and finaliser until the returned
    file is deleted (Settings.hold_file): a worker is killed at a known point,
    however fast or slow this machine is."""
    hold = tmp_path / "hold"
    hold.touch()
    return Stack(tmp_path, registry, hold_file=hold, **settings), hold


def test_a_worker_killed_mid_shard_loses_nothing(tmp_path, tiny_registry, cifar):
    stack, hold = held_stack(tmp_path, tiny_registry)
    try:
        victim = stack.start_worker()
        with stack.client() as client:
            members = cifar_members(cifar)
            job_id = submit_zip(client, members, steps=2)
            wait_until_busy_with(stack, victim, "-shard-0")
            kill(victim)
            hold.unlink()
            stack.start_worker()  # the survivor: takes the retried shard and the rest
            job = stack.wait_job(client, job_id, timeout=300)
            assert job["status"] == "finished", job["error"]
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
            report = client.get(f"/v1/jobs/{job_id}/report").json()
            assert [r["name"] for r in report["images"]] == list(members)
        shards = [Job.fetch(f"{job_id}-shard-{i}", connection=stack.redis) for i in range(6)]
        retried = [j for j in shards if j.retries_left is not None and j.retries_left < 3]
        assert len(retried) == 1  # exactly the shard the killed worker held
    finally:
        stack.stop()


def test_a_worker_killed_mid_shard_of_a_filtered_job_loses_nothing(tmp_path, tiny_registry, cifar):
    """Both phases survive: the killed purification shard is retried elsewhere, and
    the result holds each image once, purified exactly where the report says."""
    stack, hold = held_stack(tmp_path, tiny_registry)
    try:
        victim = stack.start_worker()
        with stack.client() as client:
            members = cifar_members(cifar)
            job_id = submit_zip(client, members, steps=2, filter="0.5")
            wait_until_busy_with(stack, victim, "-shard-0")
            kill(victim)
            hold.unlink()
            stack.start_worker()
            job = stack.wait_job(client, job_id, timeout=300)
            assert job["status"] == "finished", job["error"]
            result = client.get(f"/v1/jobs/{job_id}/result").content
            report = client.get(f"/v1/jobs/{job_id}/report").json()
        assert report["purified"] == IMAGES // 2
        with zipfile.ZipFile(io.BytesIO(result)) as archive:
            assert archive.namelist() == list(members)
            for row in report["images"]:
                unchanged = archive.read(row["name"]) == members[row["name"]]
                assert unchanged != row["purified"], row
    finally:
        stack.stop()


def test_a_scoring_shard_that_fails_every_time_fails_the_filtered_job(
    tmp_path, tiny_registry, cifar
):
    stack = Stack(tmp_path, tiny_registry, shard_retries=1)
    try:
        with stack.client() as client:
            job_id = submit_zip(client, cifar_members(cifar, 8), steps=1, filter="0.5")
            shutil.rmtree(stack.data_dir / "jobs" / job_id / "input")
            (stack.data_dir / "jobs" / job_id / "decoded.npz").unlink(missing_ok=True)
            stack.start_worker()
            job = stack.wait_job(client, job_id)
            assert job["status"] == "failed"
            assert "scoring shard" in job["error"], job["error"]
    finally:
        stack.stop()


def test_a_worker_killed_while_finalising_loses_nothing(tmp_path, tiny_registry, cifar):
    stack, hold = held_stack(tmp_path, tiny_registry)
    hold.write_text("finalize")  # the shards run through
    try:
        victim = stack.start_worker()
        with stack.client() as client:
            members = cifar_members(cifar, 8)
            job_id = submit_zip(client, members, steps=1)
            wait_until_busy_with(stack, victim, "-finalize")
            kill(victim)
            hold.unlink()
            stack.start_worker()
            job = stack.wait_job(client, job_id, timeout=300)
            assert job["status"] == "finished", job["error"]
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
        finaliser = Job.fetch(f"{job_id}-finalize", connection=stack.redis)
        assert finaliser.retries_left < 3  # it was retried, not run once
    finally:
        stack.stop()


def test_a_shard_that_fails_every_time_fails_the_job_with_its_reason(
    tmp_path, tiny_registry, cifar
):
    """The job's stored input disappears after validation: every attempt of every
    shard raises, the retries are spent, and the job fails saying why."""
    stack = Stack(tmp_path, tiny_registry, shard_retries=1)
    try:
        with stack.client() as client:
            job_id = submit_zip(client, cifar_members(cifar, 8), steps=1)
            shutil.rmtree(stack.data_dir / "jobs" / job_id / "input")
            stack.start_worker()
            job = stack.wait_job(client, job_id)
            assert job["status"] == "failed"
            assert "shard" in job["error"] and "No such file" in job["error"]
            assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409
            assert job_id not in stack.job_folders()  # its files are freed at once
    finally:
        stack.stop()


def test_a_finaliser_that_keeps_failing_is_retried_then_fails_the_job(
    tmp_path, tiny_registry, cifar
):
    """The job's result folder is replaced by a file before the finaliser runs, so
    writing the result raises. The finaliser is retried (SHARD_RETRIES = 1 here)
    and then the job is failed with the reason, never left running."""
    stack = Stack(tmp_path, tiny_registry, shard_retries=1)
    try:
        stack.start_worker()
        with stack.client() as client:
            job_id = submit_zip(client, cifar_members(cifar), steps=300)
            result_dir = stack.data_dir / "jobs" / job_id / "result"
            shutil.rmtree(result_dir, ignore_errors=True)
            result_dir.write_bytes(b"not a folder")
            job = stack.wait_job(client, job_id)
            assert job["status"] == "failed"
            assert "finalising failed" in job["error"]
        finaliser = Job.fetch(f"{job_id}-finalize", connection=stack.redis)
        # the job is failed inside the last attempt; RQ records that attempt just after
        stack.wait_for(lambda: finaliser.get_status() == "failed", "RQ to record the failure")
        finaliser.refresh()
        assert finaliser.retries_left == 0
    finally:
        stack.stop()


def test_a_canceled_job_frees_its_worker_mid_chain(tmp_path, tiny_registry, cifar):
    """One 1-megapixel image at T = 2,000 holds the only worker for many minutes;
    deleting the job stops the chain at its next step's check, and the worker takes
    the next job at once."""
    stack = Stack(tmp_path, tiny_registry)
    try:
        worker = stack.start_worker()
        large = np.tile(cifar["images"][0], (32, 32, 1))  # 1024 x 1024
        with stack.client() as client:
            created = client.post(
                "/v1/jobs", files={"files": ("large.png", png(large))}, data={"steps": "2000"}
            )
            assert created.status_code == 202, created.text
            wait_until_busy_with(stack, worker, "-shard-0")
            assert client.delete(f"/v1/jobs/{created.json()['id']}").status_code == 200
            next_job = submit_zip(client, cifar_members(cifar, 1), steps=1)
            job = stack.wait_job(client, next_job, timeout=60)
            assert job["status"] == "finished", job["error"]
    finally:
        stack.stop()


def test_a_finaliser_that_meets_a_corrupt_input_fails_the_job_at_once(
    tmp_path, tiny_registry, cifar
):
    """A stored member of the input is corrupted on disk after its shards ran: the
    finaliser's error is the input's, the same on every attempt, so the job fails
    with it at once and the finaliser is not retried."""
    stack, hold = held_stack(tmp_path, tiny_registry)
    hold.write_text("finalize")
    try:
        stack.start_worker()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("a.png", png(cifar["images"][0]))
            archive.writestr("labels.txt", b"7\n" * 50_000)
        with stack.client() as client:
            created = client.post("/v1/jobs", files={"archive": ("set.zip", buffer.getvalue())})
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            stack.wait_for(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["done"] == 1,
                "the shard",
                120,
            )
            stored = stack.data_dir / "jobs" / job_id / "input" / "set.zip"
            data = bytearray(stored.read_bytes())
            data[data.find(b"7\n7\n") + 50_000] ^= 1
            stored.write_bytes(bytes(data))
            hold.unlink()
            job = stack.wait_job(client, job_id)
            assert job["status"] == "failed" and "CRC" in job["error"], job
        finaliser = Job.fetch(f"{job_id}-finalize", connection=stack.redis)
        assert finaliser.retries_left == 3  # not one retry spent
    finally:
        stack.stop()


def test_valkey_stopped_and_restarted_mid_job(tmp_path, tiny_registry, cifar):
    """Valkey (persistent) goes away for 3 s while a shard runs; the worker lives
    through it, reconnects, and the job finishes with every image purified once."""
    stack, hold = held_stack(tmp_path, tiny_registry, persist=True, cleanup_interval_s=1)
    try:
        worker = stack.start_worker()
        with stack.client() as client:
            members = cifar_members(cifar)
            job_id = submit_zip(client, members, steps=2)
            wait_until_busy_with(stack, worker, "-shard-0")
            stack.restart_valkey(down_s=3)
            hold.unlink()
            job = stack.wait_job(client, job_id, timeout=300)
            assert job["status"] == "finished", job
            check_every_image_once(client.get(f"/v1/jobs/{job_id}/result").content, members)
            assert worker.poll() is None  # the worker lived through the outage
            after = submit_zip(client, cifar_members(cifar, 2), steps=1)
            assert stack.wait_job(client, after)["status"] == "finished"
    finally:
        stack.stop()


def test_readiness_and_sync_purify_notice_a_killed_worker_by_its_heartbeat(
    tmp_path, tiny_registry, cifar
):
    """kill -9 leaves the worker's registration in Redis for its TTL (17 s here);
    readiness and the workers gauge count only fresh heartbeats (2 leases = 4 s)
    and notice sooner."""
    stack = Stack(tmp_path, tiny_registry, worker_lease_s=2)
    try:
        worker = stack.start_worker()
        with stack.client() as client:
            stack.wait_for(lambda: client.get("/readyz").status_code == 200, "a live worker")
            kill(worker)
            assert Worker.all(connection=stack.redis)  # still registered
            stack.wait_for(
                lambda: client.get("/readyz").status_code == 503, "readiness to drop", timeout=12
            )
            assert client.get("/readyz").json()["checks"]["workers"]["alive"] == 0
            assert "pureebm_workers 0.0" in client.get("/metrics").text  # so does the gauge
            image = {"files": ("a.png", png(cifar["images"][0]))}
            assert client.post("/v1/purify", files=image).status_code == 503
    finally:
        stack.stop()


def test_serve_restarts_its_killed_worker_then_gives_up_visibly(tmp_path, tiny_registry, cifar):
    """`pureebm serve` with one allowed restart: the first kill -9 is repaired and a
    job queued meanwhile finishes; after the second, serve gives up, says so, and
    /readyz turns false."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    serve = start_serve(tmp_path, tiny_registry, port, log_path, worker_restarts=1)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return httpx.get(f"{url}/readyz").status_code == 200

    try:
        Stack.wait_for(ready, "serve to be ready")
        [first] = worker_pids(serve.pid)
        kill(first)
        # really down before the job comes: a dying worker's connection could still
        # take it off the queue, and RQ returns such a job only after a minute
        Stack.wait_for(lambda: first not in worker_pids(serve.pid), "the worker to die", 30)
        # and its replacement spawned (it takes seconds to listen): the job still comes
        # while no worker listens, but well after Valkey dropped the dead connection
        Stack.wait_for(
            lambda: log_path.read_text().count('"worker started"') >= 2, "a replacement", 30
        )
        with httpx.Client(base_url=url, timeout=60) as client:
            job_id = submit_zip(client, cifar_members(cifar, 4), steps=2)
            Stack.wait_for(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "finished",
                "the job queued while the worker was down",
            )
            [second] = worker_pids(serve.pid)
            assert second != first
            kill(second)
            Stack.wait_for(lambda: not ready(), "readiness to drop", timeout=20)
            Stack.wait_for(lambda: "giving up" in log_path.read_text(), "the give-up line")
            assert worker_pids(serve.pid) == []
        text = log_path.read_text()
        assert "restarting it in 1 s" in text and "killed by SIGKILL" in text
    finally:
        stop_serve(serve)


def start_serve(
    tmp_path: Path, registry: Path, port: int, log_path: Path, **settings: object
) -> subprocess.Popen:
    """`pureebm serve` on the embedded default, its data in ``tmp_path/data``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUREEBM_")},
        "PUREEBM_DATA_DIR": str(tmp_path / "data"),
        "PUREEBM_REGISTRY": str(registry),
        "PUREEBM_DEFAULT_MODEL": "tiny",
        "PUREEBM_WORKER_LEASE_S": "2",
        "PUREEBM_LOG_LEVEL": "INFO",
        **{f"PUREEBM_{k.upper()}": str(v) for k, v in settings.items()},
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pureebm", "serve", "--port", str(port), "--device", "cpu"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_serve(serve: subprocess.Popen) -> None:
    serve.send_signal(signal.SIGINT)
    try:
        serve.wait(timeout=30)
    except subprocess.TimeoutExpired:
        serve.kill()
        serve.wait()


def serves_valkey(folder: Path, log_path: Path) -> Redis:
    """A client of serve's Valkey, with the password only its user can read."""
    port = re.findall(r"embedded Valkey on 127\.0\.0\.1:(\d+)", log_path.read_text())[-1]
    password = (folder / "password").read_text().strip()
    assert (folder / "password").stat().st_mode & 0o077 == 0
    return Redis.from_url(f"redis://pureebm:{password}@127.0.0.1:{port}")


def answers(redis: Redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisError:
        return False


def anonymous_can_write(redis: Redis) -> bool:
    anonymous = Redis(port=redis.connection_pool.connection_kwargs["port"])
    try:
        anonymous.set("anonymous", "1")
        return True
    except NoPermissionError:
        return False


def valkeys_in(folder: Path) -> list[int]:
    """The valkey-server processes working in ``folder``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            cwd = Path(os.readlink(proc / "cwd"))
        except (OSError, ValueError):
            continue
        if b"valkey-server" in command and cwd == folder:
            pids.append(int(proc.name))
    return pids


def test_no_file_of_a_job_or_of_serves_valkey_is_readable_by_other_users(
    tmp_path, tiny_registry, cifar
):
    """With a permissive umask (022), a job's upload, shards, result and report, and
    Valkey's append-only files, are still 0600 in folders of 0700."""
    port, log_path = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    previous = os.umask(0o022)
    try:
        serve = start_serve(tmp_path, tiny_registry, port, log_path, retention_s=3600)
    finally:
        os.umask(previous)
    try:
        Stack.wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "serve")
        with httpx.Client(base_url=url, timeout=60) as client:
            job_id = submit_zip(client, cifar_members(cifar, 4), steps=2, filter="0.5")
            status = lambda: client.get(f"/v1/jobs/{job_id}").json()["status"]  # noqa: E731
            Stack.wait_for(lambda: status() in ("finished", "failed"), "the job")
            assert status() == "finished"
        data = tmp_path / "data"
        paths = [data, *data.rglob("*")]
        assert any("appendonly" in p.name for p in paths)  # Valkey's files are among them
        assert any(p.name == "report.json" for p in paths)
        readable = [f"{oct(p.stat().st_mode)} {p}" for p in paths if p.stat().st_mode & 0o077]
        assert readable == []
    finally:
        stop_serve(serve)


def test_serves_valkey_is_restarted_on_its_data_and_one_folder_has_one_valkey(
    tmp_path, tiny_registry, cifar
):
    """kill -9 of the embedded Valkey: restarted on its append-only file (a key written
    before survives, no zombie is left) and jobs run again. A second serve on the
    folder refuses to start. kill -9 of serve: its worker and its Valkey die with it.
    kill -9 of serve and its Valkey watchdog: the next serve stops the orphan first."""
    port, log_path = free_port(), tmp_path / "serve.log"
    folder = tmp_path / "data" / "valkey"
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(tmp_path, tiny_registry, port, log_path)
    try:
        Stack.wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "serve")
        [valkey] = valkeys_in(folder)
        redis = serves_valkey(folder, log_path)
        assert not anonymous_can_write(redis)  # only serve's own user may queue work
        redis.set("written-before", "1")
        redis.bgrewriteaof()  # on disk now, not at the next fsync
        Stack.wait_for(lambda: redis.info("persistence")["aof_rewrite_in_progress"] == 0, "AOF")
        kill(valkey)
        Stack.wait_for(lambda: valkeys_in(folder) not in ([], [valkey]), "a new Valkey", 30)
        assert not Path(f"/proc/{valkey}").exists()  # reaped, not a zombie
        Stack.wait_for(lambda: answers(redis), "the new Valkey to answer", 30)
        assert redis.get("written-before") == b"1"
        assert httpx.get(f"{url}/healthz").status_code == 200
        with httpx.Client(base_url=url, timeout=60) as client:
            job_id = submit_zip(client, cifar_members(cifar, 4), steps=2)
            Stack.wait_for(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "finished",
                "a job after the restart",
                120,
            )
        second = start_serve(tmp_path, tiny_registry, free_port(), tmp_path / "second.log")
        assert second.wait(timeout=60) != 0
        assert "another `pureebm serve` is running" in (tmp_path / "second.log").read_text()
        [worker] = worker_pids(serve.pid)
        kill(serve)  # its worker and its Valkey die with it
        Stack.wait_for(lambda: not Path(f"/proc/{worker}").exists(), "the worker to die", 30)
        Stack.wait_for(lambda: valkeys_in(folder) == [], "its Valkey to be stopped", 30)
        serve = start_serve(tmp_path, tiny_registry, port, log_path)
        Stack.wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "serve again")
        assert serves_valkey(folder, log_path).get("written-before") == b"1"
        [orphan] = valkeys_in(folder)
        [watchdog] = children_running(serve.pid, b"service.orphans")
        kill(watchdog)  # the watchdog goes first
        kill(serve)
        assert valkeys_in(folder) == [orphan]  # nothing left to stop it
        serve = start_serve(tmp_path, tiny_registry, port, log_path)
        Stack.wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "a third serve")
        [fresh] = valkeys_in(folder)
        assert fresh != orphan
        assert "stopping the Valkey a previous serve left running" in log_path.read_text()
        assert serves_valkey(folder, log_path).get("written-before") == b"1"
    finally:
        stop_serve(serve)


def test_a_hung_valkey_is_503_not_500_and_the_api_recovers(tmp_path, tiny_registry, cifar):
    stack = Stack(tmp_path, tiny_registry, redis_timeout_s=1)
    valkey_pid = stack.redis.info("server")["process_id"]
    try:
        with stack.client() as client:
            os.kill(valkey_pid, signal.SIGSTOP)
            try:
                answers = [
                    client.post("/v1/jobs", files={"files": ("a.png", png(cifar["images"][0]))}),
                    client.get("/v1/jobs"),
                    client.get("/metrics"),
                    client.get("/readyz"),
                ]
            finally:
                os.kill(valkey_pid, signal.SIGCONT)
            assert [a.status_code for a in answers] == [503] * 4, [a.text for a in answers]
            assert "not answering" in answers[0].json()["detail"]
            assert stack.job_folders() == []
            assert client.get("/v1/jobs").status_code == 200
    finally:
        stack.stop()


def test_a_hung_valkey_blocks_no_request_behind_another(tmp_path, tiny_registry, cifar):
    """Four submissions and a sync purify wait on a frozen Valkey at once: each is a
    503 after its own REDIS_TIMEOUT_S (3 s), together, not one after another (15 s),
    and /healthz answers meanwhile, since no Redis call runs on the event loop. The
    API recovers when Valkey does."""
    stack = Stack(tmp_path, tiny_registry, redis_timeout_s=3)
    stack.start_worker()
    valkey_pid = stack.redis.info("server")["process_id"]
    image = {"files": ("a.png", png(cifar["images"][0]))}
    try:
        with stack.client() as client, ThreadPoolExecutor(5) as pool:
            assert client.get("/readyz").status_code == 200
            os.kill(valkey_pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                posts = [pool.submit(client.post, "/v1/jobs", files=image) for _ in range(4)]
                posts.append(pool.submit(client.post, "/v1/purify", files=image))
                time.sleep(1)
                assert client.get("/healthz").status_code == 200
                assert not all(p.done() for p in posts)  # answered while they still wait
                answers = [p.result(timeout=60) for p in posts]
                waited = time.monotonic() - started
            finally:
                os.kill(valkey_pid, signal.SIGCONT)
            assert [a.status_code for a in answers] == [503] * 5, [a.text for a in answers]
            assert waited < 12, waited  # one after another would take 15 s
            assert stack.job_folders() == []
            assert client.post("/v1/jobs", files=image).status_code == 202
    finally:
        stack.stop()


def test_a_sync_purify_whose_worker_dies_answers_503_not_a_hang(tmp_path, tiny_registry, cifar):
    """The worker is killed while it holds the request's shard: the waiting request
    notices within two leases (4 s here) and answers 503, not 504 after a minute."""
    stack, _ = held_stack(tmp_path, tiny_registry, worker_lease_s=2, sync_timeout_s=60)
    try:
        worker = stack.start_worker()
        with stack.client() as client, ThreadPoolExecutor(1) as pool:
            image = {"files": ("a.png", png(cifar["images"][0]))}
            answer = pool.submit(client.post, "/v1/purify", files=image, data={"steps": "1"})
            wait_until_busy_with(stack, worker, "-shard-0")
            kill(worker)
            started = time.monotonic()
            response = answer.result(timeout=60)
            assert response.status_code == 503, response.text
            assert "no live worker" in response.json()["detail"]
            assert time.monotonic() - started < 30
        assert stack.job_folders() == []
    finally:
        stack.stop()


def test_a_sync_purify_past_its_timeout_answers_504_naming_the_jobs_route(
    tmp_path, tiny_registry, cifar
):
    """The worker holds the request's shard past sync_timeout_s (2 s): 504, the work
    canceled, and the answer says where long work goes."""
    stack, hold = held_stack(tmp_path, tiny_registry, sync_timeout_s=2)
    try:
        stack.start_worker()
        with stack.client() as client:
            image = {"files": ("a.png", png(cifar["images"][0]))}
            response = client.post("/v1/purify", files=image, data={"steps": "1"})
        assert response.status_code == 504, response.text
        assert "/v1/jobs" in response.json()["detail"]
        hold.unlink()
        stack.wait_for(lambda: stack.job_folders() == [], "the canceled job's folder to go")
    finally:
        stack.stop()
