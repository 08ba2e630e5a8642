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

DDPM ("ddpm", ``DiffusionTrainer``): a diffusers U-Net learns to predict the noise
(Ho et al., 2020) on the first t_max steps of the schedule only, the part that
purification runs (pureebm.diffusion; PureGen found t_max = 250 of 1000 better
than all of them), each update:

    t ~ U{1 .. t_max},  z ~ N(0, I),  x_t = sqrt(abar_t) x + sqrt(1 - abar_t) z
    L = mean || eps_theta(x_t, t) - z ||^2

Unclamped chains with lr 2e-4 diverged here (the energy gap grew without bound
after ~700 updates); the clamp, the clip and the paper's lr 1e-4 prevent that.

The learning rate warms up linearly, then follows a cosine down to lr_final.
Checkpoints are safetensors (weights, Adam moments, bank) with the counters in
the file's metadata, so nothing is pickled and a run resumes exactly where it
stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from pureebm import diffusion
from pureebm.archives import load_image_array
from pureebm.atomic import atomic_path
from pureebm.augment import flip_and_crop
from pureebm.diffusion import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS
from pureebm.filtering import clean_threshold
from pureebm.langevin import langevin_chain, purify, resolve_device, to_unit_range
from pureebm.manifest import DiffusionSchedule, Manifest, TrainingRecord
from pureebm.nets import MIN_IMAGE_SIZE, build_energy_net
from pureebm.params import TrainConfig
from pureebm.pipeline import model_input, padded_shape
from pureebm.plots import amplified_difference, image_rows, line_chart
from pureebm.purifiers.ddpm import DDPMSpec
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.quality import (
    CALIBRATION_PERTURBATIONS,
    CALIBRATION_STEPS,
    Calibration,
    budgeted,
    calibrate,
    calibration_cost,
    calibration_settings,
    card,
    standard_perturbations,
)
from pureebm.registry import Registry

CHECKPOINT = "checkpoint.safetensors"


