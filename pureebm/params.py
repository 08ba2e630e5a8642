"""Every option of `pureebm train` (pureebm.training runs it); no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    data: list[str]
    name: str = "ebm"
    recipe: str = "ml"  # "ml", "dsm", "dsm+ml" or "ddpm"
    pretrain_iterations: int = 0  # DSM updates before ML ones under "dsm+ml"
    sigma_min: float = 0.05  # DSM noise levels, in [-1, 1] units
    sigma_max: float = 0.3
    noise_blocks: list[int] = field(default_factory=lambda: [1])  # DSM noise grain, pixels
    architecture: str = "conv"
    n_f: int = 32
    unet: dict[str, Any] | None = None  # "ddpm": the UNet2DModel config (default: CPU_UNET)
    t_star: int = 75  # "ddpm": the entry's default purification depth t*
    trained_below: int = 250  # "ddpm": t_max, the last timestep trained
    iterations: int = 1000
    max_seconds: float = 0.0  # stop once the updates took this long in all (0: no limit)
    batch_size: int = 64
    bank_size: int = 10_000
    mcmc_steps: int = 100  # K Langevin steps per update
    eps: float = 1.25e-2
    tau: float = 1e-4
    lr: float = 1e-4
    grad_clip: float = 1.0  # max norm of the parameter gradient of L * tau
    lr_final: float = 1e-5
    warmup: int = 50
    rejuvenation: float = 0.05
    bank_noise: float = 0.015
    flip: bool = True
    crop_padding: int = 0  # random crops after reflect-padding by this many pixels
    holdout: int = 0  # the last `holdout` images are kept out of training
    skimage_crops: int = 0  # extra training crops of free photographs (training.data)
    calibrate_images: int = 32  # held-out images for the card's (eps, tau, T); 0: none
    psnr_floor: float = 30.0  # the calibration keeps at least this PSNR if it can
    checkpoint_every: int = 200
    checkpoint_seconds: float = 600.0  # ... or once this long has passed since the last one
    bf16: bool = False  # CUDA: bf16 autocast and channels_last in the updates
    compile: bool = False  # "ddpm": torch.compile the U-Net of the training step
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights and register it
    init_from: str | None = None  # a registry entry whose weights the run starts from
    out_dir: str = "runs/ebm"
    registry: str = "models"
    device: str = "auto"
    seed: int = 0
    command: str = ""
    extra: dict[str, str] = field(default_factory=dict)
