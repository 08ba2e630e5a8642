"""Does the default model purify? The PureEBM paper's criterion on held-out real images.

    python -m bench.purify_quality [--images 256] [--model cifar10-conv] [--data NPZ]

Takes the last N images of the data set (the default model's training run held
out its last 660), adds a fixed random sign pattern of amplitude 8/255 to each
(x + delta, |delta| = 8/255 everywhere), purifies the clean and the perturbed
images with the model at its default settings, and reports mean L2 distances
(in [0, 1] pixel units):

    d(P(x + delta), x)            purified-perturbed to the clean original
    d(P(x + delta), x + delta)    purified-perturbed to the perturbed input

Purification "works" in the paper's sense when the first is smaller. Also
reports the PSNR of purified clean images against their originals, and writes
bench/out/purify_quality.png (rows: clean, perturbed, purified perturbed,
4x difference to clean).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pureebm.langevin import purify, resolve_device
from pureebm.plots import amplified_difference, image_rows
from pureebm.registry import DEFAULT_MODEL, Registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image L2 distance in [0, 1] pixel units."""
    return ((a.float() - b.float()) / 255).flatten(1).norm(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a.float() - b.float()) / 255).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--registry", type=Path, default=Registry().root)
    parser.add_argument("--epsilon", type=float, default=8 / 255)
    parser.add_argument("--steps", type=int, help="override the model's default T")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = Registry(args.registry).load(args.model, device)
    params = model.manifest.langevin.params()
    if args.steps is not None:
        params = type(params)(steps=args.steps, eps=params.eps, tau=params.tau)
    with np.load(args.data, allow_pickle=False) as npz:
        clean = torch.from_numpy(npz["images"][-args.images :]).permute(0, 3, 1, 2).contiguous()
    signs = torch.randint(0, 2, clean.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    delta = torch.round(signs * args.epsilon * 255)
    perturbed = (clean.float() + delta).clamp(0, 255).to(torch.uint8)

    started = time.perf_counter()
    run = dict(params=params, batch_size=args.batch_size, device=device, seed=0)
    purified_clean = purify(model.net, clean, **run).images
    purified_perturbed = purify(model.net, perturbed, **run).images
    seconds = time.perf_counter() - started

    to_clean = l2(purified_perturbed, clean)
    to_perturbed = l2(purified_perturbed, perturbed)
    figures = {
        "model": f"{model.manifest.name}:{model.manifest.version}",
        "images": len(clean),
        "steps": params.steps,
        "eps": params.eps,
        "tau": params.tau,
        "perturbation_linf": args.epsilon,
        "l2_perturbed_to_clean": l2(perturbed, clean).mean().item(),
        "l2_purified_perturbed_to_clean": to_clean.mean().item(),
        "l2_purified_perturbed_to_perturbed": to_perturbed.mean().item(),
        "share_closer_to_clean": (to_clean < to_perturbed).float().mean().item(),
        "psnr_purified_clean_db": psnr(purified_clean, clean).mean().item(),
        "psnr_purified_perturbed_vs_clean_db": psnr(purified_perturbed, clean).mean().item(),
        "psnr_perturbed_vs_clean_db": psnr(perturbed, clean).mean().item(),
        "seconds": seconds,
        "device": str(device),
    }
    figures["criterion_met"] = (
        figures["l2_purified_perturbed_to_clean"] < figures["l2_purified_perturbed_to_perturbed"]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "purify_quality.json").write_text(json.dumps(figures, indent=2))
    show = slice(0, 10)
    image_rows(
        [
            clean[show],
            perturbed[show],
            purified_perturbed[show],
            amplified_difference(purified_perturbed[show], clean[show]),
        ],
        args.out / "purify_quality.png",
    )
    for key, value in figures.items():
        print(f"{key:<38} {value:.4f}" if isinstance(value, float) else f"{key:<38} {value}")


if __name__ == "__main__":
    main()
