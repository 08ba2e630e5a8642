"""EBM training: maximum likelihood with a persistent MCMC bank, denoising score
matching, or the second as pretraining for the first (``recipe`` "ml", "dsm", "dsm+ml").

Maximum likelihood ("ml"; Nijkamp et al., 2019, as PureEBM trains), each update:

    bank batch  x~ <- bank[idx];  each state replaced by data + N(0, 0.015^2) w.p. 0.05
    samples     x+ <- K Langevin steps from x~  (same eps, tau as the purifier,
                      but each step clamped to the data range [-1, 1])
    loss         L = (mean E(data) - mean E(x+)) / tau
    Adam step on L (gradient norm clipped); x+ written back to the bank

Denoising score matching ("dsm"), each update: no MCMC, one double backward.

    x~ = x + sigma * n,   n ~ N(0, I),   sigma log-uniform in [sigma_min, sigma_max]
    L  = mean || sigma * grad_x E(x~) / tau - n ||^2

At the optimum -grad E(x~) / tau = (E[x | x~] - x~) / sigma^2, the score of the
data smoothed at sigma (Vincent, 2011), so E / tau is -log p_sigma up to a
constant: the energy has the same temperature as under "ml" with the same tau.
With ``noise_blocks`` other than [1], n is also drawn constant on b x b squares
(unit variance per pixel). The same regression then teaches x~ - sigma^2 grad E / tau
to approximate E[x | x~] for coarse-grained noise too, so that the gradient flow
of E removes blocky perturbations, not only pixel noise.
"dsm+ml" runs ``pretrain_iterations`` DSM updates, then ML updates.

Unclamped chains with lr 2e-4 diverged here (the energy gap grew without bound
after ~700 updates); the clamp, the clip and the paper's lr 1e-4 prevent that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pureebm.augment import flip_and_crop
from pureebm.langevin import langevin_chain, to_unit_range
from pureebm.nets import build_energy_net
from pureebm.params import TrainConfig
from pureebm.plots import image_rows, line_chart
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.quality import (
    CALIBRATION_STEPS,
    Calibration,
    budgeted,
    calibrate,
    calibration_cost,
    calibration_settings,
)
from pureebm.registry import Registry
from pureebm.registry.records import Manifest
from pureebm.training.entries import add_calibrated_entry, write_samples_png
from pureebm.training.loop import TrainingRun


class EBMObjective:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.bank = torch.empty(0)
        self.purify_params = LangevinSpec(eps=config.eps, tau=config.tau)
        self.calibration_images = 0

    def build_net(self, run: TrainingRun) -> nn.Module:
        return build_energy_net(self.config.architecture, n_c=run.n_c, n_f=self.config.n_f)

    def start(self, run: TrainingRun) -> None:
        self.bank = self.fresh_states(run, min(self.config.bank_size, len(run.data)))

    def state(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank}

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        self.bank = tensors["bank"].to(device)

    def fresh_states(self, run: TrainingRun, n: int) -> torch.Tensor:
        """n random data images plus N(0, bank_noise^2), in [-1, 1]."""
        c = self.config
        idx = torch.randint(0, len(run.data), (n,), generator=run.generator, device=run.device)
        x = to_unit_range(flip_and_crop(run.data[idx], run.generator, c.flip, c.crop_padding))
        noise = torch.randn(x.shape, generator=run.generator, device=run.device)
        return x + c.bank_noise * noise

    def uses_dsm(self, step: int) -> bool:
        c = self.config
        return c.recipe == "dsm" or (c.recipe == "dsm+ml" and step < c.pretrain_iterations)

    def update(self, run: TrainingRun) -> dict[str, float]:
        loss, gap = self.dsm_update(run) if self.uses_dsm(run.step) else self.ml_update(run)
        return {"loss": loss, "energy_gap": gap}

    def dsm_update(self, run: TrainingRun) -> tuple[float, float]:
        """Returns the DSM loss and the energy gap E(x~) - E(x) at the sampled sigmas."""
        c = self.config
        data = run.data_batch()
        u = torch.rand(len(data), 1, 1, 1, generator=run.generator, device=run.device)
        sigma = c.sigma_min * (c.sigma_max / c.sigma_min) ** u
        n = self.dsm_noise(run, data.shape)
        noisy = (data + sigma * n).requires_grad_(True)
        e_noisy = run.net(noisy)
        (grad_e,) = torch.autograd.grad(e_noisy.sum(), noisy, create_graph=True)
        loss = (sigma * grad_e / c.tau - n).pow(2).flatten(1).sum(1).mean() / data[0].numel()
        run.optimize(loss, 1.0)
        with torch.no_grad():
            gap = (e_noisy - run.net(data)).mean() / c.tau
        return loss.item(), gap.item()

    def dsm_noise(self, run: TrainingRun, shape: torch.Size) -> torch.Tensor:
        """Unit-variance Gaussian noise, constant on b x b squares, b drawn per
        batch from ``noise_blocks`` (b = 1: white noise)."""
        blocks = self.config.noise_blocks
        pick = torch.randint(0, len(blocks), (1,), generator=run.generator, device=run.device)
        b = blocks[int(pick)]
        n, c, h, w = shape
        coarse = (n, c, -(-h // b), -(-w // b))
        noise = torch.randn(coarse, generator=run.generator, device=run.device)
        return noise.repeat_interleave(b, 2).repeat_interleave(b, 3)[:, :, :h, :w]

    def ml_update(self, run: TrainingRun) -> tuple[float, float]:
        c = self.config
        idx = torch.randint(
            0, len(self.bank), (c.batch_size,), generator=run.generator, device=run.device
        )
        states = self.bank[idx]
        rejuvenate = torch.rand(c.batch_size, generator=run.generator, device=run.device)
        rejuvenate = rejuvenate < c.rejuvenation
        if rejuvenate.any():
            states[rejuvenate] = self.fresh_states(run, int(rejuvenate.sum()))

        def noise(step: int) -> torch.Tensor:
            return torch.randn(states.shape, generator=run.generator, device=run.device)

        samples = langevin_chain(
            run.net, states, c.mcmc_steps, c.eps, c.tau, noise, bounds=(-1.0, 1.0)
        )
        self.bank[idx] = samples

        data = run.data_batch()
        e_data, e_samples = run.net(data).mean(), run.net(samples).mean()
        loss = (e_data - e_samples) / c.tau
        run.optimize(loss, c.tau)  # Adam is scale-free; the clip is on the unscaled gradient
        return loss.item(), (e_samples - e_data).item()

    # -- figures and the registry entry -----------------------------------------

    def write_figures(self, run: TrainingRun, prefix: Path) -> None:
        """Bank samples, clean/purified pairs and the training curves as PNGs."""
        bank = ((self.bank[:16].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        image_rows([bank[:8], bank[8:16]], prefix.with_name(prefix.name + "-bank.png"))
        write_samples_png(
            run.net,
            run.showcase,
            self.purify_params,
            run.device,
            prefix.with_name(prefix.name + "-pairs.png"),
        )
        line_chart(
            {k: [h[k] for h in run.history] for k in ("loss", "energy_gap")},
            run.out / "curves.png",
            x=[h["step"] for h in run.history],
            title=f"{self.config.name}: loss and E(samples) - E(data)",
        )

    def architecture(self, run: TrainingRun) -> tuple[str, dict[str, Any]]:
        """The net's architecture and arguments: the resumed entry's, or the config's."""
        if run.lineage is not None and run.lineage.weights is not None:
            return run.lineage.weights.architecture, dict(run.lineage.weights.arch_kwargs)
        return self.config.architecture, {"n_c": run.n_c, "n_f": self.config.n_f}

    def description(self, run: TrainingRun) -> str:
        c = self.config
        architecture, kwargs = self.architecture(run)
        parts = [
            f"{architecture} EBM n_f={kwargs.get('n_f')}",
            f"recipe {c.recipe}",
            f"batch {c.batch_size}",
        ]
        if c.recipe != "ml":
            parts.append(f"sigma {c.sigma_min:g}-{c.sigma_max:g}")
            if c.noise_blocks != [1]:
                parts.append(f"noise blocks {c.noise_blocks}")
        if c.recipe != "dsm":
            parts.append(f"K={c.mcmc_steps}")
        if c.ema_decay:
            parts.append(f"EMA {c.ema_decay:g}")
        if run.lineage is not None:
            parts.append(f"resumed from {run.lineage.ref}")
        return ", ".join(parts)

    def gradient_evaluations(self, steps: int) -> int:
        """Image-sized energy gradients ``steps`` updates computed: K + 2 per image of
        an ML update (its chain, then data and samples), about 3 of a DSM one."""
        c = self.config
        dsm = steps if c.recipe == "dsm" else 0
        if c.recipe == "dsm+ml":
            dsm = min(steps, c.pretrain_iterations)
        return c.batch_size * (3 * dsm + (c.mcmc_steps + 2) * (steps - dsm))

    def calibrate(self, run: TrainingRun) -> Calibration | None:
        """The card's recommended (eps, tau, T) on held-out images, around the
        drift that the training implies: the training chains' eps^2 / (2 tau)
        under maximum likelihood; under DSM, where -grad E / tau fits the score
        (x - x~) / sigma^2, tau * sigma_min^2, the drift that takes x~ back to x
        in one step at the smallest noise level trained."""
        c = self.config
        if not c.calibrate_images:
            return None
        eps = math.sqrt(2) * c.tau * c.sigma_min if c.recipe == "dsm" else c.eps
        every = calibration_settings(eps, c.tau)
        trained = self.gradient_evaluations(run.step)
        settings, steps, images = budgeted(every, CALIBRATION_STEPS, c.calibrate_images, trained)
        cost = calibration_cost(len(settings), steps, images)
        tqdm.write(
            f"calibration: {len(settings)} of {len(every)} (eps, tau) settings x T up to "
            f"{max(steps)} on {images} held-out images = {cost:,} energy gradients "
            f"({cost / max(trained, 1):.0%} of the training's {trained:,})"
        )
        clean = run.heldout[-images:].permute(0, 3, 1, 2).contiguous()
        self.calibration_images = images
        was_training = run.net.training
        calibration = calibrate(
            run.net, clean, settings, steps, psnr_floor=c.psnr_floor, device=run.device
        )
        run.net.train(was_training).requires_grad_(True)
        self.purify_params = calibration.params
        return calibration

    def register(self, run: TrainingRun) -> Manifest:
        c = self.config
        calibration = self.calibrate(run)
        p = self.purify_params
        architecture, arch_kwargs = self.architecture(run)
        return add_calibrated_entry(
            Registry(c.registry),
            run.net,
            dict(
                name=c.name,
                architecture=architecture,
                arch_kwargs=arch_kwargs,
                image_size=run.image_size,
                channels=run.n_c,
                purifier=LangevinSpec(steps=p.steps, eps=p.eps, tau=p.tau),
                training=run.training_record(),
                description=self.description(run),
            ),
            run.showcase,
            calibration.record(c.psnr_floor, self.calibration_images) if calibration else None,
            run.device,
            run.heldout[-c.calibrate_images :].permute(0, 3, 1, 2) if c.calibrate_images else None,
            run.out / "curves.png",
        )
