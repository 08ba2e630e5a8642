"""`pureebm calibrate`: a new preset of a model's weights, with (eps, tau, T) chosen again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pureebm.params import TrainConfig
from pureebm.registry import DEFAULT_ROOT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="choose a model's eps, tau and T again on held-out images; registers a new "
        "preset on the same weights",
    )
    p.add_argument("model", help="NAME or NAME:VERSION")
    p.add_argument("data", help="images the model was not trained on (any supported format)")
    p.add_argument("--images", type=int, default=64, help="use the last N images of DATA")
    p.add_argument(
        "--psnr-floor",
        type=float,
        default=TrainConfig(data=[]).psnr_floor,
        help="the most removal that keeps this PSNR (dB) on the held-out images",
    )
    p.add_argument("--eps", type=float, help="with --tau: try only this setting (T is still swept)")
    p.add_argument("--tau", type=float, help="with --eps: the temperature of that setting")
    p.add_argument("--steps", type=int, help="try only this T (a setting chosen elsewhere)")
    p.add_argument(
        "--filter",
        type=filter_rule,
        help="the new version's default energy filter (a fraction K or 'auto'; default: none)",
    )
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(run=run_calibrate)


def filter_rule(value: str) -> float | str:
    """'auto' or a fraction 0 < K <= 1."""
    if value == "auto":
        return value
    try:
        rule = float(value)
    except ValueError:
        rule = 0.0
    if not 0 < rule <= 1:
        raise argparse.ArgumentTypeError("a fraction 0 < K <= 1, or 'auto'")
    return rule


def run_calibrate(args: argparse.Namespace) -> None:
    from pureebm.containers import load_image_array
    from pureebm.registry import Registry
    from pureebm.training.entries import recalibrate

    if (args.eps is None) != (args.tau is None):
        sys.exit("pureebm: --eps and --tau go together")
    settings = None if args.eps is None else [(args.eps, args.tau)]
    heldout = load_image_array(args.data)[-args.images :]
    manifest, calibration = recalibrate(
        Registry(args.registry),
        args.model,
        heldout,
        args.psnr_floor,
        args.device,
        settings,
        steps=None if args.steps is None else [args.steps],
        energy_filter=args.filter,
    )
    print(
        f"registered {manifest.ref} from {manifest.derived_from}: {manifest.purifier.summary()} "
        f"filter={manifest.filter} energy threshold {manifest.energy_threshold:.4g} "
        f"(PSNR {calibration.psnr_db:.1f} dB, mean r {calibration.residual:.2f} "
        f"on {len(heldout)} images)"
    )
