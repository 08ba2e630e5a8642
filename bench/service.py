"""Engine vs service: the same zip purified in-process and end to end through the
service, with where the service's time goes.

    python -m bench.service [--images 4660] [--steps 0] [--mixed | --side 150] [--repeat 3]

Builds a zip of N images: CIFAR-10 PNGs cycled from the shared set, or with
--mixed, JPEGs of varied sizes (each a shared image upscaled to 32-256 px a side,
like a folder of photographs), or with --side, JPEGs all of one size. Purifies
it (1) with the engine in this process (`pureebm purify`'s path) and (2) through
`pureebm serve` started as a subprocess on the embedded default (Valkey, one
worker, the API on 127.0.0.1). Prints images/s and megapixels/s for both, their
ratio, and the service's phases from its own timers (the API's and the worker's
JSON log lines): upload, validate, queue wait, decode, model, shard write,
finalise, download; and the engine's phases from the same timers. --steps 0
leaves almost nothing but the work around the chain. --repeat N alternates
engine and service runs N times and reports each figure's median and range
(a shared 2-core machine varies by 10-20% from run to run). Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pureebm.client import PureEBMClient
from pureebm.concurrency import Phases
from pureebm.containers import open_container
from pureebm.langevin import resolve_device
from pureebm.pipeline import purifier_for, purify_container, scorer_for
from pureebm.purifiers import Overrides
from pureebm.registry import LoadedModel, Registry
from pureebm.requests import resolve_request
from service.settings import Settings
from tests.stack import Stack, free_port
from worker.main import default_batch_size

RATES = (
    "engine_images_per_s",
    "service_images_per_s",
    "service_over_engine",
    "engine_megapixels_per_s",
    "service_megapixels_per_s",
)
DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"


def encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def make_zip(path: Path, pool: np.ndarray, count: int, mixed: bool, side: int | None) -> int:
    """Writes the zip; returns its images' total pixel count."""
    rng = np.random.default_rng(0)
    pixels = 0
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            image = pool[i % len(pool)]
            if mixed or side:
                height = side or int(rng.integers(32, 257))
                width = side or int(height * rng.uniform(0.75, 1.33))
                image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
                archive.writestr(f"photos/{i:06d}.jpg", encoded(image, "JPEG"))
            else:
                archive.writestr(f"images/{i:06d}.png", encoded(image, "PNG"))
            pixels += image.shape[0] * image.shape[1]
    return pixels


