"""The training loop every recipe shares: the data, Adam under a linear warm-up and a
cosine decay, a budget of iterations or seconds, checkpoints, figures, progress.

What a recipe computes lives in its ``Objective`` (pureebm.training.ebm, .ddpm): the
net it trains, one update, the state it keeps beside the net (the EBM's MCMC bank),
its figures and its registry entry. The run owns everything else; recipes never
subclass one another.

Checkpoints are safetensors (weights, Adam moments, the objective's state, the
generator) with the counters in the file's metadata, so nothing is pickled and a run
resumes exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from pureebm.atomic import atomic_path
from pureebm.augment import flip_and_crop
from pureebm.containers import load_image_array
from pureebm.langevin import resolve_device, to_unit_range
from pureebm.params import TrainConfig
from pureebm.registry.records import Manifest, TrainingRecord
from pureebm.training.data import as_training_images, photograph_crops

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


class Objective(Protocol):
    def build_net(self, run: TrainingRun) -> nn.Module: ...

    def start(self, run: TrainingRun) -> None:
        """Called once the net exists (a fresh run, before any checkpoint loads)."""

    def update(self, run: TrainingRun) -> dict[str, float]:
        """One parameter update (through ``run.optimize``); the figures to plot."""

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps beside the net and Adam."""

    def load_state(self, tensors: dict[str, torch.Tensor], device: torch.device) -> None: ...

    def write_figures(self, run: TrainingRun, prefix: Path) -> None: ...

    def register(self, run: TrainingRun) -> Manifest: ...


class TrainingRun:
    def __init__(self, config: TrainConfig, objective: Objective) -> None:
        self.config, self.objective = config, objective
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
            crops = photograph_crops(config.skimage_crops, images.shape[1], config.seed)
            images = np.concatenate([images, crops])
        images = as_training_images(images)
        self.heldout = as_training_images(heldout, channels=images.shape[3])
        self.data = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.n_c, self.image_size = self.data.shape[1], self.data.shape[2]
        self.showcase = self.data[torch.linspace(0, len(self.data) - 1, 8).long()].cpu()

        self.net = objective.build_net(self).to(self.device)
        if config.bf16 and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.step = 0
        self.checkpointed_step = -1
        self.wall_time = 0.0
        self.history: list[dict[str, float]] = []
        objective.start(self)

    def data_batch(self) -> torch.Tensor:
        """``batch_size`` training images in [-1, 1], flipped and cropped at random."""
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

    def out_of_time(self) -> bool:
        return 0 < self.config.max_seconds <= self.wall_time

    def update_precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when asked (``bf16``); the parameters stay float32."""
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, torch.bfloat16, enabled=enabled)

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
                figures = self.objective.update(self)
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
        return self.objective.register(self)

    def save_checkpoint(self) -> None:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = value
        tensors |= {f"objective.{k}": v for k, v in self.objective.state().items()}
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
        self.objective.write_figures(self, self.out / f"step{self.step:06d}")

    def load_checkpoint(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
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
        prefix = "objective."
        state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        self.objective.load_state(state, self.device)
        self.generator.set_state(tensors["rng"])
        self.step = self.checkpointed_step = int(metadata["step"])
        self.wall_time = float(metadata["wall_time"])
        self.history = json.loads(metadata["history"])
        return True

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
