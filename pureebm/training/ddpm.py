"""DDPM training ("ddpm"): a diffusers U-Net learns to predict the noise (Ho et al.,
2020) on the first t_max steps of the schedule only, the part that purification runs
(pureebm.diffusion; PureGen found t_max = 250 of 1000 better than all of them), each
update:

    t ~ U{1 .. t_max},  z ~ N(0, I),  x_t = sqrt(abar_t) x + sqrt(1 - abar_t) z
    L = mean || eps_theta(x_t, t) - z ||^2

The entry's card is PureDDPM's PSNR and r on held-out images at a few t* around the
default; its figures at t* go into the run's visit, and ``lineage.png`` draws them
over the GPU-seconds of every visit of the lineage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pureebm import diffusion
from pureebm.diffusion import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS
from pureebm.filtering import clean_threshold
from pureebm.params import TrainConfig
from pureebm.plots import amplified_difference, image_rows, line_chart
from pureebm.purifiers.ddpm import DDPMSpec
from pureebm.quality import CALIBRATION_PERTURBATIONS, card, standard_perturbations
from pureebm.registry import Registry
from pureebm.registry.records import DiffusionSchedule, Manifest, TrainingRecord
from pureebm.training.loop import TrainingRun


class DDPMObjective:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.schedule = DiffusionSchedule(trained_below=config.trained_below)
        self.abar = diffusion.alphas_cumprod(self.schedule).float()

    def build_net(self, run: TrainingRun) -> nn.Module:
        config = {**(self.config.unet or diffusion.CPU_UNET), "in_channels": run.n_c,
                  "out_channels": run.n_c}  # fmt: skip
        return diffusion.build_unet(config)

    @staticmethod
    def arch_kwargs(run: TrainingRun) -> dict[str, Any]:
        return {k: v for k, v in dict(run.net.config).items() if not k.startswith("_")}

    def start(self, run: TrainingRun) -> None:
        self.abar = self.abar.to(run.device)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
        pass

    def update(self, run: TrainingRun) -> dict[str, float]:
        x0 = run.data_batch()
        t_max = self.schedule.trained_below
        t = torch.randint(1, t_max + 1, (len(x0),), generator=run.generator, device=run.device)
        z = torch.randn(x0.shape, generator=run.generator, device=run.device)
        abar = self.abar[t - 1].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * z
        loss = (run.forward(x_t, t - 1).sample - z).pow(2).mean()
        run.optimize(loss, 1.0)
        return {"loss": loss.detach()}

    def purified(self, run: TrainingRun, images: torch.Tensor, steps: int) -> torch.Tensor:
        was_training = run.net.training
        out = diffusion.purify(run.net, images, self.schedule, steps, device=run.device, seed=0)
        run.net.train(was_training)
        return out.images

    def write_figures(self, run: TrainingRun, prefix: Path) -> None:
        pairs = self.purified(run, run.showcase, self.config.t_star)
        image_rows(
            [run.showcase, pairs, amplified_difference(pairs, run.showcase)],
            prefix.with_name(prefix.name + "-pairs.png"),
        )
        line_chart(
            {"loss": [h["loss"] for h in run.history]},
            run.out / "curves.png",
            x=[h["step"] for h in run.history],
            title=f"{self.config.name}: noise-prediction loss (t <= {self.schedule.trained_below})",
        )

    def description(self, run: TrainingRun) -> str:
        c = self.config
        channels = list(run.net.config.block_out_channels)
        parameters = sum(p.numel() for p in run.net.parameters()) / 1e6
        text = (
            f"DDPM U-Net {channels}, {parameters:.1f} M parameters, noise prediction on "
            f"t <= {c.trained_below}, batch {c.batch_size}"
        )
        if c.ema_decay:
            text += f", EMA {c.ema_decay:g}"
        return text + (f", resumed from {run.lineage.ref}" if run.lineage else "")

    def register(self, run: TrainingRun) -> Manifest:
        c = self.config
        registry = Registry(c.registry)
        clean = run.heldout[-max(c.calibrate_images, 1) :].permute(0, 3, 1, 2).contiguous()
        arch_kwargs = self.arch_kwargs(run)
        diffusers_config = {"_class_name": "UNet2DModel", **arch_kwargs}
        card = self.card(run, clean) if c.calibrate_images else None
        quality = {}
        if card is not None:  # at t*, or the deepest t* the card's budget reached
            depth = max((int(t) for t in card["card"] if int(t) <= c.t_star), default=0)
            at_depth = card["card"].get(str(depth), {})
            quality = {f"{k} at t*={depth}": round(v[0], 4) for k, v in at_depth.items()}
        fields = dict(
            name=c.name,
            architecture="unet",
            arch_kwargs=arch_kwargs,
            image_size=run.image_size,
            channels=run.n_c,
            purifier=DDPMSpec(steps=c.t_star),
            file=DIFFUSERS_WEIGHTS,  # diffusers' own folder: from_pretrained opens it too
            extra_files={DIFFUSERS_CONFIG: json.dumps(diffusers_config, indent=2)},
            diffusion=self.schedule,
            training=run.training_record(quality),
            description=self.description(run),
        )
        if c.calibrate_images:
            run.net.eval()
            scores = diffusion.purify(
                run.net, clean, self.schedule, 0, device=run.device
            ).energy_before
            fields["energy_threshold"] = clean_threshold(scores.tolist())
        manifest = registry.add(run.net, **fields)
        entry = registry.entry_path(manifest.ref)
        showcase = self.purified(run, run.showcase, c.t_star)
        image_rows(
            [run.showcase, showcase, amplified_difference(showcase, run.showcase)],
            entry / "samples.png",
        )
        if card is not None:
            (entry / "calibration.json").write_text(json.dumps(card, indent=2))
        lineage_chart(manifest.weights.training, entry / "lineage.png", manifest.ref)  # type: ignore[union-attr]
        if (run.out / "curves.png").exists():
            shutil.copyfile(
                run.out / "curves.png", registry.weights_path(manifest).with_name("curves.png")
            )
        return manifest

    def card(self, run: TrainingRun, clean: torch.Tensor) -> dict[str, Any]:
        """PureDDPM's quality card at a few t* around the default, costing at most as
        many U-Net passes as the training (about 3 per image of an update)."""
        c = self.config
        depths = [max(1, c.t_star // 3), max(1, 2 * c.t_star // 3), c.t_star]
        depths = sorted({*depths, min(2 * c.t_star, c.trained_below)})
        budget, runs = 3 * run.step * c.batch_size, 1 + len(CALIBRATION_PERTURBATIONS)
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
            return {t: self.purified(run, images, t) for t in depths}

        return {
            "recommended": {"steps": c.t_star},
            "images": len(clean),
            "card": card(purifier, clean, perturbations),
        }


def lineage_chart(training: TrainingRecord, path: Path, ref: str) -> None:
    """The card's figures at t* after each visit, over the lineage's GPU-seconds."""
    visits = [v for v in training.visits if v.quality]
    if not visits:
        return
    seconds, total = [], 0.0
    for visit in training.visits:
        total += 0.0 if visit.hardware.startswith("CPU") else visit.wall_time_s
        if visit.quality:
            seconds.append(total)
    keys = [k for k in visits[-1].quality if all(k in v.quality for v in visits)]
    line_chart(
        {k: [v.quality[k] for v in visits] for k in keys},
        path,
        x=seconds,
        title=f"{ref}: the card after each visit",
        x_label="GPU-seconds of updates so far",
    )
