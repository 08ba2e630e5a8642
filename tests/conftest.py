"""Shared fixtures: real CIFAR-10 images and a tiny registry model trained for real."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pureebm.params import TrainConfig
from pureebm.pipeline import purifier_for
from pureebm.purifiers import Purifier
from pureebm.registry import LoadedModel, Registry
from pureebm.training import train

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


TINY_UNET = {  # a diffusers UNet2DModel small enough for the CPU tests
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "add_attention": False,
}


@pytest.fixture(scope="session")
def ddpm_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding 'tiny-ddpm:1', a tiny U-Net trained for a few real updates."""
    root = tmp_path_factory.mktemp("ddpm-registry")
    config = TrainConfig(
        data=[str(DATA)],
        name="tiny-ddpm",
        recipe="ddpm",
        unet=TINY_UNET,
        crop_padding=2,
        iterations=3,
        batch_size=8,
        warmup=1,
        checkpoint_every=3,
        out_dir=str(root.parent / "tiny-ddpm-run"),
        registry=str(root),
        command="pytest fixture",
        calibrate_images=8,
    )
    train(config)
    return root


@pytest.fixture(scope="session")
def ddpm_model(ddpm_registry: Path):
    return Registry(ddpm_registry).load("tiny-ddpm")


def purifier_of(model: LoadedModel, **update: Any) -> Purifier:
    """The purifier of ``model``'s own preset, with ``update`` over its values."""
    spec = model.manifest.purifier.model_copy(update=update)
    return purifier_for(spec, model, lambda ref: model)


# The slower tier: tests that start processes (a Valkey server, uvicorn, workers, the
# CLI, a browser). `make test-fast` leaves them out; `make test` runs every test.
PROCESS_MODULES = {"test_cli", "test_faults", "test_openapi", "test_readme"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        starts_processes = (
            "stack" in getattr(item, "fixturenames", ())
            or item.module.__name__.rsplit(".", 1)[-1] in PROCESS_MODULES
            or (function is not None and "Stack(" in inspect.getsource(function))
            or (function is not None and "subprocess" in inspect.getsource(function))
        )
        if starts_processes:
            item.add_marker(pytest.mark.processes)
