"""A short real training run: registry entry, figures, checkpoint resume."""

from __future__ import annotations

import itertools
import json

import torch

from pureebm.registry import Registry
from pureebm.train import CHECKPOINT, TrainConfig, learning_rate, train
from tests.conftest import DATA


def test_training_registers_a_loadable_model_with_its_record(tiny_registry):
    manifest = Registry(tiny_registry).manifest("tiny")
    assert manifest.training.iterations == 3
    assert manifest.training.command == "pytest fixture"
    assert "cifar64.npz" in manifest.training.data and manifest.image_size == 32
    assert (tiny_registry / "tiny" / "1" / "samples.png").stat().st_size > 0
    assert (tiny_registry / "tiny" / "1" / "curves.png").stat().st_size > 0
    loaded = Registry(tiny_registry).load("tiny")
    assert loaded.net(torch.zeros(1, 3, 32, 32)).shape == (1,)


def test_resume_continues_from_the_checkpoint(tmp_path):
    base = dict(
        data=[str(DATA)],
        name="r",
        n_f=4,
        batch_size=4,
        mcmc_steps=2,
        warmup=1,
        checkpoint_every=2,
        out_dir=str(tmp_path / "run"),
        registry=str(tmp_path / "reg"),
        holdout=16,
        crop_padding=2,
    )
    train(TrainConfig(**base, iterations=2))
    assert (tmp_path / "run" / CHECKPOINT).exists()
    assert (tmp_path / "run" / "step000002-pairs.png").exists()
    assert (tmp_path / "run" / "curves.png").exists()
    manifest = train(TrainConfig(**base, iterations=4), resume=True)
    assert manifest.training.iterations == 4 and manifest.version == 2
    assert "48 images (last 16 held out)" in manifest.training.data
    history = json.loads(json.dumps(manifest.model_dump(mode="json")))
    assert history["training"]["wall_time_s"] >= 0


def test_learning_rate_warms_up_then_decays_to_its_floor():
    config = TrainConfig(data=[], lr=1e-3, lr_final=1e-5, warmup=10, iterations=110)
    rates = [learning_rate(config, step) for step in range(110)]
    assert rates[0] == 1e-4 and rates[9] == 1e-3
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert abs(rates[-1] - 1e-5) < 1e-6
