"""Purify decoded pictures and whole containers with a registry model.

Size policy: images are purified at their own resolution (both energy nets are
fully convolutional up to a spatial mean, the DDPM's U-Net up to its
downsampling). An image smaller than the model's image size on a side is
edge-padded up to it, for a DDPM also up to a multiple of its downsampling
(``pureebm.diffusion.size_multiple``), and cropped back afterwards.

Work is done in chunks of at most ``batch_size`` images and at most
``batch_size`` x image_size^2 pixels (so memory stays bounded for large images),
in container order. Within a chunk, images of similar sizes share one batch:
tallest first, each bucket is zero-padded to its tallest and widest image as
long as padding stays under a fifth of its pixels (``buckets``), and the energy
net masks every layer to each image's own size. A U-Net cannot be masked, so a
DDPM's batches hold images of one padded size only. Image i of a container draws
its noise from (``seed``, i) (pureebm.noise). So every image's result is the one
it gets when purified alone as image i with that seed (up to float summation
order), however the images are bucketed, chunked or split across shards.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from pureebm import diffusion
from pureebm.archives import Container
from pureebm.concurrency import Phases, prefetched
from pureebm.filtering import selected_positions
from pureebm.images import Picture
from pureebm.langevin import Purified, Speedups, purify
from pureebm.noise import derived_seed
from pureebm.params import LangevinParams
from pureebm.registry import LoadedModel
from pureebm.results import Energy, PurifiedImage
from pureebm.shards import assemble, write_shard
from pureebm.tiles import DEFAULT_TILE_PIXELS

T = TypeVar("T")

BUCKET_SLACK = 1.25  # a shared canvas holds at most 25% more pixels than its images


@dataclass(frozen=True)
class Reps:
    """PureGen's combination of the two purifiers, R rounds of

        x <- Psi_DDPM(Psi_EBM(x))    (the EBM's T Langevin steps, then the DDPM at t* = L)

    each phase drawing its own noise (seed ``derived_seed(seed, round, phase)``),
    with the image rounded to 8 bits between phases. Energies are the EBM's."""

    ddpm: LoadedModel
    rounds: int
    ddpm_steps: int


def model_input(rgb: np.ndarray, channels: int) -> np.ndarray:
    """H x W x 3 RGB -> H x W x channels for the model (1 channel: ITU-R 601 luma)."""
    if channels == 3:
        return rgb
    luma = np.round(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return luma.clip(0, 255).astype(np.uint8)[..., None]


def padded_shape(shape: tuple[int, ...], size: int, multiple: int = 1) -> tuple[int, int]:
    """An image's height and width once edge-padded to at least ``size`` a side, and
    up to a multiple of ``multiple``."""
    return tuple(-(-max(side, size) // multiple) * multiple for side in shape[:2])  # type: ignore[return-value]


def pad_to_size(pixels: np.ndarray, size: int, multiple: int = 1) -> np.ndarray:
    """Edge-pad an H x W x C image (bottom, right) to ``padded_shape``."""
    height, width = padded_shape(pixels.shape, size, multiple)
    pad_h, pad_w = height - pixels.shape[0], width - pixels.shape[1]
    if not pad_h and not pad_w:
        return pixels
    return np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def buckets(
    shapes: list[tuple[int, int]], max_canvas_pixels: int, slack: float = BUCKET_SLACK
) -> list[list[int]]:
    """Group images (by index) into buckets that share one zero-padded canvas.

    Images of one shape always go together. Shapes are taken tallest first; a
    shape's images join the open bucket while the bucket's canvas (its tallest
    height x widest width, times its images) stays within ``slack`` x the pixels
    of its images and within ``max_canvas_pixels``.
    """
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        by_shape.setdefault(shape, []).append(i)
    groups: list[list[int]] = []
    height = width = pixels = 0
    for (h, w), same in sorted(by_shape.items(), reverse=True):
        if groups:
            canvas_h, canvas_w = max(height, h), max(width, w)
            canvas = canvas_h * canvas_w * (len(groups[-1]) + len(same))
            joined = pixels + h * w * len(same)
            if canvas <= slack * joined and canvas_h * canvas_w <= max_canvas_pixels:
                groups[-1] += same
                height, width, pixels = canvas_h, canvas_w, joined
                continue
        groups.append(list(same))
        height, width, pixels = h, w, h * w * len(same)
    return groups


def size_multiple(model: LoadedModel) -> int:
    """What a side must be a multiple of: a DDPM's downsampling, else 1."""
    if model.manifest.diffusion is None:
        return 1
    return diffusion.size_multiple(model.manifest.arch_kwargs)


def purify_reps(
    ebm: LoadedModel,
    reps: Reps,
    images: torch.Tensor,
    params: LangevinParams,
    seed: int | None,
    indices: torch.Tensor,
    device: str | torch.device | None,
    speedups: Speedups,
) -> Purified:
    """``Reps`` on uint8 images of one size (N x C x H x W)."""
    schedule = reps.ddpm.manifest.diffusion
    assert schedule is not None
    seed = int(torch.randint(0, 2**62, ())) if seed is None else seed
    before = None
    for round_ in range(reps.rounds):
        ebm_seed, ddpm_seed = derived_seed(seed, round_, 0), derived_seed(seed, round_, 1)
        langevin = purify(
            ebm.net,
            images,
            params,
            len(images),
            device,
            ebm_seed,
            None,
            (),
            speedups=speedups,
            indices=indices,
        )
        before = langevin.energy_before if before is None else before
        images = diffusion.purify(
            reps.ddpm.net,
            langevin.images,
            schedule,
            reps.ddpm_steps,
            len(images),
            device,
            ddpm_seed,
            indices,
        ).images
    scored = purify(
        ebm.net, images, LangevinParams(steps=0), len(images), device, 0, speedups=speedups
    )
    return Purified(images, before, scored.energy_before)


def purify_bucket(
    model: LoadedModel,
    pixels: list[np.ndarray],
    params: LangevinParams,
    seed: int | None,
    indices: torch.Tensor,
    device: str | torch.device | None,
    speedups: Speedups = Speedups(),
    sweep: Collection[int] = (),
    reps: Reps | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[int, list[np.ndarray]]]:
    """Purify images (H x W x C, sizes may differ) in one zero-padded batch, each
    masked to its own size; ``indices`` are their places in the job (their noise,
    with ``seed``). Returns RGB outputs, energies, and the RGB images Psi_t of the
    same chains for each t in ``sweep``. A DDPM's images must share one padded size
    and its energies are denoising errors (pureebm.diffusion)."""
    schedule = model.manifest.diffusion
    multiple = size_multiple(model if reps is None else reps.ddpm)
    padded = [pad_to_size(p, model.manifest.image_size, multiple) for p in pixels]
    shapes = [p.shape[:2] for p in padded]
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    canvas = np.zeros((len(padded), height, width, padded[0].shape[2]), np.uint8)
    for image, p in zip(canvas, padded, strict=True):
        image[: p.shape[0], : p.shape[1]] = p
    sizes = None if len(set(shapes)) == 1 else torch.tensor(shapes)
    x = torch.from_numpy(canvas).permute(0, 3, 1, 2)
    if (schedule is not None or reps is not None) and (sweep or sizes is not None):
        raise ValueError("a DDPM batch holds images of one size and has no sweep")
    if reps is not None:
        result = purify_reps(model, reps, x, params, seed, indices, device, speedups)
    elif schedule is not None:
        result = diffusion.purify(
            model.net, x, schedule, params.steps, len(x), device, seed, indices
        )
    else:
        result = purify(
            model.net,
            x,
            params,
            len(x),
            device,
            seed,
            None,
            sweep,
            speedups=speedups,
            sizes=sizes,
            indices=indices,
        )

    def rgb(images: torch.Tensor) -> list[np.ndarray]:
        out = images.permute(0, 2, 3, 1).numpy()
        crops = [image[: p.shape[0], : p.shape[1]] for image, p in zip(out, pixels, strict=True)]
        return [np.repeat(c, 3, axis=2) if c.shape[2] == 1 else c for c in crops]

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


def picture_pixels(item: tuple[str, Picture]) -> int:
    return item[1].rgb.shape[0] * item[1].rgb.shape[1]


def purify_pictures(
    model: LoadedModel,
    pictures: Iterable[tuple[str, Picture]],
    params: LangevinParams,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int | None = None,
    positions: Sequence[int] | None = None,
    phases: Phases | None = None,
    speedups: Speedups = Speedups(),
    sweep: Collection[int] = (),
    reps: Reps | None = None,
) -> Iterator[PurifiedImage]:
    """Purify (name, picture) pairs ``batch_size`` at a time, yielding results in order.

    The picture at position p of a container draws its noise from (``seed``, p);
    ``positions`` are the pictures' positions (0, 1, ... when None), so shards
    and filtered subsets keep the container's noise.
    Within a chunk, pictures of similar sizes share a zero-padded batch
    (``buckets``), masked so that each result is the picture's own.
    Pictures are read and decoded by a background thread up to two batches
    ahead. ``phases`` collects the seconds spent waiting for decoded pictures
    ("decode") and purifying ("model"). ``sweep`` lists step counts t <= T whose images
    Psi_t each result also carries, from the same chain. ``reps`` combines ``model``
    (an EBM) with a DDPM.
    """
    phases = Phases() if phases is None else phases
    multiple = size_multiple(model if reps is None else reps.ddpm)
    one_size = model.manifest.diffusion is not None or reps is not None  # a U-Net has no mask
    slack = 1.0 if one_size else BUCKET_SLACK
    budget = batch_size * model.manifest.image_size**2
    ahead = prefetched(pictures, 2 * budget, picture_pixels)  # up to two batches ahead
    index = 0
    try:
        for chunk in chunks(phases.timed("decode", ahead), batch_size, budget):
            inputs = [model_input(picture.rgb, model.manifest.channels) for _, picture in chunk]
            shapes = [padded_shape(p.shape, model.manifest.image_size, multiple) for p in inputs]
            results: dict[int, PurifiedImage] = {}
            for bucket in buckets(shapes, DEFAULT_TILE_PIXELS, slack):
                picked = [inputs[i] for i in bucket]
                indices = torch.tensor(
                    [index + i if positions is None else positions[index + i] for i in bucket]
                )
                with phases.time("model"):
                    out, before, after, swept = purify_bucket(
                        model, picked, params, seed, indices, device, speedups, sweep, reps
                    )
                for j, i in enumerate(bucket):
                    name, picture = chunk[i]
                    purified = picture.with_pixels(out[j])
                    steps = {t: images[j] for t, images in swept.items()}
                    energies = float(before[j]), float(after[j])
                    results[i] = PurifiedImage(name, purified, *energies, steps)
            yield from (results[i] for i in range(len(chunk)))
            index += len(chunk)
    finally:
        ahead.close()  # also when the caller stops early or fails: stops the reading thread


def energies_of(
    model: LoadedModel,
    pictures: Iterable[tuple[str, Picture]],
    batch_size: int = 64,
    device: str | torch.device | None = None,
    phases: Phases | None = None,
) -> Iterator[float]:
    """E(x) of each picture, in order: a chain of T = 0 steps (one forward pass, no
    noise), the ranking an energy filter cuts (pureebm.filtering)."""
    scoring = LangevinParams(steps=0)
    for item in purify_pictures(model, pictures, scoring, batch_size, device, 0, phases=phases):
        yield item.energy_before


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
    phases: Phases | None = None,
    filter: float | str | None = None,
    reps: Reps | None = None,
) -> list[Energy]:
    """Purify every image of ``container`` and write the same container to ``dst``.

    With ``filter`` (pureebm.filtering), every image is scored first and only the
    selected ones are purified; the others are written back as they were sent.
    Purified pixels stream to a shard file beside ``dst`` and are read back one
    at a time while the container is written (``pureebm.shards.assemble``, which
    the service's finaliser uses too), so memory does not grow with the number of
    images, and ``dst`` appears whole or not at all. Returns each image's energies
    in container order.
    ``phases`` collects seconds as the service's worker counts them: "decode",
    "model", "write" (the shard file) and "finalize" (the container).
    """
    phases = Phases() if phases is None else phases
    scores, chosen = None, None
    if filter is not None:
        scores = list(energies_of(model, container.iter_images(), batch_size, device, phases))
        chosen = selected_positions(scores, filter, model.manifest.energy_threshold)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".pureebm-") as work:
        shard = Path(work) / "purified.npz"
        pictures = container.iter_images(chosen)
        batches = purify_pictures(
            model, pictures, params, batch_size, device, seed, chosen, phases, speedups, (), reps
        )
        with write_shard(shard) as writer, contextlib.closing(batches):
            for item in batches:
                with phases.time("write"):
                    writer.add(item)
                if on_image is not None:
                    on_image(item)
        with phases.time("finalize"):
            return assemble(container, dst, [shard], [0, len(writer.energies)], chosen, scores)
