"""Shared fixtures: real CIFAR-10 images and a tiny registry model trained for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pureebm.params import TrainConfig
from pureebm.registry import Registry
from pureebm.train import train

DATA = Path(__file__).parent / "data" / "cifar64.npz"


@pytest.fixture(scope="session")
def cifar() -> dict[str, np.ndarray]:
    """64 real CIFAR-10 training images (uint8 NHWC) and their labels."""
    with np.load(DATA) as npz:
        return {"images": npz["images"], "labels": npz["labels"]}


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding 'tiny:1', a conv EBM trained for a few real updates."""
    root = tmp_path_factory.mktemp("registry")
    config = TrainConfig(
        data=[str(DATA)],
        name="tiny",
        n_f=8,
        iterations=3,
        batch_size=8,
        mcmc_steps=3,
        warmup=1,
        checkpoint_every=3,
        out_dir=str(root.parent / "tiny-run"),
        registry=str(root),
        command="pytest fixture",
        calibrate_images=0,  # keeps the paper's T, eps, tau; tests/test_quality.py calibrates
    )
    train(config)
    return root


@pytest.fixture(scope="session")
def tiny_model(tiny_registry: Path):
    return Registry(tiny_registry).load("tiny")