def log_records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def through_service(
    src: Path, dst: Path, workdir: Path, steps: int | None, model: str | None
) -> dict[str, float]:
    """``model``: the service's default model (None: its registry's DEFAULT)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUREEBM_")},
        "PUREEBM_PORT": str(port),
        "PUREEBM_DATA_DIR": str(workdir / "data"),
        "PUREEBM_LOG_LEVEL": "INFO",
        **({"PUREEBM_DEFAULT_MODEL": model} if model else {}),
    }
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "pureebm", "serve"], env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        Stack.wait_for(lambda: httpx.get(f"{url}/readyz").is_success, "the service", 120)
        with PureEBMClient(url, timeout=3600) as client:
            started = time.perf_counter()
            job = client.submit(src, steps=steps, seed=0)
            upload_s = time.perf_counter() - started
            job = client.wait(job["id"], poll_s=0.2)
            waited = time.perf_counter()
            client.download(job["id"], dst)
            download_s = time.perf_counter() - waited
            total_s = time.perf_counter() - started
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
    records = [r for r in log_records(log_path) if r.get("job_id") == job["id"]]
    shards = Counter[str]()
    for record in records:
        if record["message"] == "shard done":
            shards.update({k: v for k, v in record.items() if k.endswith("_s")})
    [queued] = [r for r in records if r["message"] == "job queued"]
    [finished] = [r for r in records if r["message"] == "job finished"]
    return {
        "upload_s": upload_s - queued["validate_s"],
        "validate_s": queued["validate_s"],
        "queue_wait_s": job["timings"]["queued_s"],
        "decode_s": shards["decode_s"],
        "model_s": shards["model_s"],
        "shard_write_s": shards["write_s"],
        "finalize_s": finished["finalize_s"],
        "download_s": download_s,
        "total_s": total_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=256, help="cycled from the shared set")
    parser.add_argument("--steps", type=int, help="default: the model's")
    parser.add_argument("--model", help="NAME[:VERSION] (default: the service's default model)")
    parser.add_argument("--mixed", action="store_true", help="JPEGs of varied sizes")
    parser.add_argument("--side", type=int, help="JPEGs all SIDE x SIDE (a same-size set)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate engine and service runs")
    parser.add_argument("--out", type=Path, default=Path("bench/out/service.json"))
    args = parser.parse_args()

    with np.load(args.data, allow_pickle=False) as npz:
        pool = npz["images"]
    device = resolve_device("auto")
    settings = Settings()  # the same registry as the service
    registry = Registry(settings.registry)
    try:  # the request the service resolves: its filter and the preset's values too
        resolved = resolve_request(
            Overrides(steps=args.steps), args.model, registry, settings.default_model
        )
    except ValueError as e:
        parser.error(str(e))

    def load(ref: str) -> LoadedModel:
        return registry.load(ref, device)

    model = None if resolved.model is None else load(resolved.model)
    purifier = purifier_for(resolved.purifier, model, load, device)
    scorer = None if resolved.filter is None else scorer_for(model, device)
    threshold = None if model is None else model.manifest.energy_threshold
    steps = getattr(resolved.purifier, "steps", None)
    batch = default_batch_size(device)  # what the service's worker uses on this device

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "set.zip"
        pixels = make_zip(src, pool, args.images, args.mixed, args.side)
        for _ in range(args.repeat):
            engine_phases = Phases()
            started = time.perf_counter()
            purify_container(
                open_container(src),
                work / "engine.zip",
                purifier,
                batch,
                seed=0,
                phases=engine_phases,
                filter=resolved.filter,
                scorer=scorer,
                threshold=threshold,
            )
            engine_s = time.perf_counter() - started
            phases = through_service(src, work / "service.zip", work, args.steps, resolved.model)
            with (
                zipfile.ZipFile(work / "engine.zip") as a,
                zipfile.ZipFile(work / "service.zip") as b,
            ):
                assert a.namelist() == b.namelist(), "the service changed the members"
            n, service_s = args.images, phases["total_s"]
            runs.append(
                {
                    "engine_images_per_s": n / engine_s,
                    "service_images_per_s": n / service_s,
                    "engine_megapixels_per_s": pixels / 1e6 / engine_s,
                    "service_megapixels_per_s": pixels / 1e6 / service_s,
                    "service_over_engine": engine_s / service_s,
                    "engine_s": engine_s,
                    "engine_phases_s": {f"{k}_s": v for k, v in engine_phases.items()},
                    "service_phases_s": phases,
                }
            )

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    figures = {
        "images": args.images,
        "mixed_sizes": args.mixed,
        "side": args.side,
        "model": resolved.model,
        "purifier": resolved.purifier.model_dump(),
        "filter": resolved.filter,
        "steps": steps,
        "device": str(device),
        "batch_size": batch,
        "megapixels": pixels / 1e6,
        "repeats": args.repeat,
        **{key: summary([run[key] for run in runs]) for key in RATES},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    kind = "mixed-size JPEGs" if args.mixed else "CIFAR-10 PNGs"
    kind = f"{args.side}x{args.side} JPEGs" if args.side else kind
    print(
        f"{args.images} {kind}, {figures['model']}, T={steps}, {device}, batch {batch}, "
        f"{args.repeat} runs"
    )
    for key in RATES:
        f = figures[key]
        print(f"{key:<26} median {f['median']:8.3f}  range {f['min']:.3f} - {f['max']:.3f}")
    for side in ("engine_phases_s", "service_phases_s"):
        print(side)
        for phase in runs[0][side]:
            values = [run[side].get(phase, 0.0) for run in runs]
            print(f"  {phase:<14} {statistics.median(values):8.2f} s")


if __name__ == "__main__":
    main()
