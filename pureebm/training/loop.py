"""The training loop every recipe shares: the data, Adam under a linear warm-up and a
cosine decay, a budget of iterations or seconds, checkpoints, figures, progress.

Built to keep a GPU busy: the data set lives on the device and is augmented there,
Adam is fused, bf16 autocast and channels_last are one option (``bf16``), the
DDPM's U-Net can be compiled (``compile``), and the loop reads the loss back only
every ``FIGURES_EVERY`` updates, so the host never waits on the card in between.
``ema_decay`` keeps an exponential moving average of the weights, which is what
gets registered. ``init_from`` starts from a registry entry's (EMA) weights and
adds this run to its lineage: the entry registered at the end lists every run
(visit) before it, with its updates, seconds, hardware, achieved TFLOP/s and card,
so GPU minutes add up across visits. Each run warms up again and runs its own
cosine (a warm restart; Loshchilov & Hutter, 2017).

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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pureebm.atomic import atomic_path
from pureebm.augment import flip_and_crop
from pureebm.containers import load_image_array
from pureebm.langevin import resolve_device, to_unit_range
from pureebm.params import TrainConfig
from pureebm.registry import Registry
from pureebm.registry.records import Manifest, TrainingRecord, Visit
from pureebm.training.data import PHOTOGRAPHS, as_training_images, photograph_crops
from pureebm.training.flops import counted_flops

CHECKPOINT = "checkpoint.safetensors"
FIGURES_EVERY = 50  # updates between reads of the loss (each read waits for the GPU)
TIMED_AFTER = 3  # updates left out of the TFLOP/s figure (compilation, warm-up)


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

    def update(self, run: TrainingRun) -> dict[str, torch.Tensor | float]:
        """One parameter update (through ``run.optimize``); the figures to plot
        (tensors are read back in bulk, every ``FIGURES_EVERY`` updates)."""

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
        self.crops_per_photograph: dict[str, int] = {}
        # calibration uses held-out images where there are any
        heldout = images[-max(config.holdout, config.calibrate_images, 1) :]
        if config.holdout:
            images = images[: -config.holdout]
        if config.skimage_crops:
            crops, self.crops_per_photograph = photograph_crops(
                config.skimage_crops, images.shape[1], config.seed
            )
            images = np.concatenate([images, crops])
        images = as_training_images(images)
        self.heldout = as_training_images(heldout, channels=images.shape[3])
        self.data = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.n_c, self.image_size = self.data.shape[1], self.data.shape[2]
        self.showcase = self.data[torch.linspace(0, len(self.data) - 1, 8).long()].cpu()

        self.lineage: Manifest | None = None  # the entry the run started from
        if config.init_from:
            self.net = self.load_lineage(config.init_from)
        else:
            self.net = objective.build_net(self).to(self.device)
        if config.bf16 and self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.forward: nn.Module = torch.compile(self.net) if config.compile else self.net
        self.ema = None
        if config.ema_decay > 0:
            averaging = get_ema_multi_avg_fn(config.ema_decay)
            self.ema = AveragedModel(self.net, multi_avg_fn=averaging, use_buffers=True)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, fused=fused)
        self.step = 0
        self.checkpointed_step = -1
        self.wall_time = 0.0
        self.history: list[dict[str, float]] = []
        self.pending: list[tuple[int, dict[str, torch.Tensor | float]]] = []
        self.flops_per_update = 0
        self.timed_from: tuple[int, float] | None = None  # (step, wall time) of steady state
        objective.start(self)

    def load_lineage(self, ref: str) -> nn.Module:
        """The net of registry entry ``ref``, trainable, after checking it fits the data."""
        loaded = Registry(self.config.registry).load(ref, self.device)
        self.lineage = loaded.manifest
        if (loaded.manifest.image_size, loaded.manifest.channels) != (self.image_size, self.n_c):
            raise ValueError(
                f"{loaded.manifest.ref} models {loaded.manifest.channels} x "
                f"{loaded.manifest.image_size}^2 images; the data are {self.n_c} x "
                f"{self.image_size}^2"
            )
        return loaded.net.train().requires_grad_(True)

    def data_batch(self) -> torch.Tensor:
        """``batch_size`` training images in [-1, 1], flipped and cropped at random."""
        c = self.config
        idx = torch.randint(
            0, len(self.data), (c.batch_size,), generator=self.generator, device=self.device
        )
        return to_unit_range(flip_and_crop(self.data[idx], self.generator, c.flip, c.crop_padding))

    def optimize(self, loss: torch.Tensor, scale: float) -> None:
        """One Adam step on ``loss * scale`` (the clip sees the scaled gradient), then
        the EMA. A non-finite loss is caught when the figures are read back."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.wall_time)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def read_figures(self, bar: tqdm) -> None:
        """The pending updates' figures into ``history`` (one wait for the device)."""
        for step, figures in self.pending:
            values = {k: float(v) for k, v in figures.items()}
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"{values} at step {step}")
            self.history.append({"step": step, **values})
        if self.pending:
            bar.set_postfix({k: f"{v:.3g}" for k, v in self.history[-1].items() if k != "step"})
        self.pending.clear()

    def update(self) -> dict[str, torch.Tensor | float]:
        """One update; the first is also counted in FLOPs (on the uncompiled net)."""
        if self.flops_per_update:
            return self.objective.update(self)
        forward, self.forward = self.forward, self.net
        figures: dict[str, torch.Tensor | float] = {}

        def count() -> None:
            figures.update(self.objective.update(self))

        self.flops_per_update = counted_flops(count)
        self.forward = forward
        return figures

    def achieved_tflops(self) -> float | None:
        """Training TFLOP/s since the steady state began (None before it)."""
        if self.timed_from is None or self.step <= self.timed_from[0]:
            return None
        steps, seconds = self.step - self.timed_from[0], self.wall_time - self.timed_from[1]
        return self.flops_per_update * steps / max(seconds, 1e-9) / 1e12

    def out_of_time(self) -> bool:
        return 0 < self.config.max_seconds <= self.wall_time

    def update_precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when asked (``bf16``); the parameters stay float32."""
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, torch.bfloat16, enabled=enabled)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self) -> Manifest:
        """Updates until the iterations or ``max_seconds`` run out, checkpointing every
        ``checkpoint_every`` updates or ``checkpoint_seconds``, and at the end; then
        the registry entry, with the EMA weights where there are any. ``wall_time``
        counts the updates (the device's time included), not checkpoints."""
        c = self.config
        bar = tqdm(total=c.iterations, initial=self.step, desc="train", unit="it")
        first_step = self.step
        last_checkpoint = tick = time.perf_counter()
        while self.step < c.iterations and not self.out_of_time():
            with self.update_precision():
                self.pending.append((self.step + 1, self.update()))
            self.step += 1
            bar.update(1)
            due = time.perf_counter() - last_checkpoint >= c.checkpoint_seconds
            due = due or self.step % c.checkpoint_every == 0
            if due or self.step % FIGURES_EVERY == 0 or self.step - first_step == TIMED_AFTER:
                self.read_figures(bar)  # waits for the device: the time is the updates'
            now = time.perf_counter()
            self.wall_time, tick = self.wall_time + now - tick, now
            if self.step - first_step == TIMED_AFTER:
                self.timed_from = (self.step, self.wall_time)
            if due:
                self.save_checkpoint()
                last_checkpoint = tick = time.perf_counter()
        self.read_figures(bar)
        bar.close()
        if self.out_of_time():
            tqdm.write(f"stopped at step {self.step}: {c.max_seconds:g} s of updates spent")
        if (tflops := self.achieved_tflops()) is not None:
            tqdm.write(
                f"training step: {self.flops_per_update / 1e9:,.1f} GFLOP per update, "
                f"{tflops:,.2f} TFLOP/s achieved"
            )
        if self.checkpointed_step != self.step:
            self.save_checkpoint()
        if self.ema is not None:
            self.net.load_state_dict(self.ema.module.state_dict())
        return self.objective.register(self)

    def save_checkpoint(self) -> None:
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        if self.ema is not None:
            tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{index}.{key}"] = value
        tensors |= {f"objective.{k}": v for k, v in self.objective.state().items()}
        tensors["rng"] = self.generator.get_state()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {
            "step": str(self.step),
            "wall_time": str(self.wall_time),
            "flops_per_update": str(self.flops_per_update),
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
        if self.ema is not None:
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
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
        self.flops_per_update = int(metadata.get("flops_per_update", 0))
        self.history = json.loads(metadata["history"])
        return True

    def training_record(self, quality: dict[str, float] | None = None) -> TrainingRecord:
        """This run's record; its visits are the lineage's, then this run with its
        ``quality`` (the card's headline figures)."""
        c = self.config
        description = f"{', '.join(c.data)}: {len(self.data)} images"
        if c.holdout:
            description += f" (last {c.holdout} held out)"
        if c.skimage_crops:
            licences = {name: licence for _, name, licence in PHOTOGRAPHS}
            sources = ", ".join(
                f"{name} {n} ({licences[name]})" for name, n in self.crops_per_photograph.items()
            )
            description += f", including {c.skimage_crops} crops of photographs: {sources}"
        hardware = hardware_description(self.device)
        tflops = self.achieved_tflops()
        visit = Visit(
            iterations=self.step,
            wall_time_s=round(self.wall_time, 1),
            hardware=hardware,
            tflops=None if tflops is None else round(tflops, 3),
            quality=quality or {},
        )
        return TrainingRecord(
            data=description,
            command=c.command,
            iterations=self.step,
            wall_time_s=round(self.wall_time, 1),
            hardware=hardware,
            resumed_from=self.lineage.ref if self.lineage else None,
            visits=[*self.previous_visits(), visit],
        )

    def previous_visits(self) -> list[Visit]:
        """The visits of the entry this run started from."""
        if self.lineage is None or self.lineage.weights is None:
            return []
        return list(self.lineage.weights.training.lineage)
