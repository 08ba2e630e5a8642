"""Defences applied to training images: JPEG re-compression, PureEBM purification
(every image, or the highest-energy ones only: pureebm.filtering) and PureDDPM."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pureebm.images import Picture
from pureebm.params import LangevinParams
from pureebm.pipeline import purify_pictures
from pureebm.registry import LoadedModel


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def as_pictures(images: np.ndarray) -> Iterator[tuple[str, Picture]]:
    return (
        (str(i), Picture(rgb=image, alpha=None, mode="RGB", format="NPZ"))
        for i, image in enumerate(images)
    )


def pureddpm(
    model: LoadedModel, images: np.ndarray, steps: int, device: str = "auto"
) -> np.ndarray:
    """Every image through a DDPM entry at t* = ``steps``, by ``pureebm.pipeline``."""
    out = np.empty_like(images)
    results = purify_pictures(
        model, as_pictures(images), LangevinParams(steps=steps), device=device, seed=0
    )
    for i, item in enumerate(
        tqdm(results, total=len(images), desc=f"pureddpm t*={steps}", unit="img", leave=False)
    ):
        out[i] = item.rgb
    return out


def pureebm(
    model: LoadedModel,
    images: np.ndarray,
    params: LangevinParams,
    steps: Sequence[int],
    device: str = "auto",
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Psi_t of every image for each t in ``steps``, from one chain of max(steps)
    through ``pureebm.pipeline``, the path the CLI and the service's workers run
    (chunking, per-image noise, padding of small images); and each image's
    energy E(x) before purification."""
    params = params.model_copy(update={"steps": max(steps)})
    out = {t: np.empty_like(images) for t in steps}
    energies = np.empty(len(images), np.float64)
    bar = tqdm(total=len(images), desc=f"purify T={sorted(steps)}", unit="img", leave=False)
    results = purify_pictures(
        model, as_pictures(images), params, device=device, seed=0, sweep=steps
    )
    for i, item in enumerate(results):
        for t in steps:
            out[t][i] = item.sweep[t]
        energies[i] = item.energy_before
        bar.update(1)
    bar.close()
    return out, energies
