"""Defences applied to training images: JPEG re-compression and PureEBM purification."""

from __future__ import annotations

import io

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


def pureebm(
    model: LoadedModel, images: np.ndarray, params: LangevinParams, device: str = "auto"
) -> np.ndarray:
    """Psi_T of every image through ``pureebm.pipeline``, the path the CLI and the
    service's workers run (chunking, per-chunk seeds, padding of small images)."""
    pictures = (
        (str(i), Picture(rgb=image, alpha=None, mode="RGB", format="NPZ"))
        for i, image in enumerate(images)
    )
    out = np.empty_like(images)
    bar = tqdm(total=len(images), desc=f"purify T={params.steps}", unit="img", leave=False)
    for i, item in enumerate(purify_pictures(model, pictures, params, device=device, seed=0)):
        out[i] = item.rgb
        bar.update(1)
    bar.close()
    return out
