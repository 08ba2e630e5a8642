"""How well a purifier works: content kept against poison left, and the choice of
(eps, tau, T) that a model's card recommends.

Content kept is PSNR(Psi_T(x), x) on held-out images. Poison left is the share
of a perturbation d that survives: purify x and x + d with the same seed, so
both chains draw the same noise, and

    r = <Psi_T(x + d) - Psi_T(x), d> / <d, d>      (per image)

r = 1 for a purifier that leaves d alone (noise alone gives 1), r = 0 when d is
gone. The perturbations are fixed patterns added to every image: random signs
per pixel or constant on b x b blocks (real triggers look like the latter), and
smooth low-frequency waves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pureebm.langevin import purify
from pureebm.purifiers.langevin import MAX_DRIFT, MAX_EPS, LangevinSpec
from pureebm.statistics import mean_interval


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images (capped at 100 dB for identical ones)."""
    mse = ((a.float() - b.float()) / 255).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def residual(purified_x: torch.Tensor, purified_xd: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Per-image share r of the perturbation d left after purification."""
    moved = (purified_xd.float() - purified_x.float()).flatten(1)
    d = d.float().flatten(1)
    return (moved * d).sum(1) / (d * d).sum(1)


def sign_pattern(shape: Sequence[int], block: int, amplitude: float, seed: int) -> torch.Tensor:
    """Random +-amplitude (amplitude in [0, 1] units, result in 0..255 units),
    constant on block x block squares; shape is C x H x W."""
    c, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 2, (c, -(-h // block), -(-w // block)), generator=generator) * 2 - 1
    full = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w]
    return full.float() * round(amplitude * 255)


def smooth_pattern(shape: Sequence[int], amplitude: float, seed: int) -> torch.Tensor:
    """A sum of random waves of at most 2 cycles per image, scaled to +-amplitude."""
    c, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    pattern = torch.zeros(c, h, w)
    for channel in range(c):
        for _ in range(4):
            fy, fx = torch.randint(-2, 3, (2,), generator=generator).tolist()
            phase = torch.rand(1, generator=generator).item() * 2 * torch.pi
            pattern[channel] += torch.cos(2 * torch.pi * (fy * yy + fx * xx) + phase)
    return (pattern / pattern.abs().max().clamp_min(1e-6) * round(amplitude * 255)).round()


def standard_perturbations(shape: Sequence[int]) -> dict[str, torch.Tensor]:
    """The card's synthetic perturbations (0..255 units), C x H x W each."""
    return {
        "sign 8/255": sign_pattern(shape, 1, 8 / 255, 1),
        "sign 16/255": sign_pattern(shape, 1, 16 / 255, 1),
        "2x2 blocks 8/255": sign_pattern(shape, 2, 8 / 255, 2),
        "4x4 blocks 8/255": sign_pattern(shape, 4, 8 / 255, 4),
        "smooth 8/255": smooth_pattern(shape, 8 / 255, 5),
    }


def perturb(clean: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (clean.float() + d).clamp(0, 255).round().to(torch.uint8)


Purifier = Callable[[torch.Tensor], dict[int, torch.Tensor]]  # uint8 images -> {T: Psi_T}


def langevin_purifier(
    net: nn.Module, params: LangevinSpec, steps: Sequence[int], device: torch.device | str
) -> Purifier:
    """Psi_T for every T in ``steps`` from one seeded chain per call."""

    def apply(images: torch.Tensor) -> dict[int, torch.Tensor]:
        run = purify(
            net, images, params, batch_size=len(images), device=device, seed=0, sweep=steps
        )
        return run.sweep

    return apply


def card(
    purifier: Purifier, clean: torch.Tensor, perturbations: dict[str, torch.Tensor]
) -> dict[str, dict[str, tuple[float, float]]]:
    """{T: {"psnr_db": (mean, +-), "r NAME": (mean, +-), ...}} for one purifier."""
    out_clean = purifier(clean)
    rows: dict[str, dict[str, tuple[float, float]]] = {
        str(t): {"psnr_db": mean_interval(psnr(images, clean).tolist())}
        for t, images in out_clean.items()
    }
    for name, d in perturbations.items():
        perturbed = perturb(clean, d)
        actual_d = perturbed.float() - clean.float()
        for t, images in purifier(perturbed).items():
            rows[str(t)][f"r {name}"] = mean_interval(
                residual(out_clean[t], images, actual_d).tolist()
            )
    return rows


@dataclass(frozen=True)
class Calibration:
    params: LangevinSpec  # the recommended eps, tau and T
    psnr_db: float
    residual: float  # mean r over the structured perturbations
    table: list[dict[str, float]]  # every (eps, tau, T) tried

    def record(self, psnr_floor: float, images: int) -> dict:
        """What a registry entry keeps beside its weights (calibration.json)."""
        return {
            "recommended": self.params.model_dump(),
            "psnr_db": self.psnr_db,
            "residual": self.residual,
            "psnr_floor": psnr_floor,
            "images": images,
            "table": self.table,
        }


CALIBRATION_PERTURBATIONS = ("sign 8/255", "2x2 blocks 8/255", "4x4 blocks 8/255", "smooth 8/255")
CALIBRATION_STEPS = (1, 2, 3, 5, 7, 10, 14, 20, 28, 40)


def calibration_settings(eps: float, tau: float) -> list[tuple[float, float]]:
    """The (eps, tau) pairs the calibration tries, around a starting (eps, tau).

    A step moves x by delta = eps^2 / (2 tau) times -grad E and adds noise of
    std eps = sqrt(2 tau delta). The calibration varies the two apart: the drift
    delta from 1/16 to 64 times the given one (T, swept from 1 to 40, sets how
    far the chain goes), and at each drift the temperature tau down 256-fold,
    which scales the noise down 16-fold. The noise costs PSNR and removes no
    perturbation (r is measured with the same noise on x and x + d), so at equal
    drift the card prefers the lower temperatures.
    """
    drift = eps**2 / (2 * tau)
    settings = []
    for drift_factor in (1, 4, 1 / 4, 16, 1 / 16, 64):  # nearest the given drift first
        for temperature_factor in (1, 1 / 16, 1 / 256):
            t = float(f"{tau * temperature_factor:.6g}")
            e = float(f"{math.sqrt(2 * t * drift * drift_factor):.6g}")
            if e <= MAX_EPS and e * e / (2 * t) <= MAX_DRIFT:
                settings.append((e, t))
    return settings


def calibration_cost(settings: int, steps: Sequence[int], images: int) -> int:
    """Energy-gradient evaluations of a calibration: one chain of max(steps) per
    setting on the clean images and on each perturbed copy."""
    return settings * max(steps) * images * (1 + len(CALIBRATION_PERTURBATIONS))


def budgeted(
    settings: Sequence[tuple[float, float]], steps: Sequence[int], images: int, budget: int
) -> tuple[list[tuple[float, float]], tuple[int, ...], int]:
    """The largest calibration within ``budget`` gradient evaluations, so that a short
    training run is not followed by a long calibration: fewer settings first (the
    list is nearest the starting drift first), then fewer images (down to 4),
    then a shorter sweep of T (down to its first value)."""
    kept, sweep = len(settings), sorted(steps)
    while kept > 1 and calibration_cost(kept, sweep, images) > budget:
        kept -= 1
    while images > 4 and calibration_cost(kept, sweep, images) > budget:
        images -= 1
    while len(sweep) > 1 and calibration_cost(kept, sweep, images) > budget:
        sweep.pop()
    return list(settings[:kept]), tuple(sweep), images


def calibrate(
    net: nn.Module,
    clean: torch.Tensor,
    settings: Sequence[tuple[float, float]],
    steps: Sequence[int] = CALIBRATION_STEPS,
    psnr_floor: float = 30.0,
    device: torch.device | str = "cpu",
) -> Calibration:
    """The (eps, tau, T) that removes most of the perturbations while keeping content.

    Each (eps, tau) in ``settings`` runs one chain swept over ``steps``. Among the
    settings whose clean PSNR is at least ``psnr_floor`` it picks the one with
    the smallest mean r over ``CALIBRATION_PERTURBATIONS``; when none reaches the
    floor, the floor drops 1 dB at a time.
    """
    if not any(t > 0 for t in steps):
        raise ValueError("calibration needs at least one T > 0")
    perturbations = {
        k: v
        for k, v in standard_perturbations(clean.shape[1:]).items()
        if k in CALIBRATION_PERTURBATIONS
    }
    table = []
    for eps, tau in tqdm(settings, desc="calibrate", unit="setting", leave=False):
        params = LangevinSpec(steps=max(steps), eps=eps, tau=tau)
        rows = card(langevin_purifier(net, params, steps, device), clean, perturbations)
        for t in steps:
            row = rows[str(t)]
            r = sum(row[f"r {k}"][0] for k in perturbations) / len(perturbations)
            table.append(
                {"eps": eps, "tau": tau, "steps": t, "psnr_db": row["psnr_db"][0], "residual": r}
            )
    floor = psnr_floor
    while True:
        candidates = [row for row in table if row["psnr_db"] >= floor and row["steps"] > 0]
        if candidates:
            best = min(candidates, key=lambda row: row["residual"])
            params = LangevinSpec(steps=int(best["steps"]), eps=best["eps"], tau=best["tau"])
            return Calibration(params, best["psnr_db"], best["residual"], table)
        floor -= 1.0
