"""Purification throughput at the paper's settings: an EBM at T = 150 and a DDPM at
t* = 75, batch 1,024, eager in float32, eager under bf16 autocast (with channels_last)
and compiled under bf16 (pureebm.compiled: one graph per step, fixed shape), in
images/s, side by side in one call.

    python -m bench.throughput --ebm cifar10-resnet --ddpm cifar10-ddpm
                               [--images 2048] [--batch-size 1024] [--registry models]
                               [--out bench/out/throughput.json]

The paper's figures on a TPU v3 for CIFAR-10's 50,000 images: 923 s with the EBM
(54 images/s), 4,181 s with the DDPM (12 images/s). Each row runs one warm-up batch,
then times ``--images`` images of the shared set (repeated where it has fewer).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pureebm.containers import load_image_array
from pureebm.langevin import Speedups, resolve_device
from pureebm.pipeline import purifier_for
from pureebm.purifiers import Purifier
from pureebm.purifiers.ddpm import DDPMSpec
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import DEFAULT_ROOT, LoadedModel, Registry
from pureebm.training.flops import counted_flops

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"
PAPER_IMAGES_PER_S = {"ebm": 50_000 / 923, "ddpm": 50_000 / 4_181}  # TPU v3, PureGen
VARIANTS = {
    "fp32": Speedups(),
    "bf16": Speedups(bf16=True, channels_last=True),
    "bf16+compile": Speedups(bf16=True, channels_last=True, compile=True),
}


def purify_batches(purifier: Purifier, images: torch.Tensor, batch_size: int) -> None:
    """Every image through ``purifier.purify_batch``, ``batch_size`` at a time (seed 0,
    image i at position i)."""
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        purifier.purify_batch(batch, torch.arange(start, start + len(batch)), 0)


def images_per_second(
    run: Callable[[torch.Tensor], object], images: torch.Tensor, batch: int, device: torch.device
) -> float:
    run(images[:batch])  # warm-up: kernels chosen, memory allocated
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ebm", help="EBM entry (NAME or NAME:VERSION)")
    parser.add_argument("--ddpm", help="DDPM entry (NAME or NAME:VERSION)")
    parser.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--ebm-steps", type=int, default=150)
    parser.add_argument("--ddpm-steps", type=int, default=75)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("bench/out/throughput.json"))
    args = parser.parse_args()

    device = resolve_device(args.device)
    pool = load_image_array(args.data)
    picks = np.arange(args.images) % len(pool)
    images = torch.from_numpy(np.ascontiguousarray(pool[picks])).permute(0, 3, 1, 2)
    registry = Registry(args.registry)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []

    def measure(family: str, ref: str, steps: int, purifiers: dict[str, Purifier]) -> None:
        one_image = images[:1]
        flops = counted_flops(lambda: purify_batches(purifiers["fp32"], one_image, 1))
        for variant in args.variants:
            rate = images_per_second(
                lambda x, v=variant: purify_batches(purifiers[v], x, args.batch_size),
                images,
                args.batch_size,
                device,
            )
            row = {
                "family": family,
                "model": ref,
                "steps": steps,
                "variant": variant,
                "batch_size": args.batch_size,
                "images": len(images),
                "images_per_s": round(rate, 1),
                "gflop_per_image": round(flops / 1e9, 3),
                "tflops": round(flops * rate / 1e12, 3),
                "paper_tpu_v3": PAPER_IMAGES_PER_S[family],
                "hardware": hardware,
                "torch": torch.__version__,
            }
            rows.append(row)
            print(
                f"{family} {ref} T={steps} {variant}: {rate:,.1f} images/s, "
                f"{flops * rate / 1e12:,.2f} TFLOP/s "
                f"(paper, TPU v3: {PAPER_IMAGES_PER_S[family]:.0f} images/s) on {hardware}",
                flush=True,
            )

    def load(ref: str) -> LoadedModel:
        return registry.load(ref, device)

    if args.ebm:
        ebm = load(args.ebm)
        preset = LangevinSpec.defaults(ebm.manifest, registry.manifest)  # its eps and tau
        try:
            ebm_spec = LangevinSpec(**{**preset, "steps": args.ebm_steps})
            ebm_spec.check(ebm.manifest, registry.manifest)
        except ValueError as e:
            parser.error(f"--ebm {args.ebm}: {e}")
        ebm_purifiers = {
            name: purifier_for(ebm_spec, ebm, load, device, speedups)
            for name, speedups in VARIANTS.items()
        }
        measure("ebm", args.ebm, args.ebm_steps, ebm_purifiers)
    if args.ddpm:
        ddpm = load(args.ddpm)
        try:
            ddpm_spec = DDPMSpec(steps=args.ddpm_steps).check(ddpm.manifest, registry.manifest)
        except ValueError as e:
            parser.error(f"--ddpm {args.ddpm}: {e}")
        ddpm_purifiers = {
            name: purifier_for(ddpm_spec, ddpm, load, device, speedups)
            for name, speedups in VARIANTS.items()
        }
        measure("ddpm", args.ddpm, args.ddpm_steps, ddpm_purifiers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
