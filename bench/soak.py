"""Soak: many small jobs from concurrent clients against `pureebm serve`, with random
cancels and a worker killed with SIGKILL every few seconds.

    python -m bench.soak [--jobs 1000] [--clients 4] [--workers 2] [--kill-every 20]

Each job is 1-8 CIFAR-10 images in a zip, tar, tar.gz, npz or a single PNG, with
steps 1-5 and a fixed seed; about 5% are canceled soon after submitting. Every
tenth submission is instead a hostile upload from tests/hostile.py (a zip bomb, a
GIF or a zip inside a zip, a sparse tar, a lying npz header, ...), which must get
its 4xx and leave no job (the service runs with tests/hostile.py's LIMITS). Every
finished job's result is compared member by member with the same input purified
in this process by the engine (same model, steps, seed and batch size, so the
same bytes; the images the default model's energy filter left out, as sent).
Prints jobs submitted / finished / failed / canceled / lost (no terminal state
within --deadline), hostile uploads refused as expected / answered otherwise,
images lost or swapped, workers killed, and p50 / p99 seconds from submit to a
terminal state. Writes bench/out/soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from pureebm.client import PureEBMClient, PureEBMError
from pureebm.containers import open_container
from pureebm.pipeline import purifier_for, purify_pictures
from pureebm.purifiers import Overrides
from pureebm.registry import LoadedModel, Registry
from pureebm.requests import resolve_request
from tests.hostile import LIMITS, REFUSED, materialise
from tests.stack import Stack, free_port, worker_pids
from worker.main import default_batch_size

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"
OUT = Path(__file__).parent / "out" / "soak.json"
KINDS = ("zip", "tar", "tar.gz", "npz", "png")


@dataclass
class Spec:
    index: int
    kind: str
    images: np.ndarray  # N x 32 x 32 x 3
    steps: int
    cancel: bool
    hostile: str | None = None  # a case of tests.hostile.REFUSED instead of a job


@dataclass
class Outcome:
    status: str  # finished, failed, canceled, lost; refused / unexpected for a hostile one
    seconds: float
    bad_images: int = 0
    error: str | None = None


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_input(spec: Spec, folder: Path) -> Path:
    names = [f"img{i}.png" for i in range(len(spec.images))]
    if spec.kind == "png":
        path = folder / f"job{spec.index}.png"
        path.write_bytes(png(spec.images[0]))
    elif spec.kind == "npz":
        path = folder / f"job{spec.index}.npz"
        np.savez(path, images=spec.images)
    elif spec.kind == "zip":
        path = folder / f"job{spec.index}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, image in zip(names, spec.images, strict=True):
                archive.writestr(name, png(image))
    else:
        path = folder / f"job{spec.index}.{spec.kind}"
        with tarfile.open(path, "w:gz" if spec.kind == "tar.gz" else "w") as archive:
            for name, image in zip(names, spec.images, strict=True):
                data = png(image)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def images_of(path: Path) -> dict[str, np.ndarray]:
    return {name: picture.rgb for name, picture in open_container(path).iter_images()}


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.killed = 0
        self.stop = threading.Event()
        self.registry = Registry()  # the service's, and its default model
        self.model = self.registry.load(self.registry.default_ref(), "cpu")
        self.batch_size = default_batch_size(torch.device("cpu"))  # the workers' own

    def load(self, ref: str) -> LoadedModel:
        return self.registry.load(ref, "cpu")

    def expected(
        self, path: Path, spec: Spec, seed: int, purified: set[str]
    ) -> dict[str, np.ndarray]:
        """The engine's result for the same input, in this process: the images the
        job's report says its filter purified, purified together in one batch as the
        worker's shard does (an image's noise depends on its seed and position only),
        and the others as sent."""
        ref = self.model.manifest.ref
        resolved = resolve_request(Overrides(steps=spec.steps), ref, self.registry)
        purifier = purifier_for(resolved.purifier, self.model, self.load, "cpu")
        sent = images_of(path)
        chosen = [i for i, name in enumerate(sent) if name in purified]
        pictures = open_container(path).iter_images(chosen)
        results = purify_pictures(purifier, pictures, self.batch_size, seed, chosen)
        return sent | {r.name: r.rgb for r in results}

    def run_hostile(self, client: PureEBMClient, spec: Spec) -> Outcome:
        status, upload, form = REFUSED[spec.hostile]
        started = time.monotonic()
        answer = client.http.post(
            "/v1/jobs", files=materialise(upload, {"images": spec.images}), data=form
        )
        seconds = time.monotonic() - started
        if answer.status_code == status:
            return Outcome("refused", seconds)
        return Outcome("unexpected", seconds, error=f"{spec.hostile}: {answer.status_code}")

    def run_job(self, client: PureEBMClient, spec: Spec) -> Outcome:
        if spec.hostile is not None:
            return self.run_hostile(client, spec)
        path = write_input(spec, self.work / "inputs")
        seed = spec.index
        started = time.monotonic()
        job = client.submit(path, steps=spec.steps, seed=seed)
        if spec.cancel:
            time.sleep(random.uniform(0, 0.5))
            client.cancel(job["id"])  # deleted, whatever state it had reached
            return Outcome("canceled", time.monotonic() - started)
        deadline = started + self.args.deadline
        while time.monotonic() < deadline:
            status = client.job(job["id"])["status"]
            if status in ("finished", "failed", "canceled"):
                break
            time.sleep(0.5)
        else:
            return Outcome("lost", time.monotonic() - started)
        seconds = time.monotonic() - started
        if status != "finished":
            return Outcome(status, seconds, error=client.job(job["id"]).get("error"))
        result = client.download(job["id"], self.work / "results" / path.name)
        purified = {row["name"] for row in client.report(job["id"])["images"] if row["purified"]}
        got, want = images_of(result), self.expected(path, spec, seed, purified)
        bad = sum(
            name not in got or not np.array_equal(got[name], pixels)
            for name, pixels in want.items()
        )
        return Outcome("finished", seconds, bad_images=bad + len(set(got) - set(want)))

    def kill_workers(self, serve: subprocess.Popen) -> None:
        rng = random.Random(1)
        while not self.stop.wait(self.args.kill_every):
            with contextlib.suppress(OSError):  # a worker may exit as it is listed
                pids = worker_pids(serve.pid)
                if not pids:
                    continue
                os.kill(rng.choice(pids), signal.SIGKILL)
                self.killed += 1


def start_serve(args: argparse.Namespace, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUREEBM_")},
        "PUREEBM_DATA_DIR": str(work / "data"),
        "PUREEBM_WORKER_LEASE_S": "3",
        "PUREEBM_WORKER_RESTARTS": "1000000",  # the soak kills workers on purpose
        "PUREEBM_MAX_ACTIVE_JOBS_PER_KEY": str(args.clients * 2),
        "PUREEBM_LOG_LEVEL": "WARNING",
        **{f"PUREEBM_{name.upper()}": str(value) for name, value in LIMITS.items()},
    }
    log = (work / "serve.log").open("wb")
    argv = [sys.executable, "-m", "pureebm", "serve", "--port", str(port)]
    argv += ["--workers", str(args.workers), "--device", "cpu"]
    serve = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    Stack.wait_for(lambda: httpx.get(f"{url}/readyz").is_success, "serve", timeout=120)
    return serve, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per job")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with np.load(DATA) as npz:
        pool = npz["images"]
    specs = [
        Spec(
            i,
            KINDS[i % len(KINDS)],
            pool[rng.choice(len(pool), 1 if i % len(KINDS) == 4 else int(rng.integers(1, 9)))],
            int(rng.integers(1, 6)),
            bool(rng.random() < 0.05),
        )
        for i in range(args.jobs)
    ]
    hostile = sorted(REFUSED)
    for spec in specs[9::10]:
        spec.hostile = hostile[int(rng.integers(len(hostile)))]
        spec.images = pool[rng.choice(len(pool), 24)]  # "too many files" sends 21
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "inputs").mkdir()
        (work / "results").mkdir()
        serve, url = start_serve(args, work)
        soak = Soak(args, work)
        killer = threading.Thread(target=soak.kill_workers, args=(serve,), daemon=True)
        started = time.monotonic()
        killer.start()
        outcomes: list[Outcome] = []
        try:
            clients = [PureEBMClient(url, timeout=120) for _ in range(args.clients)]

            def run(spec: Spec) -> Outcome:
                try:
                    return soak.run_job(clients[spec.index % args.clients], spec)
                except (PureEBMError, httpx.HTTPError) as e:
                    return Outcome("failed", float("nan"), error=f"client: {e}")

            with ThreadPoolExecutor(args.clients) as pool_:
                for n, outcome in enumerate(pool_.map(run, specs), 1):
                    outcomes.append(outcome)
                    if n % 50 == 0:
                        print(f"{n}/{args.jobs} jobs, {soak.killed} workers killed", flush=True)
        finally:
            soak.stop.set()
            serve.send_signal(signal.SIGINT)
            serve.wait(timeout=60)
        wall_s = time.monotonic() - started
    seconds = np.array(
        [o.seconds for o in outcomes if o.status in ("finished", "failed", "canceled")]
    )
    states = ("finished", "failed", "canceled", "refused", "unexpected")
    counts = {s: sum(o.status == s for o in outcomes) for s in states}
    figures = {
        "jobs_submitted": len(outcomes),
        **{f"jobs_{status}": count for status, count in counts.items()},
        "jobs_lost": sum(o.status == "lost" for o in outcomes),
        "images_lost_or_swapped": sum(o.bad_images for o in outcomes),
        "workers_killed": soak.killed,
        "p50_s": float(np.nanpercentile(seconds, 50)),
        "p99_s": float(np.nanpercentile(seconds, 99)),
        "wall_s": wall_s,
        "settings": vars(args),
        "errors": sorted({o.error for o in outcomes if o.error})[:10],
    }
    print(json.dumps(figures, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
