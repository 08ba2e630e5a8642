"""Purify decoded pictures and whole containers with a registry model.

Size policy: images are purified at their own resolution (both energy nets are
fully convolutional up to a spatial mean). An image smaller than the model's
image size on a side is edge-padded up to it and cropped back afterwards.

Work is done in chunks of at most ``batch_size`` images and at most
``batch_size`` x image_size^2 pixels (so memory stays bounded for large images),
in container order. Each chunk's noise is seeded with ``seed + index of its first
image``, so a purification is reproducible on the same device for the same seed
and batch size, however the images are split across shards.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from pureebm.archives import Container
from pureebm.images import Picture
from pureebm.langevin import Speedups, purify
from pureebm.params import LangevinParams
from pureebm.registry import LoadedModel
from pureebm.shards import Energy, ShardSet, write_shard

T = TypeVar("T")


@dataclass
class PurifiedImage:
    name: str
    picture: Picture  # the input's mode, alpha and format, with the purified RGB pixels
    energy_before: float
    energy_after: float
    sweep: dict[int, np.ndarray] = field(default_factory=dict)  # t -> Psi_t RGB, if asked

    @property
    def rgb(self) -> np.ndarray:  # H x W x 3 uint8
        return self.picture.rgb


def model_input(rgb: np.ndarray, channels: int) -> np.ndarray:
    """H x W x 3 RGB -> H x W x channels for the model (1 channel: ITU-R 601 luma)."""
    if channels == 3:
        return rgb
    luma = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return luma.clip(0, 255).astype(np.uint8)[..., None]


def purify_same_size(
    model: LoadedModel,
    pixels: list[np.ndarray],
    params: LangevinParams,
    seed: int | None,
    device: str | torch.device | None,
    speedups: Speedups = Speedups(),
    sweep: Collection[int] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Purify images of one shape (H x W x C). Returns RGB outputs, energies, and
    the RGB images Psi_t of the same chains for each t in ``sweep``."""
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    height, width = x.shape[2:]
    need = model.manifest.image_size
    pad_h, pad_w = max(need - height, 0), max(need - width, 0)
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x.float(), (0, pad_w, 0, pad_h), mode="replicate").to(
            torch.uint8
        )
    result = purify(model.net, x, params, len(x), device, seed, speedups=speedups, sweep=sweep)

    def rgb(images: torch.Tensor) -> np.ndarray:
        out = images[:, :, :height, :width].permute(0, 2, 3, 1).numpy()
        return np.repeat(out, 3, axis=3) if out.shape[3] == 1 else out

    swept = {t: rgb(images) for t, images in result.sweep.items()}
    return rgb(result.images), result.energy_before.numpy(), result.energy_after.numpy(), swept


def chunks(
    pictures: Iterable[tuple[str, Picture]], max_images: int, max_pixels: int
) -> Iterator[list[tuple[str, Picture]]]:
    chunk: list[tuple[str, Picture]] = []
    pixels = 0
    for item in pictures:
        chunk.append(item)
        pixels += item[1].rgb.shape[0] * item[1].rgb.shape[1]
        if len(chunk) >= max_images or pixels >= max_pixels:
            yield chunk
            chunk, pixels = [], 0
    if chunk:
        yield chunk


class Phases(Counter[str]):
    """Seconds spent in each phase of some work (decode, model, write, ...)."""

    @contextlib.contextmanager
    def time(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self[phase] += time.perf_counter() - started

    def timed(self, phase: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the time spent waiting for each counted under ``phase``."""
        iterator, end = iter(items), object()
        while True:
            with self.time(phase):
                item = next(iterator, end)
            if item is end:
                return
            yield item


def purify_pictures(
    model: LoadedModel,
    pictures: Iterable[tuple[str, Picture]],
    params: LangevinParams,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int | None = None,
    start_index: int = 0,
    phases: Phases | None = None,
    speedups: Speedups = Speedups(),
    sweep: Collection[int] = (),
) -> Iterator[PurifiedImage]:
    """Purify (name, picture) pairs ``batch_size`` at a time, yielding results in order.

    ``start_index`` is the position of the first picture in its container; it
    keeps the per-chunk seeds the same when a container is split into shards.
    ``phases`` collects the seconds spent waiting for decoded pictures ("decode")
    and purifying ("model"). ``sweep`` lists step counts t <= T whose images
    Psi_t each result also carries, from the same chain.
    """
    phases = Phases() if phases is None else phases
    budget = batch_size * model.manifest.image_size**2
    index = start_index
    for chunk in chunks(phases.timed("decode", pictures), batch_size, budget):
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (_, picture) in enumerate(chunk):
            by_shape.setdefault(picture.rgb.shape, []).append(i)
        results: dict[int, PurifiedImage] = {}
        for positions in by_shape.values():
            pixels = [model_input(chunk[i][1].rgb, model.manifest.channels) for i in positions]
            group_seed = None if seed is None else seed + index + positions[0]
            with phases.time("model"):
                out, before, after, swept = purify_same_size(
                    model, pixels, params, group_seed, device, speedups, sweep
                )
            for j, i in enumerate(positions):
                name, picture = chunk[i]
                purified = picture.with_pixels(out[j])
                steps = {t: images[j] for t, images in swept.items()}
                results[i] = PurifiedImage(name, purified, float(before[j]), float(after[j]), steps)
        yield from (results[i] for i in range(len(chunk)))
        index += len(chunk)


def purify_container(
    container: Container,
    dst: Path,
    model: LoadedModel,
    params: LangevinParams,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int | None = None,
    on_image: Callable[[PurifiedImage], None] | None = None,
    speedups: Speedups = Speedups(),
) -> list[Energy]:
    """Purify every image of ``container`` and write the same container to ``dst``.

    Purified pixels stream to a shard file beside ``dst`` and are read back one
    at a time while the container is written, so memory does not grow with the
    number of images. Returns each image's energies in container order.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".pureebm-") as work:
        shard = Path(work) / "purified.npz"
        with write_shard(shard) as writer:
            pictures = container.iter_images()
            batches = purify_pictures(
                model, pictures, params, batch_size, device, seed, speedups=speedups
            )
            for item in batches:
                writer.add(item)
                if on_image is not None:
                    on_image(item)
        energies = writer.energies
        names = container.image_names()
        purified = ShardSet([shard], [0, len(names)], names)
        try:
            container.write(dst, purified.picture)
        finally:
            purified.close()
        return energies