def learning_rate(config: TrainConfig, step: int, wall_time: float = 0.0) -> float:
    """Linear warm-up over ``config.warmup`` updates, then a cosine down to lr_final
    that ends at whichever budget runs out first: the iterations or ``max_seconds``
    of updates (``wall_time`` spent so far), so a time-bounded run ends cooled down."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.iterations - config.warmup, 1)
    if config.max_seconds > 0:
        progress = max(progress, wall_time / config.max_seconds)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr_final + (config.lr - config.lr_final) * cosine


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)

        images = np.concatenate([load_image_array(p) for p in config.data])
        # calibration uses held-out images where there are any
        heldout = images[-max(config.holdout, config.calibrate_images, 1) :]
        if config.holdout:
            images = images[: -config.holdout]
        if config.skimage_crops:
            size = images.shape[1]
            crops = photograph_crops(config.skimage_crops, size, config.seed)
            images = np.concatenate([images, crops])
        images = as_training_images(images)
        self.heldout = as_training_images(heldout, channels=images.shape[3])
        self.data = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.n_c, self.image_size = self.data.shape[1], self.data.shape[2]

        self.net = self.build_net().to(self.device)
        if config.bf16 and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        if config.recipe == "ddpm":  # no MCMC; the figures of "dsm" still show a bank
            self.bank = torch.empty(0, *self.data.shape[1:], device=self.device)
        else:
            self.bank = self.fresh_states(min(config.bank_size, len(self.data)))
        self.step = 0
        self.checkpointed_step = -1
        self.wall_time = 0.0
        self.history: list[dict[str, float]] = []
        self.showcase = self.data[torch.linspace(0, len(self.data) - 1, 8).long()].cpu()
        self.purify_params = LangevinSpec(eps=config.eps, tau=config.tau)

    def build_net(self) -> nn.Module:
        return build_energy_net(self.config.architecture, n_c=self.n_c, n_f=self.config.n_f)

    def fresh_states(self, n: int) -> torch.Tensor:
        """n random data images plus N(0, bank_noise^2), in [-1, 1]."""
        c = self.config
        idx = torch.randint(0, len(self.data), (n,), generator=self.generator, device=self.device)
        x = to_unit_range(flip_and_crop(self.data[idx], self.generator, c.flip, c.crop_padding))
        noise = torch.randn(x.shape, generator=self.generator, device=self.device)
        return x + self.config.bank_noise * noise

    def uses_dsm(self) -> bool:
        c = self.config
        return c.recipe == "dsm" or (c.recipe == "dsm+ml" and self.step < c.pretrain_iterations)

    def data_batch(self) -> torch.Tensor:
        c = self.config
        idx = torch.randint(
            0, len(self.data), (c.batch_size,), generator=self.generator, device=self.device
        )
        return to_unit_range(flip_and_crop(self.data[idx], self.generator, c.flip, c.crop_padding))

    def optimize(self, loss: torch.Tensor, scale: float) -> None:
        """One Adam step on ``loss * scale``; the clip sees the scaled gradient."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.wall_time)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()

    def update(self) -> dict[str, float]:
        """One update; returns the figures the curves plot."""
        loss, gap = self.dsm_update() if self.uses_dsm() else self.ml_update()
        return {"loss": loss, "energy_gap": gap}

    def dsm_update(self) -> tuple[float, float]:
        """Returns the DSM loss and the energy gap E(x~) - E(x) at the sampled sigmas."""
        c = self.config
        data = self.data_batch()
        u = torch.rand(len(data), 1, 1, 1, generator=self.generator, device=self.device)
        sigma = c.sigma_min * (c.sigma_max / c.sigma_min) ** u
        n = self.dsm_noise(data.shape)
        noisy = (data + sigma * n).requires_grad_(True)
        e_noisy = self.net(noisy)
        (grad_e,) = torch.autograd.grad(e_noisy.sum(), noisy, create_graph=True)
        loss = (sigma * grad_e / c.tau - n).pow(2).flatten(1).sum(1).mean() / data[0].numel()
        self.optimize(loss, 1.0)
        with torch.no_grad():
            gap = (e_noisy - self.net(data)).mean() / c.tau
        return loss.item(), gap.item()

    def dsm_noise(self, shape: torch.Size) -> torch.Tensor:
        """Unit-variance Gaussian noise, constant on b x b squares, b drawn per
        batch from ``noise_blocks`` (b = 1: white noise)."""
        blocks = self.config.noise_blocks
        pick = torch.randint(0, len(blocks), (1,), generator=self.generator, device=self.device)
        b = blocks[int(pick)]
        n, c, h, w = shape
        coarse = (n, c, -(-h // b), -(-w // b))
        noise = torch.randn(coarse, generator=self.generator, device=self.device)
        return noise.repeat_interleave(b, 2).repeat_interleave(b, 3)[:, :, :h, :w]

    def ml_update(self) -> tuple[float, float]:
        c = self.config
        idx = torch.randint(
            0, len(self.bank), (c.batch_size,), generator=self.generator, device=self.device
        )
        states = self.bank[idx]
        rejuvenate = torch.rand(c.batch_size, generator=self.generator, device=self.device)
        rejuvenate = rejuvenate < c.rejuvenation
        if rejuvenate.any():
            states[rejuvenate] = self.fresh_states(int(rejuvenate.sum()))

        def noise(step: int) -> torch.Tensor:
            return torch.randn(states.shape, generator=self.generator, device=self.device)

        samples = langevin_chain(
            self.net, states, c.mcmc_steps, c.eps, c.tau, noise, bounds=(-1.0, 1.0)
        )
        self.bank[idx] = samples

        data = self.data_batch()
        e_data, e_samples = self.net(data).mean(), self.net(samples).mean()
        loss = (e_data - e_samples) / c.tau
        self.optimize(loss, c.tau)  # Adam is scale-free; the clip is on the unscaled gradient
        return loss.item(), (e_samples - e_data).item()

    def out_of_time(self) -> bool:
        return 0 < self.config.max_seconds <= self.wall_time

    def run(self) -> Manifest:
        """Updates until the iterations or ``max_seconds`` run out, checkpointing every
        ``checkpoint_every`` updates or ``checkpoint_seconds``, and at the end; then
        the registry entry."""
        c = self.config
        bar = tqdm(total=c.iterations, initial=self.step, desc="train", unit="it")
        last_checkpoint = time.perf_counter()
        while self.step < c.iterations and not self.out_of_time():
            started = time.perf_counter()
            with self.update_precision():
                figures = self.update()
            self.wall_time += time.perf_counter() - started
            self.step += 1
            self.history.append({"step": self.step, **figures})
            bar.set_postfix({k: f"{v:.3g}" for k, v in figures.items()})
            bar.update(1)
            due = time.perf_counter() - last_checkpoint >= c.checkpoint_seconds
            if due or self.step % c.checkpoint_every == 0:
                self.save_checkpoint()
                last_checkpoint = time.perf_counter()
        bar.close()
        if self.out_of_time():
            tqdm.write(f"stopped at step {self.step}: {c.max_seconds:g} s of updates spent")
        if self.checkpointed_step != self.step:
            self.save_checkpoint()
        return self.register()

    def update_precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when asked (``bf16``); the parameters stay float32."""
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, torch.bfloat16, enabled=enabled)

    # -- checkpoints -----------------------------------------------------------

    def save_checkpoint(self) -> None:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        optim = self.optimizer.state_dict()
        for index, state in optim["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = value
        tensors["bank"] = self.bank
        tensors["rng"] = self.generator.get_state()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {
            "step": str(self.step),
            "wall_time": str(self.wall_time),
            "config": json.dumps(asdict(self.config)),
            "history": json.dumps(self.history),
        }
        with atomic_path(self.out / CHECKPOINT) as partial:
            save_file(tensors, partial, metadata=metadata)
        self.checkpointed_step = self.step
        snapshot = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
        save_file(snapshot, self.out / f"weights-step{self.step:06d}.safetensors")
        self.write_figures(self.out / f"step{self.step:06d}")

    def load_checkpoint(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(path, device="cpu")
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        optim = self.optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".")
                optim["state"].setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(optim)
        self.bank = tensors["bank"].to(self.device)
        self.generator.set_state(tensors["rng"])
        self.step = self.checkpointed_step = int(metadata["step"])
        self.wall_time = float(metadata["wall_time"])
        self.history = json.loads(metadata["history"])
        return True

    # -- figures and the registry entry -----------------------------------------

    def write_figures(self, prefix: Path) -> None:
        """Bank samples, clean/purified pairs and the training curves as PNGs."""
        bank = ((self.bank[:16].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        image_rows([bank[:8], bank[8:16]], prefix.with_name(prefix.name + "-bank.png"))
        write_samples_png(
            self.net,
            self.showcase,
            self.purify_params,
            self.device,
            prefix.with_name(prefix.name + "-pairs.png"),
        )
        steps = [h["step"] for h in self.history]
        line_chart(
            {k: [h[k] for h in self.history] for k in ("loss", "energy_gap")},
            self.out / "curves.png",
            x=steps,
            title=f"{self.config.name}: loss and E(samples) - E(data)",
        )

    def recipe_description(self) -> str:
        c = self.config
        parts = [f"{c.architecture} EBM n_f={c.n_f}", f"recipe {c.recipe}", f"batch {c.batch_size}"]
        if c.recipe != "ml":
            parts.append(f"sigma {c.sigma_min:g}-{c.sigma_max:g}")
            if c.noise_blocks != [1]:
                parts.append(f"noise blocks {c.noise_blocks}")
        if c.recipe != "dsm":
            parts.append(f"K={c.mcmc_steps}")
        return ", ".join(parts)

    def gradient_evaluations(self) -> int:
        """Image-sized energy gradients the run computed: K + 2 per image of an ML
        update (its chain, then data and samples), about 3 of a DSM one."""
        c = self.config
        dsm = self.step if c.recipe == "dsm" else 0
        if c.recipe == "dsm+ml":
            dsm = min(self.step, c.pretrain_iterations)
        return c.batch_size * (3 * dsm + (c.mcmc_steps + 2) * (self.step - dsm))

    def calibrate(self) -> Calibration | None:
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
        trained = self.gradient_evaluations()
        settings, steps, images = budgeted(every, CALIBRATION_STEPS, c.calibrate_images, trained)
        cost = calibration_cost(len(settings), steps, images)
        tqdm.write(
            f"calibration: {len(settings)} of {len(every)} (eps, tau) settings x T up to "
            f"{max(steps)} on {images} held-out images = {cost:,} energy gradients "
            f"({cost / max(trained, 1):.0%} of the training's {trained:,})"
        )
        clean = self.heldout[-images:].permute(0, 3, 1, 2).contiguous()
        self.calibration_images = images
        was_training = self.net.training
        calibration = calibrate(
            self.net, clean, settings, steps, psnr_floor=c.psnr_floor, device=self.device
        )
        self.net.train(was_training).requires_grad_(True)
        self.purify_params = calibration.params
        return calibration

    def training_record(self) -> TrainingRecord:
        c = self.config
        description = f"{', '.join(c.data)}: {len(self.data)} images"
        if c.holdout:
            description += f" (last {c.holdout} held out)"
        if c.skimage_crops:
            description += f", including {c.skimage_crops} crops of scikit-image photographs"
        return TrainingRecord(
            data=description,
            command=c.command,
            iterations=self.step,
            wall_time_s=round(self.wall_time, 1),
            hardware=hardware_description(self.device),
        )

    def register(self) -> Manifest:
        c = self.config
        calibration = self.calibrate()
        p = self.purify_params
        manifest = add_calibrated_entry(
            Registry(c.registry),
            self.net,
            dict(
                name=c.name,
                architecture=c.architecture,
                arch_kwargs={"n_c": self.n_c, "n_f": c.n_f},
                image_size=self.image_size,
                channels=self.n_c,
                purifier=LangevinSpec(steps=p.steps, eps=p.eps, tau=p.tau),
                training=self.training_record(),
                description=self.recipe_description(),
            ),
            self.showcase,
            calibration.record(c.psnr_floor, self.calibration_images) if calibration else None,
            self.device,
            self.heldout[-c.calibrate_images :].permute(0, 3, 1, 2) if c.calibrate_images else None,
            self.out / "curves.png",
        )
        return manifest


class DiffusionTrainer(Trainer):
    """The "ddpm" recipe (module docstring): the noise-prediction loss on t <= t_max, the
    same checkpoints, curves and progress as an EBM's; the entry's card is PureDDPM's
    PSNR and r on held-out images at a few t* around the default."""

    def __init__(self, config: TrainConfig) -> None:
        self.schedule = DiffusionSchedule(trained_below=config.trained_below)
        self.abar = diffusion.alphas_cumprod(self.schedule).float()
        super().__init__(config)
        self.abar = self.abar.to(self.device)
        self.purify_params = DDPMSpec(steps=config.t_star)

    def unet_config(self) -> dict:
        return {
            **(self.config.unet or diffusion.CPU_UNET),
            "in_channels": self.n_c,
            "out_channels": self.n_c,
        }

    def diffusers_config(self) -> dict:
        """config.json beside the weights, so UNet2DModel.from_pretrained opens them too."""
        return {"_class_name": "UNet2DModel", **self.arch_kwargs}

    def build_net(self) -> nn.Module:
        unet = diffusion.build_unet(self.unet_config())
        self.arch_kwargs = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        return unet

    def update(self) -> dict[str, float]:
        x0 = self.data_batch()
        t = torch.randint(
            1,
            self.schedule.trained_below + 1,
            (len(x0),),
            generator=self.generator,
            device=self.device,
        )
        z = torch.randn(x0.shape, generator=self.generator, device=self.device)
        abar = self.abar[t - 1].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * z
        loss = (self.net(x_t, t - 1).sample - z).pow(2).mean()
        self.optimize(loss, 1.0)
        return {"loss": loss.item()}

    def purified(self, images: torch.Tensor, steps: int) -> torch.Tensor:
        was_training = self.net.training
        out = diffusion.purify(self.net, images, self.schedule, steps, device=self.device, seed=0)
        self.net.train(was_training)
        return out.images

    def write_figures(self, prefix: Path) -> None:
        pairs = self.purified(self.showcase, self.config.t_star)
        image_rows(
            [self.showcase, pairs, amplified_difference(pairs, self.showcase)],
            prefix.with_name(prefix.name + "-pairs.png"),
        )
        line_chart(
            {"loss": [h["loss"] for h in self.history]},
            self.out / "curves.png",
            x=[h["step"] for h in self.history],
            title=f"{self.config.name}: noise-prediction loss (t <= {self.schedule.trained_below})",
        )

    def recipe_description(self) -> str:
        c = self.config
        channels = self.arch_kwargs["block_out_channels"]
        return (
            f"DDPM U-Net {channels}, noise prediction on t <= {c.trained_below}, "
            f"batch {c.batch_size}"
        )

    def register(self) -> Manifest:
        c = self.config
        registry = Registry(c.registry)
        clean = self.heldout[-max(c.calibrate_images, 1) :].permute(0, 3, 1, 2).contiguous()
        fields = dict(
            name=c.name,
            architecture="unet",
            arch_kwargs=self.arch_kwargs,
            image_size=self.image_size,
            channels=self.n_c,
            purifier=DDPMSpec(steps=c.t_star),
            file=DIFFUSERS_WEIGHTS,
            extra_files={DIFFUSERS_CONFIG: json.dumps(self.diffusers_config(), indent=2)},
            diffusion=self.schedule,
            training=self.training_record(),
            description=self.recipe_description(),
        )
        if c.calibrate_images:
            self.net.eval()
            scores = diffusion.purify(
                self.net, clean, self.schedule, 0, device=self.device
            ).energy_before
            fields["energy_threshold"] = clean_threshold(scores.tolist())
        manifest = registry.add(self.net, **fields)
        entry = registry.entry_path(manifest.ref)
        showcase = self.purified(self.showcase, c.t_star)
        image_rows(
            [self.showcase, showcase, amplified_difference(showcase, self.showcase)],
            entry / "samples.png",
        )
        if c.calibrate_images:
            depths = [max(1, c.t_star // 3), max(1, 2 * c.t_star // 3), c.t_star]
            depths = sorted({*depths, min(2 * c.t_star, c.trained_below)})
            # as long as the training at most: U-Net passes, about 3 per image of an update
            budget, runs = 3 * self.step * c.batch_size, 1 + len(CALIBRATION_PERTURBATIONS)
            while len(clean) > 4 and sum(depths) * len(clean) * runs > budget:
                clean = clean[1:]
            while len(depths) > 1 and sum(depths) * len(clean) * runs > budget:
                depths.pop()
            cost = sum(depths) * len(clean) * runs
            tqdm.write(
                f"quality card: PureDDPM at t* = {depths} on {len(clean)} held-out images = "
                f"{cost:,} U-Net passes ({cost / max(budget, 1):.0%} of the training's {budget:,})"
            )
            perturbations = {
                k: v
                for k, v in standard_perturbations(clean.shape[1:]).items()
                if k in CALIBRATION_PERTURBATIONS
            }

            def purifier(images: torch.Tensor) -> dict[int, torch.Tensor]:
                return {t: self.purified(images, t) for t in depths}

            record = {
                "recommended": {"steps": c.t_star},
                "images": len(clean),
                "card": card(purifier, clean, perturbations),
            }
            (entry / "calibration.json").write_text(json.dumps(record, indent=2))
        if (self.out / "curves.png").exists():
            curves = registry.weights_path(manifest).with_name("curves.png")
            shutil.copyfile(self.out / "curves.png", curves)
        return manifest


def add_calibrated_entry(
    registry: Registry,
    net: nn.Module,
    fields: dict,
    showcase: torch.Tensor,
    calibration: dict | None,
    device: torch.device,
    heldout: torch.Tensor | None = None,
    curves: Path | None = None,
) -> Manifest:
    """Register a preset of ``net`` with its ``fields`` (with ``weights``, a digest
    already stored: a preset of those weights; else the weights are stored too,
    with ``curves``, their training curves), a samples.png of ``showcase``
    purified at the preset's defaults, and its calibration record if it has one.
    ``heldout`` clean images (N x C x H x W uint8) set the energy threshold of
    ``filter=auto``."""
    if heldout is not None and len(heldout):
        energies = purify(net, heldout, LangevinSpec(steps=0), device=device).energy_before
        fields = {**fields, "energy_threshold": clean_threshold(energies.tolist())}
        net.requires_grad_(True)
    if "weights" in fields:
        manifest = registry.add_preset(**fields)
    else:
        manifest = registry.add(net, **fields)
        if curves is not None and curves.exists():
            shutil.copyfile(curves, registry.weights_path(manifest).with_name("curves.png"))
    entry = registry.entry_path(manifest.ref)
    write_samples_png(net, showcase, manifest.purifier, device, entry / "samples.png")
    if calibration is not None:
        (entry / "calibration.json").write_text(json.dumps(calibration, indent=2))
    return manifest


def recalibrate(
    registry: Registry,
    ref: str,
    heldout: np.ndarray,
    psnr_floor: float = 30.0,
    device: str | torch.device = "auto",
    settings: list[tuple[float, float]] | None = None,
    steps: Sequence[int] | None = None,
    energy_filter: float | str | None = None,
) -> tuple[Manifest, Calibration]:
    """Calibrate a preset's (eps, tau, T) again on held-out images (N x H x W x C
    uint8, images the model was not trained on) and register the result as the
    name's next version: a preset of the same weights (never a copy of them) with
    the new defaults (``energy_filter`` its default filter), the energy threshold
    of filter=auto, ``derived_from`` the old preset, and the new calibration.json.
    ``settings`` are the (eps, tau) pairs to try, by default
    ``calibration_settings`` around the preset's; ``steps`` the T to try, by
    default ``CALIBRATION_STEPS``."""
    device = resolve_device(device)
    model = registry.load(ref, device)
    old = model.manifest
    if not isinstance(old.purifier, LangevinSpec) or old.purifier.family != "langevin":
        raise ValueError(f"{old.ref} is not an EBM's Langevin preset: nothing to calibrate")
    clean = as_training_images(heldout, channels=old.channels).permute(0, 3, 1, 2).contiguous()
    if settings is None:
        settings = calibration_settings(old.purifier.eps, old.purifier.tau)
    calibration = calibrate(
        model.net, clean, settings, steps or CALIBRATION_STEPS, psnr_floor, device
    )
    fields = {
        "name": old.name,
        "weights": old.weights.sha256,  # type: ignore[union-attr]
        "purifier": calibration.params,
        "filter": energy_filter,
        "derived_from": old.ref,
        "description": f"calibrated again from {old.ref}: new defaults on the same weights",
    }
    showcase = clean[torch.linspace(0, len(clean) - 1, 8).long()]
    manifest = add_calibrated_entry(
        registry,
        model.net,
        fields,
        showcase,
        calibration.record(psnr_floor, len(clean)),
        device,
        clean,
    )
    return manifest, calibration


def as_training_images(images: np.ndarray, channels: int | None = None) -> torch.Tensor:
    """N x H x W x 3 uint8 -> the model's view, as purification will see it: one
    channel when every image is grey (R = G = B) or ``channels`` is 1, and sides
    under the nets' 32 pixels edge-padded to 32, by ``pureebm.pipeline``'s own
    conversion and padding."""
    if channels is None:
        channels = 1 if np.array_equal(images, images[..., :1].repeat(3, axis=3)) else 3
    images = model_input(images, channels)  # luma for one channel, as purification sees it
    height, width = padded_shape(images.shape[1:3], MIN_IMAGE_SIZE)
    pad_h, pad_w = height - images.shape[1], width - images.shape[2]
    if pad_h or pad_w:
        images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(images))


def photograph_crops(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` random size x size crops of scikit-image's colour photographs,
    each taken at a random scale (the photograph shrunk 1-8x first) and flipped
    at random: natural-image statistics beyond a small training set."""
    from skimage import data as photographs
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    sources = [
        getattr(photographs, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")
    ]
    scales = [1 / 8, 1 / 4, 1 / 2, 1]
    pyramid = [
        (rescale(p, s, channel_axis=2, anti_aliasing=True) * 255).round().astype(np.uint8)
        for p in sources
        for s in scales
    ]
    pyramid = [p for p in pyramid if min(p.shape[:2]) >= size]
    crops = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        image = pyramid[rng.integers(len(pyramid))]
        y = rng.integers(image.shape[0] - size + 1)
        x = rng.integers(image.shape[1] - size + 1)
        crop = image[y : y + size, x : x + size]
        crops[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return crops


def write_samples_png(
    net: nn.Module, images: torch.Tensor, params: LangevinSpec, device: torch.device, path: Path
) -> None:
    """Rows: originals, purified with ``params``, difference amplified 4x."""
    was_training = net.training
    purified = purify(net, images, params, device=device, seed=0).images
    net.train(was_training).requires_grad_(True)
    image_rows([images, purified, amplified_difference(purified, images)], path)


def train(config: TrainConfig, resume: bool = False) -> Manifest:
    trainer = DiffusionTrainer(config) if config.recipe == "ddpm" else Trainer(config)
    if resume and trainer.load_checkpoint():
        tqdm.write(f"resumed {config.out_dir} at step {trainer.step}")
    return trainer.run()
