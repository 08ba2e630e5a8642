"""Registry entries from training: an EBM's preset with its samples and calibration,
and `pureebm calibrate`, which writes a new preset of the same weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pureebm.filtering import clean_threshold
from pureebm.langevin import purify, resolve_device
from pureebm.plots import amplified_difference, image_rows
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.quality import CALIBRATION_STEPS, Calibration, calibrate, calibration_settings
from pureebm.registry import Registry
from pureebm.registry.records import Manifest
from pureebm.training.data import as_training_images


def add_calibrated_entry(
    registry: Registry,
    net: nn.Module,
    fields: dict,
    showcase: torch.Tensor,
    calibration: dict | None,
    device: torch.device,
    heldout: torch.Tensor | None = None,
    curves: Path | None = None,
) -> Manifest:
    """Register a preset of ``net`` with its ``fields`` (with ``weights``, a digest
    already stored: a preset of those weights; else the weights are stored too,
    with ``curves``, their training curves), a samples.png of ``showcase``
    purified at the preset's defaults, and its calibration record if it has one.
    ``heldout`` clean images (N x C x H x W uint8) set the energy threshold of
    ``filter=auto``."""
    if heldout is not None and len(heldout):
        energies = purify(net, heldout, LangevinSpec(steps=0), device=device).energy_before
        fields = {**fields, "energy_threshold": clean_threshold(energies.tolist())}
        net.requires_grad_(True)
    if "weights" in fields:
        manifest = registry.add_preset(**fields)
    else:
        manifest = registry.add(net, **fields)
        if curves is not None and curves.exists():
            shutil.copyfile(curves, registry.weights_path(manifest).with_name("curves.png"))
    entry = registry.entry_path(manifest.ref)
    write_samples_png(net, showcase, manifest.purifier, device, entry / "samples.png")
    if calibration is not None:
        (entry / "calibration.json").write_text(json.dumps(calibration, indent=2))
    return manifest


def recalibrate(
    registry: Registry,
    ref: str,
    heldout: np.ndarray,
    psnr_floor: float = 30.0,
    device: str | torch.device = "auto",
    settings: list[tuple[float, float]] | None = None,
    steps: Sequence[int] | None = None,
    energy_filter: float | str | None = None,
) -> tuple[Manifest, Calibration]:
    """Calibrate a preset's (eps, tau, T) again on held-out images (N x H x W x C
    uint8, images the model was not trained on) and register the result as the
    name's next version: a preset of the same weights (never a copy of them) with
    the new defaults (``energy_filter`` its default filter), the energy threshold
    of filter=auto, ``derived_from`` the old preset, and the new calibration.json.
    ``settings`` are the (eps, tau) pairs to try, by default
    ``calibration_settings`` around the preset's; ``steps`` the T to try, by
    default ``CALIBRATION_STEPS``."""
    device = resolve_device(device)
    model = registry.load(ref, device)
    old = model.manifest
    if old.purifier.family != "langevin":
        raise ValueError(f"{old.ref} is not an EBM's Langevin preset: nothing to calibrate")
    clean = as_training_images(heldout, channels=old.channels).permute(0, 3, 1, 2).contiguous()
    if settings is None:
        settings = calibration_settings(old.purifier.eps, old.purifier.tau)
    calibration = calibrate(
        model.net, clean, settings, steps or CALIBRATION_STEPS, psnr_floor, device
    )
    fields = {
        "name": old.name,
        "weights": old.weights.sha256,  # type: ignore[union-attr]
        "purifier": calibration.params,
        "filter": energy_filter,
        "derived_from": old.ref,
        "description": f"calibrated again from {old.ref}: new defaults on the same weights",
    }
    showcase = clean[torch.linspace(0, len(clean) - 1, 8).long()]
    manifest = add_calibrated_entry(
        registry,
        model.net,
        fields,
        showcase,
        calibration.record(psnr_floor, len(clean)),
        device,
        clean,
    )
    return manifest, calibration


def write_samples_png(
    net: nn.Module, images: torch.Tensor, params: LangevinSpec, device: torch.device, path: Path
) -> None:
    """Rows: originals, purified with ``params``, difference amplified 4x."""
    was_training = net.training
    purified = purify(net, images, params, device=device, seed=0).images
    net.train(was_training).requires_grad_(True)
    image_rows([images, purified, amplified_difference(purified, images)], path)
