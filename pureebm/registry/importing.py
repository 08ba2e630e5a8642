"""`pureebm import`: register a downloaded folder of the paper's released weights.

Two layouts are recognised, by their files and their config:

- an EBM of PureGen's reference code (``models/EBMs.py``), saved by
  ``PyTorchModelHubMixin``: ``config.json`` (its constructor's arguments) and
  ``model.safetensors``. Its conv ``EBM`` ({"n_c", "n_f"}) keeps five
  convolutions in ``f.0 .. f.8``, which are our ``conv`` net's ``layers.0 ..
  layers.8``. Its ``EBMSNGAN32`` ({"nf", "patch_size"}) is our ``resnet`` net:
  ``block1`` (``c1``, ``c2``, ``c_sc``) -> ``blocks.0`` (``conv1``, ``conv2``,
  ``shortcut``), ``block2`` -> ``blocks.1``, ``block3`` and ``block4`` (``c1``,
  ``c2``; identity shortcuts) -> ``blocks.2`` and ``blocks.3``, ``l5`` (no bias)
  -> ``linear`` with a zero bias. The forward passes agree: the same ReLU
  placement and average pooling, and a spatial mean before (theirs) or after
  (ours) an affine map, which commute. Only ``patch_size`` 1 exists in ours.
  The entry gets the paper's T = 150, eps = 1.25e-2, tau = 1e-4.
- a diffusers ``UNet2DModel`` folder (``save_pretrained``): ``config.json`` and
  ``diffusion_pytorch_model.safetensors``, with ``scheduler_config.json`` if it
  has one; otherwise the paper's schedule (linear, 1,000 steps, trained on
  t < 250), and t* = 75.

Every key and shape is checked against the net it is mapped into. A folder that
holds a pickle (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) or that cannot
be mapped is refused with the reason, and nothing is registered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pureebm.diffusion import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS
from pureebm.nets import build_energy_net
from pureebm.purifiers.ddpm import DDPMSpec
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import WEIGHTS, Registry
from pureebm.registry.records import DiffusionSchedule, Manifest, TrainingRecord

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PAPER_EBM_SETTING = LangevinSpec(steps=150, eps=1.25e-2, tau=1e-4)
PAPER_T_STAR = 75
SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")


class ImportRefused(ValueError):
    """The folder is not a layout this importer maps, or it holds pickle."""


def sngan_key(key: str) -> str:
    """A reference ``EBMSNGAN32`` key -> our ``ResEBM`` key ('block2.c_sc.weight' ->
    'blocks.1.shortcut.weight')."""
    match = re.fullmatch(r"block([1-4])\.(c1|c2|c_sc)\.(weight|bias)", key)
    if match:
        block, layer, kind = match.groups()
        ours = {"c1": "conv1", "c2": "conv2", "c_sc": "shortcut"}[layer]
        return f"blocks.{int(block) - 1}.{ours}.{kind}"
    if key == "l5.weight":
        return "linear.weight"
    raise ImportRefused(f"unexpected EBMSNGAN32 weight {key!r}")


def conv_key(key: str) -> str:
    """A reference conv ``EBM`` key -> ours ('f.4.weight' -> 'layers.4.weight')."""
    if not re.fullmatch(r"f\.[0-8]\.(weight|bias)", key):
        raise ImportRefused(f"unexpected conv EBM weight {key!r}")
    return "layers." + key.removeprefix("f.")


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImportRefused(f"{path.name} is not readable JSON: {e}") from e
    if not isinstance(value, dict):
        raise ImportRefused(f"{path.name} is not a JSON object")
    return value


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ImportRefused(f"{path.name} is not a readable safetensors file: {e}") from e


def load_checked(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net``, refusing missing, extra or misshapen weights."""
    expected = net.state_dict()
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ImportRefused(f"{source}: weights missing {missing}, unexpected {extra}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ImportRefused(
                f"{source}: {key} has shape {tuple(value.shape)}, the net needs "
                f"{tuple(expected[key].shape)}"
            )
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def energy_net(config: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[str, dict, Any]:
    """(architecture, arch_kwargs, net) of a reference EBM's config and weights."""
    if "nf" in config or any(k.startswith("block1.") for k in state):
        if config.get("patch_size", 1) != 1:
            raise ImportRefused("EBMSNGAN32 with patch_size > 1 has no counterpart here")
        n_f = int(config.get("nf", 128))
        n_c = state["block1.c1.weight"].shape[1] if "block1.c1.weight" in state else 3
        mapped = {sngan_key(k): v for k, v in state.items()}
        mapped["linear.bias"] = torch.zeros(1)
        kwargs, architecture, source = {"n_c": n_c, "n_f": n_f}, "resnet", "EBMSNGAN32"
    elif "n_f" in config or any(k.startswith("f.") for k in state):
        kwargs = {"n_c": int(config.get("n_c", 3)), "n_f": int(config.get("n_f", 32))}
        if "leak" in config:
            kwargs["leak"] = float(config["leak"])
        mapped = {conv_key(k): v for k, v in state.items()}
        architecture, source = "conv", "conv EBM"
    else:
        raise ImportRefused("config.json and model.safetensors match neither reference EBM")
    net = build_energy_net(architecture, **kwargs)
    load_checked(net, mapped, source)
    return architecture, kwargs, net


def unet_net(folder: Path) -> tuple[dict, DiffusionSchedule, Any]:
    """(arch_kwargs, schedule, U-Net) of a diffusers folder."""
    from pureebm.diffusion import build_unet

    config = read_json(folder / DIFFUSERS_CONFIG)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ImportRefused(f"{config.get('_class_name')} is not a UNet2DModel")
    arch_kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        unet = build_unet(arch_kwargs)
    except (TypeError, ValueError) as e:
        raise ImportRefused(f"config.json does not build a UNet2DModel: {e}") from e
    arch_kwargs = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    load_checked(unet, read_weights(folder / DIFFUSERS_WEIGHTS), "UNet2DModel")
    scheduler = folder / "scheduler_config.json"
    fields = read_json(scheduler) if scheduler.is_file() else {}
    known = {k: fields[k] for k in SCHEDULE_FIELDS if k in fields}
    trained_below = min(DiffusionSchedule().trained_below, known.get("num_train_timesteps", 1000))
    schedule = DiffusionSchedule(**known, trained_below=trained_below)
    return arch_kwargs, schedule, unet


def import_folder(
    source: Path, registry: Registry, name: str, version: int | None = None, command: str = ""
) -> Manifest:
    """Register the reference-layout folder ``source`` as ``name`` (``version``:
    the next by default); ImportRefused names what could not be mapped."""
    if not source.is_dir():
        raise ImportRefused(f"{source} is not a folder")
    pickles = sorted(p.name for p in source.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ImportRefused(f"{source} holds pickle files {pickles}: refused, use safetensors")
    record = TrainingRecord(
        data=f"imported from {source.resolve()}",
        command=command,
        iterations=0,
        wall_time_s=0.0,
        hardware="not recorded (imported weights)",
    )
    if (source / DIFFUSERS_WEIGHTS).is_file() and (source / DIFFUSERS_CONFIG).is_file():
        arch_kwargs, schedule, net = unet_net(source)
        size = arch_kwargs.get("sample_size") or 32
        fields = dict(
            architecture="unet",
            arch_kwargs=arch_kwargs,
            image_size=size if isinstance(size, int) else int(size[0]),
            channels=int(arch_kwargs.get("in_channels", 3)),
            purifier=DDPMSpec(steps=min(PAPER_T_STAR, schedule.trained_below)),
            diffusion=schedule,
            file=DIFFUSERS_WEIGHTS,
            extra_files={DIFFUSERS_CONFIG: (source / DIFFUSERS_CONFIG).read_text()},
            description="diffusers UNet2DModel (imported)",
        )
    elif (source / WEIGHTS).is_file() and (source / "config.json").is_file():
        config = read_json(source / "config.json")
        architecture, arch_kwargs, net = energy_net(config, read_weights(source / WEIGHTS))
        fields = dict(
            architecture=architecture,
            arch_kwargs=arch_kwargs,
            image_size=32,
            channels=arch_kwargs["n_c"],
            purifier=PAPER_EBM_SETTING,
            description=f"PureGen reference {architecture} EBM (imported)",
        )
    else:
        raise ImportRefused(
            f"{source} has neither {WEIGHTS} + config.json (an EBM) nor "
            f"{DIFFUSERS_WEIGHTS} + {DIFFUSERS_CONFIG} (a diffusers U-Net)"
        )
    return registry.add(net, version=version, name=name, training=record, **fields)
