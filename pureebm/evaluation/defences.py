"""Defences applied to training images, each a purifier (pureebm.purifiers) run by
``pureebm.pipeline``, the path the CLI and the service's workers run.

A defence is named in one grammar derived from the purifier spec:

    FAMILY[:FIELD=VALUE,...]      e.g. jpeg:quality=50, langevin:steps=5,init_noise=0.1,
                                  ddpm:model=cifar10-ddpm:3,steps=75,
                                  reps:ddpm_model=cifar10-ddpm:3,rounds=2

with ``model=`` naming the preset (default: the evaluation's --model), and several
joined by '>' run one after the other (jpeg:quality=75>langevin:steps=3). The earlier
short names stay: none, jpeg:Q, pureebm[:T], filt:K|auto[:T[:R]] (run as a sweep of one
chain and an energy ranking by pureebm.evaluation.run; R: the light chain the images
not chosen get, else none) and pureddpm[:T].
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pureebm.images import Picture
from pureebm.pipeline import purifier_for, purify_pictures
from pureebm.purifiers import FAMILIES, Overrides, Purifier
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import LoadedModel, Registry
from pureebm.requests import resolve_request


def as_pictures(images: np.ndarray) -> Iterator[tuple[str, Picture]]:
    return (
        (str(i), Picture(rgb=image, alpha=None, mode="RGB", format="NPZ"))
        for i, image in enumerate(images)
    )


def is_spec(defence: str) -> bool:
    """A defence in the spec grammar (FAMILY or FAMILY:FIELD=VALUE,...)."""
    family, _, rest = defence.partition(":")
    return family in FAMILIES and (not rest or "=" in rest)


def spec_purifier(defence: str, registry: Registry, model: str | None, device: str) -> Purifier:
    """The purifier a spec-grammar defence names (``is_spec``)."""
    family, _, rest = defence.partition(":")
    fields = dict(item.split("=", 1) for item in rest.split(",") if item)
    ref = fields.pop("model", model)
    resolved = resolve_request(Overrides(purifier=family, **fields), ref, registry)

    def load(name: str) -> LoadedModel:
        return registry.load(name, "cpu")

    loaded = None if resolved.model is None else load(resolved.model)
    return purifier_for(resolved.purifier, loaded, load, device)


def cached(
    folder: str | None, images: np.ndarray, name: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, kept in ``folder`` under a digest of ``images`` and
    ``name``. Evaluations run side by side (one per attack) then defend the same
    clean set once: the first computes it while the others wait on its lock."""
    if folder is None:
        return compute()
    Path(folder).mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{name} {images.shape} {images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    path = Path(folder) / f"{digest.hexdigest()[:32]}.npz"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            with np.load(path) as stored:
                return dict(stored)
        arrays = compute()
        partial = path.with_suffix(".partial")
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
        os.replace(partial, path)
        return arrays


def purified(
    purifier: Purifier, images: np.ndarray, label: str, batch_size: int = 64, seed: int = 0
) -> np.ndarray:
    """Every image through ``purifier`` (its noise from ``seed``)."""
    out = np.empty_like(images)
    results = purify_pictures(purifier, as_pictures(images), batch_size, seed=seed)
    for i, item in enumerate(tqdm(results, total=len(images), desc=label, unit="img", leave=False)):
        out[i] = item.rgb
    return out


def pureebm(
    model: LoadedModel,
    images: np.ndarray,
    params: LangevinSpec,
    steps: Sequence[int],
    device: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Psi_t of every image for each t in ``steps``, from one chain of max(steps)
    (its noise from ``seed``), and each image's energy E(x) before purification."""
    purifier = purifier_for(params.model_copy(update={"steps": max(steps)}), model, None, device)
    out = {t: np.empty_like(images) for t in steps}
    energies = np.empty(len(images), np.float64)
    bar = tqdm(total=len(images), desc=f"purify T={sorted(steps)}", unit="img", leave=False)
    results = purify_pictures(purifier, as_pictures(images), batch_size, seed, sweep=steps)
    for i, item in enumerate(results):
        for t in steps:
            out[t][i] = item.sweep[t]
        energies[i] = item.energy_before
        bar.update(1)
    bar.close()
    return out, energies
