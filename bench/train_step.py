"""The DDPM's training step at the roofline: FLOPs per update (pureebm.training.flops),
images/s and achieved TFLOP/s, eager against compiled, float32 against bf16, as a
share of the card's dense bf16 peak.

    python -m bench.train_step [--channels 48 96 192] [--batch-sizes 256 1024]
                               [--steps 30] [--device auto] [--out bench/out/train_step.json]

Each row builds the U-Net afresh (random weights: the cost does not depend on them),
puts a batch of random images on the device, runs ``--warmup`` updates (compilation
included) and times ``--steps`` more, the same update as ``pureebm train --recipe
ddpm``: noise prediction at a random t, Adam (fused on CUDA), gradient clipping.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pureebm.diffusion import build_unet, unet_with_channels
from pureebm.langevin import resolve_device
from pureebm.training.flops import bf16_peak_tflops, counted_flops

VARIANTS = {  # name -> (bf16 autocast and channels_last, torch.compile)
    "fp32 eager": (False, False),
    "bf16 eager": (True, False),
    "bf16 compiled": (True, True),
}


def measure(
    channels: list[int], batch: int, bf16: bool, compiled: bool, steps: int, warmup: int,
    device: torch.device,
) -> dict[str, float]:  # fmt: skip
    unet = build_unet(unet_with_channels(channels)).to(device)
    layout = torch.channels_last if bf16 else torch.contiguous_format
    unet = unet.to(memory_format=layout)
    forward = torch.compile(unet) if compiled else unet
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4, fused=device.type == "cuda")
    x0 = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    x0 = x0.contiguous(memory_format=layout)

    def update(net: torch.nn.Module = forward) -> None:
        t = torch.randint(0, 250, (batch,), device=device)
        z = torch.randn_like(x0)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = (net(x0 + 0.5 * z, t).sample.float() - z).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()

    flops = counted_flops(lambda: update(unet))
    for _ in range(warmup):
        update()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        update()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    return {"gflop_per_update": flops / 1e9, "images_per_s": batch / seconds,
            "tflops": flops / seconds / 1e12}  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[48, 96, 192])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/out/train_step.json"))
    args = parser.parse_args()

    device = resolve_device(args.device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = bf16_peak_tflops(hardware)
    rows = []
    for batch in args.batch_sizes:
        for name in args.variants:
            bf16, compiled = VARIANTS[name]
            figures = measure(args.channels, batch, bf16, compiled, args.steps, args.warmup, device)
            share = None if peak is None else figures["tflops"] / peak
            rows.append({"channels": args.channels, "batch_size": batch, "variant": name,
                         **{k: round(v, 3) for k, v in figures.items()},
                         "share_of_bf16_peak": None if share is None else round(share, 4),
                         "hardware": hardware, "torch": torch.__version__})  # fmt: skip
            of_peak = "" if share is None else f", {share:.1%} of the {peak:g} TFLOP/s peak"
            print(
                f"U-Net {args.channels} batch {batch} {name}: {figures['images_per_s']:,.0f} "
                f"images/s, {figures['tflops']:,.2f} TFLOP/s{of_peak} on {hardware}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
