"""`pureebm train`: train an EBM or a DDPM and register it."""

from __future__ import annotations

import argparse
import shlex
import sys

from pureebm.params import TrainConfig

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
    "skimage_crops": (int, "add N crops of free photographs (scikit-image, matplotlib)"),
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
    "ema_decay": (
        float,
        "keep an exponential moving average of the weights at this decay "
        "(e.g. 0.999) and register it (0: none)",
    ),
    "init_from": (
        str,
        "start from this registry entry's weights (NAME or NAME:VERSION) and "
        "add the run to its lineage, its architecture included",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--compile", action="store_true", help="ddpm: torch.compile the U-Net's training step"
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
