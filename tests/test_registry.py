"""Registry layout, version resolution and integrity checks."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pureebm.manifest import TrainingRecord
from pureebm.nets import ConvEBM
from pureebm.registry import DEFAULT_MODEL, Registry, RegistryError

RECORD = TrainingRecord(data="test", command="test", iterations=1, wall_time_s=0, hardware="cpu")


def add(registry: Registry, net: torch.nn.Module, name: str = "m"):
    return registry.add(
        net,
        name=name,
        architecture="conv",
        arch_kwargs={"n_c": 3, "n_f": 4},
        image_size=32,
        channels=3,
        training=RECORD,
    )


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path)
    torch.manual_seed(0)
    add(registry, ConvEBM(n_f=4))
    add(registry, ConvEBM(n_f=4))
    return registry


def weights(registry: Registry, version: int) -> Path:
    return registry.root / "m" / str(version) / "model.safetensors"


def test_round_trip_gives_the_same_energies(tmp_path: Path) -> None:
    registry, net = Registry(tmp_path), ConvEBM(n_f=4)
    manifest = add(registry, net)
    loaded = registry.load(f"m:{manifest.version}")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.net(x), net(x))
    assert not any(p.requires_grad for p in loaded.net.parameters())


def test_a_reference_pins_one_entry(registry: Registry) -> None:
    assert registry.pinned("m") == ("m", 2)  # the newest
    assert registry.pinned("m:1") == ("m", 1)
    assert registry.pinned("m:999") is None and registry.pinned("absent") is None


def test_name_alone_means_the_highest_version(registry: Registry) -> None:
    assert registry.manifest("m").version == 2
    assert registry.manifest("m:1").version == 1
    assert [(m.name, m.version) for m in registry.list()] == [("m", 1), ("m", 2)]


def test_a_changed_byte_in_the_weights_is_refused(registry: Registry) -> None:
    path = weights(registry, 2)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match=f"{path}.*sha256"):
        registry.load("m")
    registry.load("m:1")  # the other version is untouched


def test_truncated_and_missing_weights_are_refused(registry: Registry) -> None:
    path = weights(registry, 2)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RegistryError, match="sha256"):
        registry.load("m:2")
    path.unlink()
    with pytest.raises(RegistryError, match="missing"):
        registry.load("m:2")


def test_invalid_manifest_and_unknown_architecture_are_refused(registry: Registry) -> None:
    manifest_path = registry.root / "m" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "architecture": "mystery"}))
    with pytest.raises(RegistryError, match="unknown architecture"):
        registry.load("m:1")
    del manifest["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=f"invalid manifest {manifest_path}"):
        registry.load("m:1")


def test_unknown_names_and_bad_references(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no model named"):
        registry.load("absent")
    with pytest.raises(RegistryError, match="no model m:7"):
        registry.load("m:7")
    with pytest.raises(RegistryError, match="bad model reference"):
        registry.load("../etc:1")


def test_the_committed_default_model_loads_and_verifies(tmp_path: Path) -> None:
    default = Registry()
    manifest = default.manifest(DEFAULT_MODEL)
    loaded = default.load(DEFAULT_MODEL)
    assert loaded.manifest.sha256 == manifest.sha256
    assert manifest.training.iterations > 0
    copy = tmp_path / DEFAULT_MODEL
    shutil.copytree(default.root / DEFAULT_MODEL, copy)
    assert Registry(tmp_path).load(DEFAULT_MODEL).manifest == manifest


def test_the_cli_finds_the_registry_outside_the_source_tree(tmp_path: Path, tiny_registry) -> None:
    """As in the Docker image: the package installed with no models/ beside it, the
    registry in the working directory's models/. Without PUREEBM_REGISTRY the CLI
    finds ./models; with it, that folder."""
    site, app = tmp_path / "site-packages", tmp_path / "app"
    shutil.copytree(Path(__file__).resolve().parents[1] / "pureebm", site / "pureebm")
    shutil.copytree(tiny_registry, app / "models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUREEBM_")}
    run = functools.partial(
        subprocess.run,
        [sys.executable, "-m", "pureebm", "models"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = run(env={**env, "PYTHONPATH": str(site)})
    assert found.returncode == 0 and "tiny" in found.stdout, found.stderr
    elsewhere = run(env={**env, "PYTHONPATH": str(site), "PUREEBM_REGISTRY": str(tmp_path / "x")})
    assert "tiny" not in elsewhere.stdout
