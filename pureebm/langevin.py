"""The PureEBM purifier Psi_T: a short ("mid-run") Langevin chain started at the image.

    x_0     = x scaled to [-1, 1]  (+ optional N(0, sigma_0^2) initial noise)
    x_{t+1} = x_t - (eps^2 / 2) * grad_x E(x_t) / tau + eps * N(0, I),   t = 0 .. T-1
    Psi_T(x) = round_8bit(clamp(x_T, -1, 1))

Paper defaults: T = 150, eps = 1.25e-2, tau = 1e-4, no initial noise, no clamping
inside the chain. Only the gradient with respect to the image is computed; the
network's parameters never receive a gradient here.

Each image draws its own noise from its seed (``pureebm.noise``), and images of
different sizes can share a zero-padded batch whose energy masks every layer to
each image's size (``pureebm.nets.Valid``): an image's result is then the same
(up to float summation order) whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from pureebm.compiled import FixedBatch, once
from pureebm.interrupts import checkpoint
from pureebm.nets import Valid
from pureebm.noise import ImageNoise
from pureebm.purifiers.base import Purified
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.tiles import DEFAULT_TILE_PIXELS, TiledEnergy

Noise = Callable[[int], torch.Tensor]  # t -> N(0, I) of the chain's shape for step t
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, z_{t+1}) -> x_{t+1}


def langevin_update(
    x: torch.Tensor, grad_e: torch.Tensor, z: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    """x_{t+1} = x_t - (eps^2 / 2) grad_x E(x_t) / tau + eps z."""
    return x - eps**2 / 2 / tau * grad_e + eps * z


def langevin_step(energy: Callable[[torch.Tensor], torch.Tensor], eps: float, tau: float) -> Step:
    """One update, the gradient taken by autograd (any energy, tiled ones included)."""

    def step(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        (grad_e,) = torch.autograd.grad(energy(x).sum(), x)
        return langevin_update(x.detach(), grad_e, z, eps, tau)

    return step


def compiled_langevin_step(
    energy: Callable[[torch.Tensor], torch.Tensor], eps: float, tau: float
) -> Step:
    """The same update as one compiled graph (forward, input gradient and update,
    ``torch.func.grad``) at a fixed batch shape (pureebm.compiled)."""

    def step(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        grad_e = torch.func.grad(lambda y: energy(y).sum())(x)
        return langevin_update(x, grad_e, z, eps, tau)

    return FixedBatch(step)


def langevin_chain(
    energy: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    steps: int,
    eps: float,
    tau: float,
    noise: Noise,
    bounds: tuple[float, float] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    step: Step | None = None,
) -> torch.Tensor:
    """Run T = ``steps`` Langevin updates from ``x``; returns x_T (detached).

    ``noise(t)`` is step t's N(0, I) draw, t = 1 .. T. ``bounds`` clamps x after
    every step; the purifier never does, EBM training does to keep its sampling
    chains inside the data range. ``on_step(t, x_t)`` sees every state, x_0
    included, so one chain serves a sweep over T. Each step is a cancellation
    point (``pureebm.interrupts``) that tells how far the chain is. ``step`` is
    the update of (energy, eps, tau) when one is compiled already.
    """
    step = step or langevin_step(energy, eps, tau)
    x = x.detach()
    if on_step is not None:
        on_step(0, x)
    for t in range(1, steps + 1):
        checkpoint(len(x) * (t - 1) / steps)
        x = step(x, noise(t))
        if bounds is not None:
            x = x.clamp(*bounds)
        if on_step is not None:
            on_step(t, x)
    return x


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]: clamp, then round to 8 bits."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


@dataclass(frozen=True)
class Speedups:
    """Engine options for GPUs, off unless chosen. Each gives the same purified
    images within tolerance (tests/test_langevin.py); README has their timings."""

    channels_last: bool = False  # NHWC memory layout for the convolutions
    bf16: bool = False  # the net's forward (and backward) under bfloat16 autocast
    # torch.compile each Langevin step (images up to one tile) and the DDPM's U-Net,
    # at a fixed batch shape (pureebm.compiled)
    compile: bool = False


def energy_function(
    model: nn.Module, device: torch.device, speedups: Speedups, tile_pixels: int
) -> Callable[[torch.Tensor, Valid | None], torch.Tensor]:
    """E(x, valid) as the chain calls it: the net on ``device``, tiled for large
    images, in the chosen precision and layout; ``valid`` sizes for a padded batch."""
    net = model.to(device).eval().requires_grad_(False)
    if speedups.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if hasattr(net, "geometry"):
        net = TiledEnergy(net, tile_pixels)
    layout = torch.channels_last if speedups.channels_last else torch.contiguous_format

    def energy(x: torch.Tensor, valid: Valid | None = None) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=speedups.bf16):
            x = x.contiguous(memory_format=layout)
            return (net(x) if valid is None else net(x, valid)).float()

    return energy


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or "auto" picks CUDA when available, otherwise the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def purify(
    model: nn.Module,
    images: torch.Tensor,
    params: LangevinSpec = LangevinSpec(),
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    sweep: Collection[int] = (),
    tile_pixels: int = DEFAULT_TILE_PIXELS,
    speedups: Speedups = Speedups(),
    sizes: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
) -> Purified:
    """Apply Psi_T to uint8 images (N x C x H x W), ``batch_size`` at a time.

    Image i draws its noise from (``seed``, ``indices[i]``) (pureebm.noise; the
    indices default to 0 .. N - 1, and no seed means a random one), so its
    result does not depend on the batch it runs in. ``sizes`` (N x 2) makes
    ``images`` a zero-padded batch of smaller images, image i valid in its
    top-left ``sizes[i]``; the energy nets then mask every layer to each image's
    size, and the canvas, scored whole, must fit in ``tile_pixels``. Peak memory
    is bounded by the batch size. ``on_batch(n)`` is called after each batch with
    the number of images it held. ``sweep`` lists further step counts t <= T
    whose images Psi_t are kept from the same chains. Images over
    ``tile_pixels`` are scored tile by tile (pureebm.tiles), with the same
    result, so memory stays bounded for large images too. ``speedups`` are the
    optional GPU options.
    """
    if any(t > params.steps for t in sweep):
        raise ValueError(f"sweep {sorted(sweep)} goes past T = {params.steps}")
    if sizes is not None and images.shape[2] * images.shape[3] > tile_pixels:
        raise ValueError("a padded batch is scored whole: its canvas must fit in one tile")
    device = resolve_device(device)
    energy = energy_function(model, device, speedups, tile_pixels)
    compiled_step = None
    if speedups.compile and sizes is None and images.shape[2] * images.shape[3] <= tile_pixels:
        key = ("langevin", device, speedups, tile_pixels, params.eps, params.tau)
        compiled_step = once(
            model, key, lambda: compiled_langevin_step(energy, params.eps, params.tau)
        )
    seed = int(torch.randint(0, 2**62, ())) if seed is None else seed
    indices = torch.arange(len(images)) if indices is None else indices
    if indices.shape != (len(images),):
        raise ValueError(f"{tuple(indices.shape)} indices for {len(images)} images")
    indices = indices.to(device)

    outputs, before, after = [], [], []
    swept: dict[int, list[torch.Tensor]] = {t: [] for t in sweep}

    def keep(t: int, x_t: torch.Tensor) -> None:
        if t in swept:
            swept[t].append(to_uint8(x_t).cpu())

    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        x0 = to_unit_range(images[batch].to(device))
        valid = None if sizes is None else Valid(sizes[batch].to(device))

        def batch_energy(x: torch.Tensor, valid: Valid | None = valid) -> torch.Tensor:
            return energy(x, valid)

        noise = ImageNoise(seed, indices[batch], tuple(x0.shape[1:]), params.steps, x0.dtype)
        if params.init_noise > 0:
            x0 = x0 + params.init_noise * noise(0)
        x_t = langevin_chain(
            batch_energy,
            x0,
            params.steps,
            params.eps,
            params.tau,
            noise,
            on_step=keep,
            step=compiled_step,
        )
        purified = to_uint8(x_t)
        with torch.no_grad():
            before.append(batch_energy(x0).cpu())
            unchanged = params.steps == 0 and params.init_noise == 0  # Psi_0(x) = x exactly
            after.append(before[-1] if unchanged else batch_energy(to_unit_range(purified)).cpu())
        outputs.append(purified.cpu())
        if on_batch is not None:
            on_batch(len(x0))
    if not outputs:
        empty = torch.empty(0)
        return Purified(images.clone(), empty, empty, {t: images.clone() for t in sweep})
    sweep_images = {t: torch.cat(kept) for t, kept in swept.items()}
    return Purified(torch.cat(outputs), torch.cat(before), torch.cat(after), sweep_images)
