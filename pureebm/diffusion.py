"""The PureDDPM purifier: diffuse each image a short way forward, then run the
reverse chain of a trained diffusion model back (PureGen, arXiv 2405.18627).

With a schedule beta_1 .. beta_N (diffusers' ``DDPMScheduler``: N = 1000, linear
from 1e-4 to 0.02), alpha_t = 1 - beta_t, abar_t = alpha_1 ... alpha_t, and a net
eps_theta(x, t) trained to predict the noise on t <= t_max:

    x_{t*}  = sqrt(abar_{t*}) x_0 + sqrt(1 - abar_{t*}) z_0                 ~ q(x_{t*} | x_0)
    for t = t*, ..., 1:
      x0_hat  = clamp((x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t), -1, 1)
      mu_t    = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0_hat
                + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
      x_{t-1} = mu_t + sigma_t z_t,   sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t),  z_1 = 0
    Psi(x)  = round_8bit(x_0)

mu_t and sigma_t^2 are the mean and variance of the posterior q(x_{t-1} | x_t, x0_hat),
as ``DDPMScheduler.step`` computes them (tests/test_diffusion.py holds the two
equal). Here t counts from 1; diffusers counts timesteps from 0, so the net is
called with t - 1. A DDPM job's ``steps`` is t*: how far forward it diffuses and
how many reverse steps it runs back (the paper: t* = 75 of N = 1000).

z_t is image i's own noise from (seed, i) (``pureebm.noise``), as in the Langevin
chain, so an image's result does not depend on its batch. The U-Net is fully
convolutional up to its downsampling: an image is edge-padded to a multiple of
``pureebm.purifiers.ddpm.size_multiple`` (and at least the model's size) and cropped
back afterwards.

Each image's score (the report's "energy") is its denoising error at a fixed
t_s, with one fixed noise draw for every image, so it is a function of the image
alone: mean_pixels (eps_theta(sqrt(abar_s) x + sqrt(1 - abar_s) z, s) - z)^2.
Images off the model's data score higher, as poisons do under the EBM's energy.

diffusers is the optional extra ``pureebm[ddpm]``; it is imported only when a
DDPM is built or run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from pureebm.compiled import FixedBatch, once
from pureebm.interrupts import checkpoint
from pureebm.langevin import Speedups, resolve_device, to_uint8, to_unit_range
from pureebm.noise import ImageNoise, gaussian
from pureebm.purifiers.base import Purified
from pureebm.registry.records import DiffusionSchedule

if TYPE_CHECKING:
    from torch import nn

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' own folder layout
DIFFUSERS_CONFIG = "config.json"

CPU_UNET: dict[str, Any] = {  # the U-Net that `pureebm train --recipe ddpm` builds by default
    "sample_size": 32,
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"] * 3,
    "up_block_types": ["UpBlock2D"] * 3,
    "norm_num_groups": 8,
    "add_attention": False,  # fully convolutional: an image costs its pixels, not their square
}


def unet_with_channels(channels: list[int]) -> dict[str, Any]:
    """CPU_UNET with ``channels`` per level (as many levels as channels)."""
    levels = len(channels)
    return {
        **CPU_UNET,
        "block_out_channels": channels,
        "down_block_types": ["DownBlock2D"] * levels,
        "up_block_types": ["UpBlock2D"] * levels,
    }


NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> eps_theta(x_t, t)
SCORE_SEED = 0x5C0BE  # the one noise draw of every image's denoising score


def install_hint() -> str:
    return "DDPM models need diffusers: pip install 'pureebm[ddpm]'"


def build_unet(config: dict[str, Any]) -> nn.Module:
    """A diffusers ``UNet2DModel`` from its config (a registry entry's arch_kwargs)."""
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise ImportError(install_hint()) from e
    return UNet2DModel.from_config(config)


def alphas_cumprod(schedule: DiffusionSchedule) -> torch.Tensor:
    """abar_1 .. abar_N (float64; entry t - 1 is abar_t), from diffusers' scheduler."""
    return scheduler_of(schedule).alphas_cumprod.to(torch.float64)


def scheduler_of(schedule: DiffusionSchedule) -> Any:
    try:
        from diffusers import DDPMScheduler
    except ImportError as e:
        raise ImportError(install_hint()) from e
    return DDPMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule=schedule.beta_schedule,
    )


