"""Defences applied to the whole training set (the defender does not know which
images are poisoned): none, JPEG re-compression, PureEBM purification.

`pureebm_sweep` runs one Langevin chain and keeps its state at each requested
step count, so a sweep over T costs one chain of the largest T.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pureebm.langevin import langevin_chain, resolve_device, to_uint8, to_unit_range
from pureebm.registry import LoadedModel


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def pureebm_sweep(
    model: LoadedModel,
    images: np.ndarray,
    steps: list[int],
    seed: int = 0,
    batch_size: int = 128,
    device: str = "auto",
) -> dict[int, np.ndarray]:
    """Psi_T(images) for every T in ``steps``, with the model's eps and tau."""
    torch_device = resolve_device(device)
    net = model.net.to(torch_device)
    langevin = model.manifest.langevin
    targets = sorted(set(steps))
    out = {t: np.empty_like(images) for t in targets}
    generator = torch.Generator(device=torch_device).manual_seed(seed)
    bar = tqdm(total=len(images), desc=f"purify T={targets}", unit="img")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = to_unit_range(torch.from_numpy(chunk).permute(0, 3, 1, 2).to(torch_device))
        done = 0
        for t in targets:
            x = langevin_chain(net, x, t - done, langevin.eps, langevin.tau, generator)
            done = t
            out[t][start : start + len(chunk)] = to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
        bar.update(len(chunk))
    bar.close()
    return out
