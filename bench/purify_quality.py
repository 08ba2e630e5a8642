"""The purification quality card: content kept against poison left, as functions of T.

    python -m bench.purify_quality [--model cifar10-conv] [--images 64] [--steps 0 25 50 ...]

On the last ``--images`` (held-out) images of the shared CIFAR-10 set:

- Content kept: PSNR(Psi_T(x), x), in dB.
- Poison left: for a perturbation d, purify x and x + d with the same seed, so both
  chains draw the same noise, and measure the share of d that survives,

      r = <Psi_T(x + d) - Psi_T(x), d> / <d, d>      (per image, then averaged)

  r = 1: the purifier leaves d alone (a noise-only purifier); r = 0: d is gone.
  Perturbations: pixel-wise random signs at 8/255 and 16/255, the same signs in
  2x2 and 4x4 blocks at 8/255, a smooth low-frequency pattern at 8/255, and a
  Narcissus trigger at 8/255 optimised by `pureebm eval`'s attack.

Every T comes from one chain per perturbation (``purify(..., sweep=...)``). The
same card is drawn for two purifiers without an EBM: Gaussian noise of the same
total variance (x + sqrt(T) eps n, clamped and rounded) and JPEG quality 75.
Intervals are 95% over images (1.96 standard errors).

Writes bench/out/purify_quality.json, the card bench/out/purify_quality.png and
bench/out/purify_samples.png (rows: clean, 4x4-block perturbed, purified at the
model's T, difference to clean x4).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pureebm.evaluation import attacks
from pureebm.evaluation.classifier import train_classifier
from pureebm.evaluation.config import TrainSettings
from pureebm.langevin import resolve_device, to_uint8, to_unit_range
from pureebm.pipeline import purifier_for
from pureebm.plots import amplified_difference, image_rows
from pureebm.purifiers.jpeg import JPEGSpec
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.quality import card, langevin_purifier, perturb, standard_perturbations
from pureebm.registry import Registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"
TRAINING_IMAGES = 4000  # the default models' training part; the rest is held out


def narcissus_pattern(
    data: np.ndarray, labels: np.ndarray, epochs: int, cache: Path
) -> torch.Tensor:
    """The trigger of `pureebm eval`'s Narcissus attack at 8/255, target class 0.

    Its surrogate classifier takes minutes on a CPU, so the trigger is cached
    (as a plain .npy) in the output folder.
    """
    path = cache / f"narcissus_trigger_{len(data)}img_{epochs}ep.npy"
    if not path.exists():
        surrogate = train_classifier(data, labels, TrainSettings(epochs=epochs))
        poisoned = attacks.narcissus(data, labels, 0, 8 / 255, 0.01, 0, surrogate)
        grey = np.full((1, *data.shape[1:]), 128, np.uint8)
        np.save(path, poisoned.trigger(grey)[0].astype(np.float32) - 128)
    return torch.from_numpy(np.load(path, allow_pickle=False)).permute(2, 0, 1)


def gaussian_baseline(params: LangevinSpec, steps: list[int]):
    """x + sqrt(T) eps n, clamped and rounded, with the same n for every input."""

    def apply(images: torch.Tensor) -> dict[int, torch.Tensor]:
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
        x0 = to_unit_range(images)
        return {t: to_uint8(x0 + t**0.5 * params.eps * noise) for t in steps}

    return apply


def jpeg_baseline(quality: int) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The JPEG purifier (pureebm.purifiers.jpeg) at ``quality``; it needs no model."""
    purifier = purifier_for(JPEGSpec(quality=quality), None, Registry().load, "cpu")

    def apply(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"-": purifier.purify_batch(images, torch.arange(len(images)), 0).images}

    return apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--model", help="NAME[:VERSION] (default: the registry's default)")
    parser.add_argument("--registry", type=Path, default=Registry().root)
    parser.add_argument("--steps", type=int, nargs="+", help="T values (default: up to 2 T)")
    parser.add_argument("--eps", type=float, help="override the model's eps")
    parser.add_argument("--tau", type=float, help="override the model's tau")
    parser.add_argument("--narcissus-epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--tag", default="purify_quality", help="output file name stem")
    args = parser.parse_args()

    device = resolve_device(args.device)
    registry = Registry(args.registry)
    model = registry.load(args.model or registry.default_ref(), device)
    defaults = LangevinSpec(**LangevinSpec.defaults(model.manifest, registry.manifest))
    try:  # the preset's eps, tau and T; refused for a model that is not an EBM
        defaults.check(model.manifest, registry.manifest)
    except ValueError as e:
        parser.error(f"{model.manifest.ref}: {e}")
    eps, tau = args.eps or defaults.eps, args.tau or defaults.tau
    steps = sorted(
        set(
            args.steps
            or [0, defaults.steps // 4, defaults.steps // 2, defaults.steps, 2 * defaults.steps]
        )
    )
    params = LangevinSpec(steps=max(steps), eps=eps, tau=tau)
    with np.load(args.data, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    clean = torch.from_numpy(images[-args.images :]).permute(0, 3, 1, 2).contiguous()
    shape = tuple(clean.shape[1:])

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    perturbations = standard_perturbations(shape)
    perturbations["narcissus 8/255"] = narcissus_pattern(
        images[:TRAINING_IMAGES], labels[:TRAINING_IMAGES], args.narcissus_epochs, args.out
    )
    trigger_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ebm = card(langevin_purifier(model.net, params, steps, device), clean, perturbations)
    ebm_seconds = time.perf_counter() - started
    gaussian = card(gaussian_baseline(params, steps), clean, perturbations)
    jpeg75 = card(jpeg_baseline(75), clean, perturbations)

    figures = {
        "model": f"{model.manifest.name}:{model.manifest.version}",
        "images": len(clean),
        "eps": eps,
        "tau": tau,
        "model_default_steps": defaults.steps,
        "ebm_seconds": round(ebm_seconds, 1),
        "trigger_seconds": round(trigger_seconds, 1),
        "device": str(device),
        "ebm": ebm,
        "gaussian": gaussian,
        "jpeg75": jpeg75,
    }
    (args.out / f"{args.tag}.json").write_text(json.dumps(figures, indent=2))
    print_card(figures)
    draw_card(figures, steps, args.out / f"{args.tag}.png")
    show_t = defaults.steps if defaults.steps in steps else max(steps)
    block = perturb(clean[:10], perturbations["4x4 blocks 8/255"])
    purified = langevin_purifier(model.net, params, [show_t], device)(block)[show_t]
    image_rows(
        [clean[:10], block, purified, amplified_difference(purified, clean[:10])],
        args.out / f"{args.tag}_samples.png",
    )


def print_card(figures: dict) -> None:
    print(
        f"{figures['model']}  eps={figures['eps']:g} tau={figures['tau']:g}  "
        f"{figures['images']} held-out images, EBM chains {figures['ebm_seconds']} s"
    )
    for purifier in ("ebm", "gaussian", "jpeg75"):
        rows = figures[purifier]
        columns = list(next(iter(rows.values())))
        print(f"\n{purifier:<9}" + "".join(f"{c.removeprefix('r '):>18}" for c in columns))
        for t, row in rows.items():
            cells = "".join(f"{m:>11.3f} +-{h:<5.3f}" for m, h in row.values())
            print(f"T={t:<7}" + cells)


def draw_card(figures: dict, steps: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"ebm": "-", "gaussian": ":"}
    moved = [t for t in steps if t > 0]  # T = 0 changes nothing: infinite PSNR
    for purifier, style in styles.items():
        psnrs = [figures[purifier][str(t)]["psnr_db"][0] for t in moved]
        left.plot(moved, psnrs, style, marker="o", label=f"{purifier}", color="k")
    left.axhline(figures["jpeg75"]["-"]["psnr_db"][0], color="k", ls="--", label="JPEG q75")
    left.set(xlabel="Langevin steps T", ylabel="PSNR(Psi_T(x), x) [dB]", title="content kept")
    left.legend()
    names = [k for k in figures["ebm"][str(steps[0])] if k.startswith("r ")]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, color in zip(names, colors, strict=False):
        values = [figures["ebm"][str(t)][name] for t in steps]
        right.errorbar(
            steps,
            [m for m, _ in values],
            yerr=[h for _, h in values],
            color=color,
            marker="o",
            capsize=3,
            label=name.removeprefix("r "),
        )
        right.plot(steps, [figures["gaussian"][str(t)][name][0] for t in steps], ":", color=color)
        right.axhline(figures["jpeg75"]["-"][name][0], color=color, ls="--", lw=0.8)
    right.set(
        xlabel="Langevin steps T",
        ylabel="r = share of the perturbation left",
        title="poison left (solid: EBM, dotted: Gaussian noise, dashed: JPEG q75)",
        ylim=(-0.05, 1.1),
    )
    right.legend(fontsize=8)
    fig.suptitle(
        f"{figures['model']}, eps={figures['eps']:g}, tau={figures['tau']:g}, "
        f"{figures['images']} held-out CIFAR-10 images (95% intervals)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
