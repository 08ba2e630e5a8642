"""The engine's GPU options (channels_last, bf16 autocast, torch.compile): images/s
and what they change in the purified images.

    python -m bench.speedups [--images 4660] [--steps 150] [--batch-size 1024]

Purifies N CIFAR-10 images of the shared set with the default model at T steps,
once per option set, on the default device, after a warm-up batch (which is
where torch.compile compiles). For each: images/s, the largest and mean
difference from the plain run in 8-bit levels, PSNR kept against the clean
images, and the share r of a 4x4-block sign perturbation at 8/255 that survives
(quality.py). Writes bench/out/speedups.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pureebm.langevin import Speedups, purify, resolve_device
from pureebm.purifiers import Overrides
from pureebm.quality import perturb, psnr, residual, sign_pattern
from pureebm.registry import Registry
from pureebm.requests import resolve_request

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"
OPTIONS = {
    "plain": Speedups(),
    "channels_last": Speedups(channels_last=True),
    "bf16": Speedups(bf16=True),
    "compile": Speedups(compile=True),
    "channels_last+bf16": Speedups(channels_last=True, bf16=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=4660)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path("bench/out/speedups.json"))
    args = parser.parse_args()
    device = resolve_device("auto")
    registry = Registry()
    try:  # the default preset's Langevin parameters at T steps
        resolved = resolve_request(Overrides(purifier="langevin", steps=args.steps), None, registry)
    except ValueError as e:
        parser.error(f"the default model: {e}")
    params = resolved.purifier
    model = registry.load(resolved.model, device)
    with np.load(args.data) as npz:
        clean = torch.from_numpy(npz["images"][: args.images]).permute(0, 3, 1, 2).contiguous()
    d = sign_pattern(clean.shape[1:], 4, 8 / 255, seed=0)
    perturbed = perturb(clean, d)
    actual_d = perturbed.float() - clean.float()

    def run(images: torch.Tensor, speedups: Speedups) -> torch.Tensor:
        result = purify(model.net, images, params, args.batch_size, device, 0, speedups=speedups)
        return result.images

    figures: dict[str, dict[str, float]] = {}
    reference = None
    for name, speedups in OPTIONS.items():
        run(clean[: args.batch_size], speedups)  # warm-up (and compilation)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = run(clean, speedups)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        reference = out if reference is None else reference
        difference = (out.int() - reference.int()).abs().float()
        r = residual(out, run(perturbed, speedups), actual_d)
        figures[name] = {
            "images_per_s": len(clean) / seconds,
            "max_level_difference": difference.max().item(),
            "mean_level_difference": difference.mean().item(),
            "psnr_db": psnr(out, clean).mean().item(),
            "r_4x4_blocks_8": r.mean().item(),
        }
        print(name, json.dumps(figures[name]), flush=True)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "images": len(clean),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "options": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
