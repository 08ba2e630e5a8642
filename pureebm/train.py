"""Maximum-likelihood EBM training with a persistent MCMC bank (DESIGN.md section 1).

Each update:

    bank batch  x~ <- bank[idx];  each state replaced by data + N(0, 0.015^2) w.p. 0.05
    samples     x+ <- K Langevin steps from x~  (same eps, tau as the purifier,
                      but each step clamped to the data range [-1, 1])
    loss         L = (mean E(data) - mean E(x+)) / tau
    Adam step on L (gradient norm clipped); x+ written back to the bank

Unclamped chains with lr 2e-4 diverged here (the energy gap grew without bound
after ~700 updates); the clamp, the clip and the paper's lr 1e-4 prevent that.

The learning rate warms up linearly, then follows a cosine down to lr_final.
Checkpoints are safetensors (weights, Adam moments, bank) with the counters in
the file's metadata, so nothing is pickled and a run resumes exactly where it
stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from pureebm import formats
from pureebm.langevin import LangevinParams, langevin_chain, purify, resolve_device, to_unit_range
from pureebm.nets import build_energy_net
from pureebm.plots import amplified_difference, image_rows, line_chart
from pureebm.registry import LangevinDefaults, Manifest, Registry, TrainingRecord

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainConfig:
    data: list[str]
    name: str = "ebm"
    architecture: str = "conv"
    n_f: int = 32
    iterations: int = 1000
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
    checkpoint_every: int = 200
    out_dir: str = "runs/ebm"
    registry: str = "models"
    device: str = "auto"
    seed: int = 0
    command: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.iterations - config.warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr_final + (config.lr - config.lr_final) * cosine


def augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and reflect-padded random crops, per image."""
    if config.flip:
        flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = config.crop_padding
    if pad > 0:
        h, w = x.shape[2:]
        padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator, device=x.device)
        x = torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
        )
    return x


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

        images = np.concatenate([formats.load_image_array(p) for p in config.data])
        if config.holdout:
            images = images[: -config.holdout]
        self.data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(self.device)
        self.n_c, self.image_size = self.data.shape[1], self.data.shape[2]

        self.net = build_energy_net(config.architecture, n_c=self.n_c, n_f=config.n_f)
        self.net = self.net.to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.bank = self.fresh_states(min(config.bank_size, len(self.data)))
        self.step = 0
        self.wall_time = 0.0
        self.history: list[dict[str, float]] = []
        self.showcase = self.data[torch.linspace(0, len(self.data) - 1, 8).long()].cpu()

    def fresh_states(self, n: int) -> torch.Tensor:
        """n random data images plus N(0, bank_noise^2), in [-1, 1]."""
        idx = torch.randint(0, len(self.data), (n,), generator=self.generator, device=self.device)
        x = to_unit_range(augment(self.data[idx], self.config, self.generator))
        noise = torch.randn(x.shape, generator=self.generator, device=self.device)
        return x + self.config.bank_noise * noise

    def update(self) -> tuple[float, float]:
        c = self.config
        idx = torch.randint(
            0, len(self.bank), (c.batch_size,), generator=self.generator, device=self.device
        )
        states = self.bank[idx]
        rejuvenate = torch.rand(c.batch_size, generator=self.generator, device=self.device)
        rejuvenate = rejuvenate < c.rejuvenation
        if rejuvenate.any():
            states[rejuvenate] = self.fresh_states(int(rejuvenate.sum()))
        samples = langevin_chain(
            self.net, states, c.mcmc_steps, c.eps, c.tau, self.generator, bounds=(-1.0, 1.0)
        )
        self.bank[idx] = samples

        data_idx = torch.randint(
            0, len(self.data), (c.batch_size,), generator=self.generator, device=self.device
        )
        data = to_unit_range(augment(self.data[data_idx], c, self.generator))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(c, self.step)
        e_data, e_samples = self.net(data).mean(), self.net(samples).mean()
        loss = (e_data - e_samples) / c.tau
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        (loss * c.tau).backward()  # Adam is scale-free; the clip is on the unscaled gradient
        nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        self.optimizer.step()
        return loss.item(), (e_samples - e_data).item()

    def run(self) -> Manifest:
        c = self.config
        bar = tqdm(total=c.iterations, initial=self.step, desc="train", unit="it")
        while self.step < c.iterations:
            started = time.perf_counter()
            loss, gap = self.update()
            self.wall_time += time.perf_counter() - started
            self.step += 1
            self.history.append({"step": self.step, "loss": loss, "energy_gap": gap})
            bar.set_postfix(loss=f"{loss:.3g}", gap=f"{gap:.3g}")
            bar.update(1)
            if self.step % c.checkpoint_every == 0 or self.step == c.iterations:
                self.save_checkpoint()
        bar.close()
        return self.register()

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
        partial = self.out / (CHECKPOINT + ".partial")
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, self.out / CHECKPOINT)
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
        self.step = int(metadata["step"])
        self.wall_time = float(metadata["wall_time"])
        self.history = json.loads(metadata["history"])
        return True

    # -- figures and the registry entry -----------------------------------------

    def write_figures(self, prefix: Path) -> None:
        """Bank samples, clean/purified pairs and the training curves as PNGs."""
        bank = ((self.bank[:16].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        image_rows([bank[:8], bank[8:16]], prefix.with_name(prefix.name + "-bank.png"))
        write_samples_png(
            self.net, self.showcase, self.device, prefix.with_name(prefix.name + "-pairs.png")
        )
        steps = [h["step"] for h in self.history]
        line_chart(
            {k: [h[k] for h in self.history] for k in ("loss", "energy_gap")},
            self.out / "curves.png",
            x=steps,
            title=f"{self.config.name}: loss and E(samples) - E(data)",
        )

    def register(self) -> Manifest:
        c = self.config
        description = f"{', '.join(c.data)}: {len(self.data)} images"
        if c.holdout:
            description += f" (last {c.holdout} held out)"
        manifest = Registry(c.registry).add(
            self.net,
            name=c.name,
            architecture=c.architecture,
            arch_kwargs={"n_c": self.n_c, "n_f": c.n_f},
            image_size=self.image_size,
            channels=self.n_c,
            langevin=LangevinDefaults(eps=c.eps, tau=c.tau),
            training=TrainingRecord(
                data=description,
                command=c.command,
                iterations=self.step,
                wall_time_s=round(self.wall_time, 1),
                hardware=hardware_description(self.device),
            ),
            description=f"{c.architecture} EBM n_f={c.n_f}, K={c.mcmc_steps}, batch {c.batch_size}",
        )
        entry = Path(c.registry) / manifest.name / str(manifest.version)
        write_samples_png(self.net, self.showcase, self.device, entry / "samples.png")
        if (self.out / "curves.png").exists():
            shutil.copyfile(self.out / "curves.png", entry / "curves.png")
        return manifest


def write_samples_png(
    net: nn.Module, images: torch.Tensor, device: torch.device, path: Path
) -> None:
    """Rows: originals, purified at the default T, difference amplified 4x."""
    was_training = net.training
    purified = purify(net, images, LangevinParams(), device=device, seed=0).images
    net.train(was_training).requires_grad_(True)
    image_rows([images, purified, amplified_difference(purified, images)], path)


def train(config: TrainConfig, resume: bool = False) -> Manifest:
    trainer = Trainer(config)
    if resume and trainer.load_checkpoint():
        tqdm.write(f"resumed {config.out_dir} at step {trainer.step}")
    return trainer.run()
