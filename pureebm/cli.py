"""The `pureebm` command line."""

from __future__ import annotations

import argparse
import shlex
import sys

from pureebm.train import TrainConfig, train


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an EBM and add it to the registry")
    defaults = TrainConfig(data=[])
    p.add_argument("data", nargs="+", help="training images (any supported format)")
    p.add_argument("--name", default=defaults.name)
    p.add_argument("--architecture", default=defaults.architecture, choices=["conv", "resnet"])
    for field in ("n_f", "iterations", "batch_size", "bank_size", "mcmc_steps", "warmup",
                  "crop_padding", "holdout", "checkpoint_every", "seed"):
        p.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(defaults, field))
    for field in ("eps", "tau", "lr", "lr_final", "rejuvenation", "bank_noise"):
        p.add_argument("--" + field.replace("_", "-"), type=float, default=getattr(defaults, field))
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--out-dir", default=defaults.out_dir)
    p.add_argument("--registry", default=defaults.registry)
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR's checkpoint")


def run_train(args: argparse.Namespace) -> None:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    fields["command"] = "pureebm " + shlex.join(sys.argv[1:])
    config = TrainConfig(**fields)
    manifest = train(config, resume=args.resume)
    print(f"registered {manifest.name}:{manifest.version} in {config.registry}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pureebm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    {"train": run_train}[args.command](args)
