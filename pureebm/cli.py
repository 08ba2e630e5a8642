"""The `pureebm` command line: purify data, list models, train an EBM, run the service."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pureebm.formats import FormatError, open_container
from pureebm.langevin import LangevinParams, resolve_device
from pureebm.pipeline import PurifiedImage, purify_container
from pureebm.registry import DEFAULT_MODEL, DEFAULT_ROOT, Registry, RegistryError
from pureebm.train import TrainConfig, train


def add_purify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("purify", help="purify an image, folder, zip, tar(.gz) or npz")
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--model", default=DEFAULT_MODEL, help="NAME or NAME:VERSION")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--steps", type=int, help="Langevin steps T (model default if unset)")
    p.add_argument("--eps", type=float, help="step size (model default if unset)")
    p.add_argument("--tau", type=float, help="temperature (model default if unset)")
    p.add_argument("--init-noise", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--report", type=Path, help="write per-image energies as JSON here")


def run_purify(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model = Registry(args.registry).load(args.model, device)
    defaults = model.manifest.langevin
    params = LangevinParams(
        steps=defaults.steps if args.steps is None else args.steps,
        eps=args.eps or defaults.eps,
        tau=args.tau or defaults.tau,
        init_noise=args.init_noise,
    )
    container = open_container(args.input)
    total = len(container.image_names())
    print(
        f"{args.input}: {container.kind}, {total} images; model "
        f"{model.manifest.name}:{model.manifest.version} on {device}, T={params.steps} "
        f"eps={params.eps:g} tau={params.tau:g}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    with tqdm(total=total, unit="img", desc="purify") as bar:

        def advance(_: PurifiedImage) -> None:
            bar.update(1)

        results = purify_container(
            container, args.output, model, params, args.batch_size, device, args.seed, advance
        )
    seconds = time.perf_counter() - started
    if args.report:
        rows = [
            {"name": r.name, "energy_before": r.energy_before, "energy_after": r.energy_after}
            for r in results
        ]
        args.report.write_text(json.dumps(rows, indent=1))
    print(
        f"purified {total} images in {seconds:.1f} s ({total / seconds:.2f} images/s) "
        f"-> {args.output}"
    )


def run_models(args: argparse.Namespace) -> None:
    manifests = Registry(args.registry).list()
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
        return
    for m in manifests:
        default = " (default)" if m.name == DEFAULT_MODEL else ""
        print(
            f"{m.name}:{m.version}{default}  {m.architecture} {m.arch_kwargs}  "
            f"{m.image_size}px x{m.channels}  T={m.langevin.steps} eps={m.langevin.eps} "
            f"tau={m.langevin.tau}  trained {m.training.iterations} it in "
            f"{m.training.wall_time_s:.0f} s on {m.training.hardware}"
        )


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an EBM and add it to the registry")
    defaults = TrainConfig(data=[])
    p.add_argument("data", nargs="+", help="training images (any supported format)")
    p.add_argument("--name", default=defaults.name)
    p.add_argument("--architecture", default=defaults.architecture, choices=["conv", "resnet"])
    for field in (
        "n_f",
        "iterations",
        "batch_size",
        "bank_size",
        "mcmc_steps",
        "warmup",
        "crop_padding",
        "holdout",
        "checkpoint_every",
        "seed",
    ):
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
    add_purify_parser(sub)
    models = sub.add_parser("models", help="list the model registry")
    models.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    models.add_argument("--json", action="store_true")
    add_train_parser(sub)
    args = parser.parse_args(argv)
    commands = {"purify": run_purify, "models": run_models, "train": run_train}
    try:
        commands[args.command](args)
    except (FormatError, RegistryError) as e:
        sys.exit(f"pureebm: {e}")