def diffuse(x0: torch.Tensor, abar: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z, a draw of q(x_t | x_0) for z ~ N(0, I)."""
    a = float(abar[t - 1])
    return a**0.5 * x0 + (1 - a) ** 0.5 * z


def reverse_step(
    x_t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, t: int, z: torch.Tensor | None
) -> torch.Tensor:
    """x_{t-1} = mu_t + sigma_t z from x_t and eps_theta(x_t, t), t >= 1 (module docstring)."""
    a_t = float(abar[t - 1])
    a_prev = float(abar[t - 2]) if t > 1 else 1.0
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    x0_hat = ((x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1, 1)
    mean = a_prev**0.5 * beta_t / (1 - a_t) * x0_hat + alpha_t**0.5 * (1 - a_prev) / (1 - a_t) * x_t
    if t == 1 or z is None:
        return mean
    return mean + (beta_t * (1 - a_prev) / (1 - a_t)) ** 0.5 * z


def ddpm_chain(
    eps_theta: NoisePredictor,
    x0: torch.Tensor,
    t_star: int,
    abar: torch.Tensor,
    noise: Callable[[int], torch.Tensor],
) -> torch.Tensor:
    """Diffuse ``x0`` to t* with ``noise(0)``, then run t* reverse steps; ``noise(k)``
    is the k-th reverse step's z (step t = t* - k + 1). Each step is a
    cancellation point (``pureebm.interrupts``) that tells how far the chain is."""
    if t_star == 0:
        return x0
    x = diffuse(x0, abar, t_star, noise(0))
    for k, t in enumerate(range(t_star, 0, -1), 1):
        checkpoint(len(x) * (k - 1) / t_star)
        x = reverse_step(x, eps_theta(x, t), abar, t, noise(k) if t > 1 else None)
    return x


def noise_predictor(unet: nn.Module, speedups: Speedups = Speedups()) -> NoisePredictor:
    """eps_theta(x, t) from a diffusers U-Net, which counts timesteps from 0, with the
    chosen speedups: channels_last, bf16 autocast, and a compiled U-Net at a fixed
    batch shape (the timestep is a tensor, so every t runs the same graph)."""
    layout = torch.channels_last if speedups.channels_last else torch.contiguous_format
    unet = unet.to(memory_format=layout)

    def forward(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return unet(x, timesteps).sample

    if speedups.compile:
        forward = once(unet, ("ddpm", speedups), lambda: FixedBatch(forward))

    def eps_theta(x: torch.Tensor, t: int) -> torch.Tensor:
        timesteps = torch.full((len(x),), t - 1, device=x.device, dtype=torch.long)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=speedups.bf16):
            return forward(x.contiguous(memory_format=layout), timesteps).float()

    return eps_theta


def denoising_error(
    eps_theta: NoisePredictor, x0: torch.Tensor, abar: torch.Tensor, t_s: int
) -> torch.Tensor:
    """Each image's mean squared error of eps_theta at t_s, with one noise draw shared
    by every image (a function of the image alone)."""
    same = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
    z = gaussian(SCORE_SEED, same, torch.zeros(1, dtype=torch.long), tuple(x0.shape[1:]))[0]
    z = z.to(x0.device, x0.dtype)
    return (eps_theta(diffuse(x0, abar, t_s, z), t_s) - z).pow(2).flatten(1).mean(1)


@torch.no_grad()
def purify(
    unet: nn.Module,
    images: torch.Tensor,
    schedule: DiffusionSchedule,
    steps: int,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int | None = None,
    indices: torch.Tensor | None = None,
    speedups: Speedups = Speedups(),
) -> Purified:
    """Apply PureDDPM with t* = ``steps`` to uint8 images (N x C x H x W, one size, a
    multiple of the U-Net's downsampling). Image i draws its noise from (``seed``,
    ``indices[i]``) (0 .. N - 1 by default; no seed: a random one). The result's
    energies are the denoising errors of the input and of the output. ``speedups``
    are the optional GPU options (``noise_predictor``)."""
    if not 0 <= steps <= schedule.trained_below:
        raise ValueError(
            f"t* = {steps} is outside the model's trained t <= {schedule.trained_below}"
        )
    device = resolve_device(device)
    unet = unet.to(device).eval()
    eps_theta = noise_predictor(unet, speedups)
    abar = alphas_cumprod(schedule)
    seed = int(torch.randint(0, 2**62, ())) if seed is None else seed
    indices = torch.arange(len(images)) if indices is None else indices
    outputs, before, after = [], [], []
    for start in range(0, len(images), batch_size):
        x0 = to_unit_range(images[start : start + batch_size].to(device))
        noise = ImageNoise(
            seed,
            indices[start : start + batch_size].to(device),
            tuple(x0.shape[1:]),
            steps,
            x0.dtype,
        )
        purified = to_uint8(ddpm_chain(eps_theta, x0, steps, abar, noise))
        before.append(denoising_error(eps_theta, x0, abar, schedule.score_step).cpu())
        after.append(
            denoising_error(eps_theta, to_unit_range(purified), abar, schedule.score_step).cpu()
        )
        outputs.append(purified.cpu())
    if not outputs:
        return Purified(images.clone(), torch.empty(0), torch.empty(0))
    return Purified(torch.cat(outputs), torch.cat(before), torch.cat(after))
