"""Engine throughput: images/s of Psi_T per architecture and batch size, with FLOP/s.

    python -m bench.engine [--steps 150] [--batch-sizes 16 64] [--device auto]

FLOPs per image are counted by torch's FlopCounterMode on one Langevin step (the
forward pass and the backward pass to the input) times T. Timing covers the
whole purify() call on random uint8 images after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pureebm.langevin import purify, resolve_device
from pureebm.nets import build_energy_net
from pureebm.purifiers.langevin import LangevinSpec

CONFIGS = {"conv-32": ("conv", 32), "conv-64": ("conv", 64), "resnet-128": ("resnet", 128)}


def flops_per_step(net: torch.nn.Module, size: int) -> int:
    """Forward plus backward to the input, parameters frozen, as in purify()."""
    net.requires_grad_(False)
    x = torch.rand(1, 3, size, size, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/out/engine.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    batch_sizes = args.batch_sizes or ([64, 256, 1024] if device.type == "cuda" else [16, 64])
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    print(f"device {device} ({hardware}), T={args.steps}, {args.size}x{args.size} RGB")
    print(f"{'model':<11} {'batch':>5} {'GFLOP/img':>10} {'images/s':>9} {'GFLOP/s':>9}")
    rows = []
    for label in args.configs:
        architecture, n_f = CONFIGS[label]
        net = build_energy_net(architecture, n_f=n_f)
        flops = flops_per_step(net, args.size) * args.steps
        for batch in batch_sizes:
            images = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8)
            params = LangevinSpec(steps=args.steps)
            purify(net, images, LangevinSpec(steps=2), batch, device, seed=0)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            purify(net, images, params, batch, device, seed=0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rate = batch / (time.perf_counter() - started)
            rows.append(
                {
                    "model": label,
                    "batch": batch,
                    "flops_per_image": flops,
                    "images_per_s": rate,
                    "flops_per_s": flops * rate,
                    "device": hardware,
                }
            )
            print(
                f"{label:<11} {batch:>5} {flops / 1e9:>10.2f} {rate:>9.2f} "
                f"{flops * rate / 1e9:>9.1f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
