"""Registry layout (weights stored once, presets apart, an explicit default), version
resolution and integrity checks."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pureebm.nets import ConvEBM
from pureebm.purifiers.ddpm import DDPMSpec
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import Registry, RegistryError
from pureebm.registry.records import TrainingRecord

RECORD = TrainingRecord(data="test", command="test", iterations=1, wall_time_s=0, hardware="cpu")


def add(registry: Registry, net: torch.nn.Module, name: str = "m"):
    return registry.add(
        net,
        name=name,
        architecture="conv",
        arch_kwargs={"n_c": 3, "n_f": 4},
        image_size=32,
        channels=3,
        purifier=LangevinSpec(),
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
    return registry.weights_path(registry.manifest(f"m:{version}"))


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


def test_a_change_that_keeps_size_and_mtime_is_refused_by_a_warm_process(
    registry: Registry,
) -> None:
    """A long-running worker loaded the model (its hash cached by size and mtime);
    then one byte changes in place and the mtime is put back: loading again hashes
    the bytes it loads, and refuses them."""
    registry.load("m:2")
    assert registry.verified_manifest("m:2").ref == "m:2"  # the cache is warm
    path = weights(registry, 2)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    with pytest.raises(RegistryError, match="sha256"):
        registry.load("m:2")


def test_truncated_and_missing_weights_are_refused(registry: Registry) -> None:
    path = weights(registry, 2)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RegistryError, match="sha256"):
        registry.load("m:2")
    path.unlink()
    with pytest.raises(RegistryError, match="missing"):
        registry.load("m:2")


def test_invalid_records_and_unknown_architecture_are_refused(registry: Registry) -> None:
    record_path = weights(registry, 1).with_name("weights.json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "architecture": "mystery"}))
    with pytest.raises(RegistryError, match="unknown architecture"):
        registry.load("m:1")
    del record["sha256"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(RegistryError, match=f"invalid {record_path}"):
        registry.load("m:1")
    preset_path = registry.root / "m" / "2" / "preset.json"
    preset = json.loads(preset_path.read_text())
    preset_path.write_text(json.dumps({**preset, "purifier": {"family": "mystery"}}))
    with pytest.raises(RegistryError, match=f"invalid {preset_path}"):
        registry.manifest("m:2")


def test_unknown_names_and_bad_references(registry: Registry) -> None:
    with pytest.raises(RegistryError, match=r"no model 'absent' \(models: m\)"):
        registry.load("absent")
    with pytest.raises(RegistryError, match="no model 'm:7'"):
        registry.load("m:7")
    with pytest.raises(RegistryError, match=r"no model 'mx'; did you mean 'm'\? \(models: m\)"):
        registry.load("mx")
    with pytest.raises(RegistryError, match="bad model reference"):
        registry.load("../etc:1")


def test_weights_are_stored_once_and_presets_name_them(tmp_path: Path) -> None:
    registry, net = Registry(tmp_path), ConvEBM(n_f=4)
    first, second = add(registry, net), add(registry, net)
    assert first.weights == second.weights
    assert [p.name for p in (tmp_path / "_weights").iterdir()] == [first.weights.sha256]
    calibrated = registry.add_preset(
        name="m",
        weights=first.weights.sha256,
        purifier=LangevinSpec(steps=3, eps=0.01, tau=0.004),
        filter=0.5,
        derived_from="m:1",
    )
    assert (calibrated.version, calibrated.weights) == (3, first.weights)
    assert sorted(p.name for p in (tmp_path / "m" / "3").iterdir()) == ["preset.json"]
    stored = json.loads((tmp_path / "m" / "3" / "preset.json").read_text())
    assert stored["purifier"] == {"family": "langevin", "steps": 3, "eps": 0.01, "tau": 0.004,
                                  "init_noise": 0.0}  # fmt: skip
    with pytest.raises(RegistryError, match="missing"):
        registry.add_preset(name="m", weights="0" * 64, purifier=DDPMSpec())


def test_the_default_is_an_explicit_pointer(tmp_path: Path) -> None:
    """A new registry's first preset becomes its default; later presets of any name
    leave it; only set_default moves it."""
    registry = Registry(tmp_path)
    add(registry, ConvEBM(n_f=4))
    assert registry.default_ref() == "m:1"
    add(registry, ConvEBM(n_f=4))
    add(registry, ConvEBM(n_f=4), name="other")
    assert registry.default_ref() == "m:1" and registry.manifest("m").version == 2
    registry.set_default("m")
    assert (tmp_path / "DEFAULT").read_text() == "m:2\n"
    with pytest.raises(RegistryError):
        registry.set_default("absent")


EARLIER = {  # the NAME:VERSIONs published before presets and weights were apart and still
    # in models/ (older weights left the tree for the GPU visits' size limit; git keeps them)
    "cifar10-conv:2": ("9631e8687eae658c", "langevin", (5, 0.02, 0.0625), None, None),
    "cifar10-conv:3": ("9631e8687eae658c", "langevin", (2, 0.01, 0.00390625), None, None),
    "cifar10-conv:4": ("9631e8687eae658c", "langevin", (1, 0.01, 0.00390625), None, None),
    "cifar10-conv:5": ("9631e8687eae658c", "langevin", (3, 0.01, 0.00390625), 0.5, 1222.8209),
}


@pytest.mark.parametrize("ref", sorted(EARLIER))
def test_every_earlier_reference_resolves_to_the_same_weights_and_settings(ref: str) -> None:
    sha, family, values, filter_, threshold = EARLIER[ref]
    registry = Registry()
    manifest = registry.verified_manifest(ref)  # the sha256 of the bytes on disk
    assert manifest.weights.sha256.startswith(sha)
    spec = manifest.purifier
    assert spec.family == family
    fields = ("steps", "eps", "tau") if family == "langevin" else ("steps",)
    assert tuple(getattr(spec, f) for f in fields) == values
    assert set(spec.model_dump()) == {"family", *fields} | (
        {"init_noise"} if len(fields) > 1 else set()
    )
    assert manifest.filter == filter_
    assert manifest.energy_threshold == (None if threshold is None else pytest.approx(threshold))


TRADE_OFF = {  # the presets along the attack suite's measured trade-off (docs/evaluation.md)
    "light:1": ({"family": "jpeg", "quality": 75}, None),  # a setting, no weights
    "standard:1": ("cifar10-conv:5", 0.5),  # a model's own purifier and weights
    "strong:1": ("cifar10-ddpm:3", None),
}


@pytest.mark.parametrize("ref", sorted(TRADE_OFF))
def test_the_trade_off_presets_run_what_the_suite_measured(ref: str) -> None:
    measured, filter_ = TRADE_OFF[ref]
    registry = Registry()
    manifest = registry.verified_manifest(ref)
    if isinstance(measured, str):
        source = registry.manifest(measured)
        assert manifest.purifier == source.purifier and manifest.weights == source.weights
        assert manifest.energy_threshold == source.energy_threshold
    else:
        assert manifest.purifier.model_dump() == measured and manifest.weights is None
    assert manifest.filter == filter_ and "docs/evaluation.md" in manifest.description


def test_the_committed_default_loads_and_verifies(tmp_path: Path) -> None:
    default = Registry()
    ref = default.default_ref()
    assert ref == "standard:1"
    manifest = default.manifest(ref)
    loaded = default.load(ref)
    assert loaded.manifest.weights == manifest.weights
    assert manifest.weights.training.iterations > 0
    copy = tmp_path / "copy"
    shutil.copytree(default.root, copy)
    assert Registry(copy).load(ref).manifest == manifest
    sizes = [p.stat().st_size for p in default.root.rglob("*.safetensors")]
    assert len(sizes) == len({m.weights.sha256 for m in default.list() if m.weights})


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


def test_a_lineage_adds_up_its_visits_and_stalls_when_the_card_stops_gaining() -> None:
    from bench.lineage import STALLED_DB, stalled
    from pureebm.registry.records import TrainingRecord, Visit

    def visit(seconds: float, psnr: float | None, hardware: str = "NVIDIA H200") -> Visit:
        quality = {} if psnr is None else {"psnr_db at t*=75": psnr}
        return Visit(iterations=100, wall_time_s=seconds, hardware=hardware, quality=quality)

    def record(*visits: Visit) -> TrainingRecord:
        return TrainingRecord(data="d", command="c", iterations=100, wall_time_s=1.0,
                              hardware="h", visits=list(visits))  # fmt: skip

    older = TrainingRecord(data="d", command="c", iterations=7, wall_time_s=3.0, hardware="CPU")
    assert older.total_iterations == 7 and older.accelerator_seconds == 0.0
    lineage = record(visit(240, None), visit(10, 24.0, "CPU x86_64"), visit(200, 25.0))
    assert lineage.total_iterations == 300 and lineage.accelerator_seconds == 440
    assert not stalled(lineage)  # gained a full dB
    assert stalled(record(visit(200, 25.0), visit(200, 25.0 + STALLED_DB / 2)))
    assert not stalled(record(visit(200, 25.0)))


def test_committed_descriptions_speak_to_users_not_to_the_issue_tracker() -> None:
    registry = Registry()
    for name in registry.names():
        for version in registry.versions(name):
            description = registry.manifest(f"{name}:{version}").description
            assert not re.search(r"\bissues?[ -]\d", description), f"{name}:{version}"
