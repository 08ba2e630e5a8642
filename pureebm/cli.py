"""The `pureebm` command line: purify data, list models, train an EBM or a DDPM,
calibrate or import one, evaluate defences, talk to a running service. Each
subcommand imports what it needs when it runs, so `pureebm --help` answers at once.

`serve`, `worker` and `keygen` belong to the service and the worker: they register
themselves under the `pureebm.commands` entry-point group (pyproject.toml), so
the engine never imports either.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from pureebm.evaluation.config import ATTACKS, EvalConfig, TrainSettings
from pureebm.params import TrainConfig
from pureebm.purifiers import FAMILIES, Overrides
from pureebm.registry import DEFAULT_ROOT


def add_purifier_options(p: argparse.ArgumentParser) -> None:
    """The purification parameters `purify` and `submit` share: every purifier
    family's (pureebm.purifiers.Overrides), checked by the families' specs."""
    for field, info in Overrides.model_fields.items():
        option = "--" + field.replace("_", "-")
        if field == "purifier":
            p.add_argument(option, choices=list(FAMILIES), help=info.description)
        else:
            p.add_argument(option, metavar=field.upper(), help=info.description)
    p.add_argument("--seed", type=int, help="random seed (drawn if unset)")


def purifier_overrides(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in Overrides.model_fields if getattr(args, k) is not None}


def add_purify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("purify", help="purify an image, folder, zip, tar(.gz) or npz")
    p.add_argument("input", type=Path, help="what to purify")
    p.add_argument("-o", "--output", type=Path, required=True, help="the purified copy")
    p.add_argument(
        "--model", help="NAME or NAME:VERSION (default: the one the registry's DEFAULT names)"
    )
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    add_purifier_options(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--report", type=Path, help="write per-image energies as JSON here")
    p.add_argument("--channels-last", action="store_true", help="NHWC layout (GPU option)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU option)")
    p.add_argument("--compile", action="store_true", help="torch.compile the net (GPU option)")
    p.set_defaults(run=run_purify)


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


def run_purify(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from pureebm.archives import open_container
    from pureebm.langevin import Speedups, resolve_device
    from pureebm.pipeline import purifier_for, purify_container, scorer_for
    from pureebm.registry import Registry
    from pureebm.requests import resolve_request
    from pureebm.results import PurifiedImage

    device = resolve_device(args.device)
    registry = Registry(args.registry)
    try:  # refused before any work
        resolved = resolve_request(Overrides(**purifier_overrides(args)), args.model, registry)
    except ValueError as e:  # pydantic's ValidationError and FilterError included
        sys.exit(f"pureebm: {e}")
    speedups = Speedups(channels_last=args.channels_last, bf16=args.bf16, compile=args.compile)
    model = None if resolved.model is None else registry.load(resolved.model, device)
    purifier = purifier_for(
        resolved.purifier, model, lambda ref: registry.load(ref, device), device, speedups
    )
    scorer = scorer_for(model, device, speedups) if resolved.filter is not None else None
    container = open_container(args.input)
    total = len(container.image_names())
    print(
        f"{args.input}: {container.kind}, {total} images; {purifier.name} on {device}"
        + (f", filter={resolved.filter}" if resolved.filter is not None else ""),
        file=sys.stderr,
    )
    started = time.perf_counter()
    with tqdm(total=total, unit="img", desc="purify") as bar:

        def advance(_: PurifiedImage) -> None:
            bar.update(1)

        energies = purify_container(
            container,
            args.output,
            purifier,
            args.batch_size,
            args.seed,
            advance,
            filter=resolved.filter,
            scorer=scorer,
            threshold=model.manifest.energy_threshold if model else None,
        )
    seconds = time.perf_counter() - started
    purified = sum(row.purified for row in energies)
    if args.report:
        args.report.write_text(json.dumps([row._asdict() for row in energies], indent=1))
    print(
        f"purified {purified} of {total} images in {seconds:.1f} s "
        f"({total / seconds:.2f} images/s) -> {args.output}"
    )


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.add_argument("--json", action="store_true", help="every manifest in full, as JSON")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> None:
    from pureebm.registry import Registry

    registry = Registry(args.registry)
    manifests = registry.list()
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
        return
    default_entry = registry.pinned(registry.default_ref())
    for m in manifests:
        default = " (default)" if (m.name, m.version) == default_entry else ""
        weights = m.weights
        trained = (
            f"{weights.architecture}, {weights.image_size}px x{weights.channels}, trained "
            f"{weights.training.iterations} it in {weights.training.wall_time_s:.0f} s on "
            f"{weights.training.hardware}"
            if weights
            else "no weights"
        )
        derived = f" (from {m.derived_from})" if m.derived_from else ""
        print(
            f"{m.ref}{default}  {m.purifier.summary()}"
            f"{'' if m.filter is None else f' filter={m.filter}'}{derived}  {trained}"
        )


TRAIN_OPTIONS: dict[str, tuple[type, str]] = {  # TrainConfig field -> (type, help)
    "n_f": (int, "EBM width: channels of the first layer"),
    "pretrain_iterations": (int, "dsm+ml: DSM updates before the ML ones"),
    "iterations": (int, "parameter updates in all"),
    "max_seconds": (
        float,
        "stop once the updates took this many seconds in all (0: no limit); "
        "the learning-rate schedule then runs on time",
    ),
    "batch_size": (int, "images per update"),
    "bank_size": (int, "ML: persistent MCMC states kept between updates"),
    "mcmc_steps": (int, "ML: Langevin steps K per update"),
    "warmup": (int, "updates of linear learning-rate warm-up"),
    "crop_padding": (int, "random crops after reflect-padding by this many pixels (0: none)"),
    "holdout": (int, "keep the last N images out of training (the card's held-out set)"),
    "skimage_crops": (int, "add N crops of scikit-image's photographs to the data"),
    "calibrate_images": (int, "held-out images for the card at the end (0: no card)"),
    "checkpoint_every": (int, "write a checkpoint and figures every N updates"),
    "checkpoint_seconds": (float, "... and at least every S seconds"),
    "seed": (int, "random seed of the run"),
    "t_star": (int, "ddpm: the entry's default purification depth t*"),
    "trained_below": (int, "ddpm: t_max, train on timesteps t <= t_max of 1000"),
    "eps": (float, "EBM: Langevin step size of the training chains and the card"),
    "tau": (float, "EBM: temperature dividing the energy"),
    "lr": (float, "peak Adam learning rate"),
    "lr_final": (float, "learning rate at the end of the cosine decay"),
    "grad_clip": (float, "max norm of the parameter gradient"),
    "rejuvenation": (float, "ML: chance that a bank state restarts from data"),
    "bank_noise": (float, "ML: std of the noise on restarted bank states"),
    "sigma_min": (float, "DSM: smallest noise level, in [-1, 1] units"),
    "sigma_max": (float, "DSM: largest noise level, in [-1, 1] units"),
    "psnr_floor": (float, "EBM card: the most removal that keeps this PSNR (dB)"),
}


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an EBM or a DDPM and add it to the registry")
    defaults = TrainConfig(data=[])
    p.add_argument("data", nargs="+", help="training images (any supported format)")
    p.add_argument("--name", default=defaults.name, help="registry name of the new entry")
    p.add_argument(
        "--architecture",
        default=defaults.architecture,
        choices=["conv", "resnet"],
        help="EBM: the paper's conv net or its SNGAN-style residual net",
    )
    p.add_argument(
        "--recipe",
        default=defaults.recipe,
        choices=["ml", "dsm", "dsm+ml", "ddpm"],
        help="EBM by maximum likelihood, denoising score matching, or DSM then ML; "
        "or a DDPM U-Net (noise prediction)",
    )
    for field, (kind, help_text) in TRAIN_OPTIONS.items():
        option = "--" + field.replace("_", "-")
        p.add_argument(option, type=kind, default=getattr(defaults, field), help=help_text)
    p.add_argument(
        "--noise-blocks",
        type=int,
        nargs="+",
        default=defaults.noise_blocks,
        help="DSM noise grains in pixels (1: white noise; e.g. 1 2 4 adds blocky noise)",
    )
    p.add_argument(
        "--unet-channels",
        type=int,
        nargs="+",
        help="ddpm: the U-Net's channels per level (default: "
        "pureebm.diffusion.CPU_UNET's 32 64 128)",
    )
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no random flips")
    p.add_argument(
        "--bf16", action="store_true", help="on CUDA: bf16 autocast and channels_last updates"
    )
    p.add_argument("--out-dir", default=defaults.out_dir, help="checkpoints and figures")
    p.add_argument("--registry", default=defaults.registry, help="model registry folder")
    p.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR's checkpoint")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    fields["command"] = "pureebm " + shlex.join(sys.argv[1:])
    if args.unet_channels:
        from pureebm.diffusion import unet_with_channels

        fields["unet"] = unet_with_channels(args.unet_channels)
    config = TrainConfig(**fields)
    from pureebm.training import train

    manifest = train(config, resume=args.resume)
    print(f"registered {manifest.name}:{manifest.version} in {config.registry}")


def add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
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


def run_calibrate(args: argparse.Namespace) -> None:
    from pureebm.archives import load_image_array
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


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="register a downloaded folder: a PureGen reference EBM or a diffusers UNet",
    )
    p.add_argument("source", type=Path, help="the folder (e.g. from huggingface-cli download)")
    p.add_argument("--name", required=True, help="registry name of the new entry")
    p.add_argument("--version", type=int, help="its version (default: the next free one)")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> None:
    from pureebm.importing import ImportRefused, import_folder
    from pureebm.registry import Registry

    try:
        manifest = import_folder(
            args.source,
            Registry(args.registry),
            args.name,
            args.version,
            command="pureebm " + shlex.join(sys.argv[1:]),
        )
    except ImportRefused as e:
        sys.exit(f"pureebm: refused {args.source}: {e}")
    architecture = manifest.weights.architecture if manifest.weights else "no weights"
    print(
        f"registered {manifest.ref} ({architecture}, {manifest.purifier.summary()}) "
        f"in {args.registry}"
    )


def add_submit_parser(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="purify through a running service")
    submit.add_argument("input", type=Path, help="an image or an archive (zip, tar, npz)")
    submit.add_argument("-o", "--output", type=Path, required=True, help="the purified copy")
    submit.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    submit.add_argument("--api-key", help="default: PUREEBM_API_KEY")
    submit.add_argument("--model", help="NAME or NAME:VERSION (default: the service's)")
    add_purifier_options(submit)
    submit.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace) -> None:
    import os

    from tqdm import tqdm

    from pureebm.client import PureEBMClient

    params = {"model": args.model, "seed": args.seed, **purifier_overrides(args)}
    api_key = args.api_key or os.environ.get("PUREEBM_API_KEY")
    started = time.perf_counter()
    with PureEBMClient(args.url, api_key) as client, tqdm(unit="img", desc="purify") as bar:
        job = client.submit(args.input, **params)
        bar.total = job["progress"]["total"]
        print(f"job {job['id']}: {job['progress']['total']} images", file=sys.stderr)

        def show(job: dict) -> None:
            bar.total = job["progress"]["total"]  # a filter's second phase is sized once chosen
            bar.set_postfix_str(job["status"])
            bar.update(job["progress"]["done"] - bar.n)

        client.wait(job["id"], on_progress=show)
        client.download(job["id"], args.output)
        report = client.report(job["id"])
    seconds = time.perf_counter() - started
    print(
        f"purified {report['purified']} of {len(report['images'])} images in {seconds:.1f} s "
        f"-> {args.output}"
    )


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    defaults = EvalConfig(train="")
    p = sub.add_parser("eval", help="poison, defend, train classifiers, measure")
    p.add_argument("train", help="labelled training set: npz (images, labels) or class folders")
    p.add_argument("--test", help="labelled test set (default: a stratified split of TRAIN)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="share of TRAIN held out as the test split (without --test)",
    )
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--attack", choices=ATTACKS, default=defaults.attack, help="the poisoning")
    p.add_argument(
        "--eps",
        type=fraction,
        nargs="+",
        default=defaults.eps,
        help="L-inf bounds of the Narcissus trigger, e.g. 8/255 16/255",
    )
    p.add_argument(
        "--poison-fraction",
        type=float,
        default=defaults.poison_fraction,
        help="poisoned images as a share of the whole training set",
    )
    p.add_argument(
        "--targets", type=int, nargs="+", default=defaults.targets, help="attacked classes"
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=defaults.seeds,
        help="attack and classifier seeds (each target runs every seed)",
    )
    p.add_argument(
        "--defences",
        nargs="+",
        default=defaults.defences,
        help="none, jpeg:QUALITY, pureebm (the model's T), pureebm:STEPS, filt:K[:STEPS] / "
        "filt:auto[:STEPS] (purify only the highest-energy images), or pureddpm[:T*] (with "
        "--ddpm-model); a 'clean' row (trained on unpoisoned data) is always added, and each "
        "defence gets a '+test' row",
    )
    p.add_argument("--sweep", type=int, nargs="*", default=[], help="PureEBM steps to sweep")
    p.add_argument(
        "--classifier",
        choices=["cnn", "resnet18"],
        default=defaults.classifier.architecture,
        help="victim architecture",
    )
    p.add_argument(
        "--epochs", type=int, default=defaults.classifier.epochs, help="victim training epochs"
    )
    p.add_argument("--model", default=defaults.model, help="the EBM of pureebm and filt rows")
    p.add_argument("--ddpm-model", help="the DDPM of pureddpm rows (NAME or NAME:VERSION)")
    p.add_argument("--registry", default=defaults.registry, help="model registry folder")
    p.add_argument("--url", help="purify through this running service instead of in-process")
    p.add_argument("--out", default=defaults.out, help="folder for results.json/.md/.png")
    p.add_argument(
        "--split-seed", type=int, default=defaults.split_seed, help="seed of the test split"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(run=run_eval)


def fraction(value: str) -> float:
    """'8/255' -> 0.0314; '0.03' -> 0.03."""
    numerator, _, denominator = value.partition("/")
    return float(numerator) / float(denominator or 1)


def run_eval(args: argparse.Namespace) -> None:
    from pureebm.evaluation.run import evaluate, markdown_table

    config = EvalConfig(
        train=args.train,
        test=args.test,
        test_fraction=args.test_fraction,
        limit=args.limit,
        attack=args.attack,
        eps=args.eps,
        poison_fraction=args.poison_fraction,
        targets=args.targets,
        seeds=args.seeds,
        defences=args.defences,
        sweep=args.sweep,
        classifier=TrainSettings(
            architecture=args.classifier, epochs=args.epochs, device=args.device
        ),
        model=args.model,
        ddpm_model=args.ddpm_model,
        registry=args.registry,
        url=args.url,
        out=args.out,
        split_seed=args.split_seed,
    )
    result = evaluate(config)
    print(markdown_table(result))
    print(f"({result['seconds']:.0f} s; results.json, results.md, results.png in {config.out})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pureebm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in (
        add_purify_parser,
        add_models_parser,
        add_train_parser,
        add_calibrate_parser,
        add_import_parser,
        add_submit_parser,
        add_eval_parser,
    ):
        add_parser(sub)
    for entry in sorted(entry_points(group="pureebm.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    from pureebm.client import PureEBMError
    from pureebm.filtering import FilterError
    from pureebm.images import FormatError
    from pureebm.registry import RegistryError

    try:
        args.run(args)
    except (FormatError, RegistryError, FilterError) as e:
        sys.exit(f"pureebm: {e}")
    except PureEBMError as e:
        sys.exit(f"pureebm: the service answered {e}")
