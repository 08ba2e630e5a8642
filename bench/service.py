"""Engine vs service: the same zip purified in-process and end to end through the service.

    python -m bench.service [--images 256] [--steps 150]

Builds a zip of N held-out CIFAR-10 PNGs, purifies it (1) with the engine in this
process and (2) through `pureebm serve` started as a subprocess on the embedded
default (Valkey, one worker, the API on 127.0.0.1): upload, queue, worker,
finalise, download. Prints images/s for both and their ratio. Run it on an
otherwise idle machine: the two runs share its cores one after the other.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pureebm.archives import open_container
from pureebm.client import PureEBMClient
from pureebm.langevin import resolve_device
from pureebm.pipeline import purify_container
from pureebm.registry import Registry
from service.settings import Settings
from tests.stack import free_port
from worker.main import default_batch_size

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"


def make_zip(path: Path, images: np.ndarray) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for i, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            archive.writestr(f"images/{i:05d}.png", buffer.getvalue())


def through_service(src: Path, dst: Path, workdir: Path, steps: int | None) -> float:
    port = free_port()
    env = {
        **os.environ,
        "PUREEBM_PORT": str(port),
        "PUREEBM_DATA_DIR": str(workdir / "data"),
        "PUREEBM_LOG_LEVEL": "WARNING",
    }
    env.pop("PUREEBM_REDIS_URL", None)
    serve = subprocess.Popen([sys.executable, "-m", "pureebm", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError("the service did not become ready")
        with PureEBMClient(url) as client:
            started = time.perf_counter()
            client.purify(src, dst, steps=steps, seed=0)
            return time.perf_counter() - started
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, help="default: the model's (T=150)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/service.json"))
    args = parser.parse_args()

    with np.load(args.data, allow_pickle=False) as npz:
        images = npz["images"][-args.images :]
    device = resolve_device("auto")
    settings = Settings()  # the same registry and default model as the service
    model = Registry(settings.registry).load(settings.default_model, device)
    params = model.manifest.langevin
    if args.steps is not None:
        params = type(params)(steps=args.steps, eps=params.eps, tau=params.tau)
    batch = default_batch_size(device)  # what the service's worker uses on this device

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "set.zip"
        make_zip(src, images)
        started = time.perf_counter()
        purify_container(
            open_container(src), work / "engine.zip", model, params, batch, device, seed=0
        )
        engine_s = time.perf_counter() - started
        service_s = through_service(src, work / "service.zip", work, args.steps)
        with zipfile.ZipFile(work / "engine.zip") as a, zipfile.ZipFile(work / "service.zip") as b:
            assert a.namelist() == b.namelist(), "the service changed the members"

    n = len(images)
    figures = {
        "images": n,
        "steps": params.steps,
        "device": str(device),
        "batch_size": batch,
        "engine_images_per_s": n / engine_s,
        "service_images_per_s": n / service_s,
        "service_over_engine": engine_s / service_s,
        "engine_s": engine_s,
        "service_s": service_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"{n} images, T={params.steps}, {device}, batch {batch}")
    print(f"engine   {n / engine_s:8.2f} images/s  ({engine_s:.1f} s)")
    print(f"service  {n / service_s:8.2f} images/s  ({service_s:.1f} s, upload to download)")
    print(f"ratio    {engine_s / service_s:8.3f}  (service / engine throughput)")


if __name__ == "__main__":
    main()
