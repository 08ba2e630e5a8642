"""The one batching loop: purify decoded pictures and whole containers with any
purifier (pureebm.purifiers).

Size policy: images are purified at their own resolution (both energy nets are
fully convolutional up to a spatial mean, the DDPM's U-Net up to its
downsampling). An image smaller than the purifier's ``image_size`` on a side is
edge-padded up to it, and up to a multiple of its ``size_multiple``, and cropped
back afterwards.

Work is done in chunks of at most ``batch_size`` images and at most
``batch_size`` x image_size^2 pixels (so memory stays bounded for large images),
in container order. Within a chunk, images of similar sizes share one batch:
tallest first, each bucket is zero-padded to its tallest and widest image as
long as padding stays under a fifth of its pixels (``buckets``), and a
``maskable`` purifier (the energy nets) masks every layer to each image's own
size; other purifiers' batches hold images of one padded size. Image i of a
container draws
its noise from (``seed``, i) (pureebm.noise). So every image's result is the one
it gets when purified alone as image i with that seed (up to float summation
order), however the images are bucketed, chunked or split across shards.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from pureebm.concurrency import Phases, prefetched
from pureebm.containers import Container
from pureebm.filtering import selected_positions
from pureebm.images import Picture
from pureebm.langevin import Speedups, resolve_device
from pureebm.purifiers import ModelLoader, Purifier, PurifierSpec
from pureebm.registry import LoadedModel
from pureebm.results import Energy, PurifiedImage, psnr
from pureebm.shards import assemble, write_shard
from pureebm.tiles import DEFAULT_TILE_PIXELS

T = TypeVar("T")

BUCKET_SLACK = 1.25  # a shared canvas holds at most 25% more pixels than its images
MIN_BATCH_SIDE = 32  # a batch's pixel budget is batch_size images of at least this side


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


def purifier_for(
    spec: PurifierSpec,
    model: LoadedModel | None,
    load: ModelLoader,
    device: str | torch.device | None = None,
    speedups: Speedups = Speedups(),
) -> Purifier:
    """The purifier ``spec`` describes, on ``model`` (None for a family that needs
    none); ``load`` gives the further models it names (Reps' DDPM)."""
    return spec.build(model, load, resolve_device(device), speedups)


def scorer_for(
    model: LoadedModel, device: str | torch.device | None = None, speedups: Speedups = Speedups()
) -> Purifier:
    """A filter's ranking: the model's own purifier at zero steps (an EBM's energy, a
    DDPM's denoising error)."""
    spec = model.manifest.purifier.scoring()
    if spec is None:
        raise ValueError(f"{model.manifest.ref} gives no score to rank images by")
    return purifier_for(spec, model, lambda ref: model, device, speedups)


def purify_bucket(
    purifier: Purifier,
    pixels: list[np.ndarray],
    seed: int,
    indices: torch.Tensor,
    sweep: Collection[int] = (),
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[int, list[np.ndarray]]]:
    """Purify images (H x W x C, sizes may differ where the purifier is maskable) in
    one zero-padded batch; ``indices`` are their places in the job (their noise,
    with ``seed``). Returns RGB outputs, scores, and the RGB images Psi_t of the
    same chains for each t in ``sweep``."""
    padded = [pad_to_size(p, purifier.image_size, purifier.size_multiple) for p in pixels]
    shapes = [p.shape[:2] for p in padded]
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    canvas = np.zeros((len(padded), height, width, padded[0].shape[2]), np.uint8)
    for image, p in zip(canvas, padded, strict=True):
        image[: p.shape[0], : p.shape[1]] = p
    sizes = None if len(set(shapes)) == 1 else torch.tensor(shapes)
    x = torch.from_numpy(canvas).permute(0, 3, 1, 2)
    result = purifier.purify_batch(x, indices, seed, sizes, sweep)

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
    purifier: Purifier,
    pictures: Iterable[tuple[str, Picture]],
    batch_size: int = 64,
    seed: int | None = None,
    positions: Sequence[int] | None = None,
    phases: Phases | None = None,
    sweep: Collection[int] = (),
) -> Iterator[PurifiedImage]:
    """Purify (name, picture) pairs ``batch_size`` at a time, yielding results in order.

    The picture at position p of a container draws its noise from (``seed``, p);
    ``positions`` are the pictures' positions (0, 1, ... when None), so shards
    and filtered subsets keep the container's noise; no seed: one is drawn.
    Within a chunk, pictures of similar sizes share a zero-padded batch
    (``buckets``), masked so that each result is the picture's own, where the
    purifier is maskable; otherwise a batch holds one padded size.
    Pictures are read and decoded by a background thread up to two batches
    ahead. ``phases`` collects the seconds spent waiting for decoded pictures
    ("decode") and purifying ("model"). ``sweep`` lists step counts t <= T whose
    images Psi_t each result also carries, from the same chain.
    """
    phases = Phases() if phases is None else phases
    seed = secrets.randbits(62) if seed is None else seed
    slack = BUCKET_SLACK if purifier.maskable else 1.0
    budget = batch_size * max(purifier.image_size, MIN_BATCH_SIDE) ** 2
    ahead = prefetched(pictures, 2 * budget, picture_pixels)  # up to two batches ahead
    index = 0
    try:
        for chunk in chunks(phases.timed("decode", ahead), batch_size, budget):
            inputs = [model_input(picture.rgb, purifier.channels) for _, picture in chunk]
            shapes = [
                padded_shape(p.shape, purifier.image_size, purifier.size_multiple) for p in inputs
            ]
            results: dict[int, PurifiedImage] = {}
            for bucket in buckets(shapes, DEFAULT_TILE_PIXELS, slack):
                picked = [inputs[i] for i in bucket]
                indices = torch.tensor(
                    [index + i if positions is None else positions[index + i] for i in bucket]
                )
                with phases.time("model"):
                    out, before, after, swept = purify_bucket(
                        purifier, picked, seed, indices, sweep
                    )
                for j, i in enumerate(bucket):
                    name, picture = chunk[i]
                    purified = picture.with_pixels(out[j])
                    steps = {t: images[j] for t, images in swept.items()}
                    energies = float(before[j]), float(after[j])
                    moved = psnr(picture.rgb, purified.rgb)
                    results[i] = PurifiedImage(name, purified, *energies, steps, moved)
            yield from (results[i] for i in range(len(chunk)))
            index += len(chunk)
    finally:
        ahead.close()  # also when the caller stops early or fails: stops the reading thread


def energies_of(
    scorer: Purifier,
    pictures: Iterable[tuple[str, Picture]],
    batch_size: int = 64,
    phases: Phases | None = None,
) -> Iterator[tuple[float, int]]:
    """Each picture's score and pixel count, in order (``scorer_for``: one forward
    pass, no noise), what an energy filter ranks (pureebm.filtering)."""
    for item in purify_pictures(scorer, pictures, batch_size, 0, phases=phases):
        yield item.energy_before, item.rgb.shape[0] * item.rgb.shape[1]


def purify_container(
    container: Container,
    dst: Path,
    purifier: Purifier,
    batch_size: int = 64,
    seed: int | None = None,
    on_image: Callable[[PurifiedImage], None] | None = None,
    phases: Phases | None = None,
    filter: float | str | None = None,
    scorer: Purifier | None = None,
    threshold: float | None = None,
    on_selected: Callable[[int], None] | None = None,
) -> list[Energy]:
    """Purify every image of ``container`` and write the same container to ``dst``.

    With ``filter`` (pureebm.filtering), every image is scored by ``scorer`` first
    (``threshold``: the cut of filter=auto) and only the selected ones are
    purified (``on_selected`` hears how many); the others are written back as
    they were sent.
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
        if scorer is None:
            raise ValueError("a filter needs a scorer")
        scored = list(energies_of(scorer, container.iter_images(), batch_size, phases))
        scores = [energy for energy, _ in scored]
        chosen = selected_positions(scores, filter, threshold, [n for _, n in scored])
        if on_selected is not None:
            on_selected(len(chosen))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".pureebm-") as work:
        shard = Path(work) / "purified.npz"
        pictures = container.iter_images(chosen)
        batches = purify_pictures(purifier, pictures, batch_size, seed, chosen, phases)
        with write_shard(shard) as writer, contextlib.closing(batches):
            for item in batches:
                with phases.time("write"):
                    writer.add(item)
                if on_image is not None:
                    on_image(item)
        with phases.time("finalize"):
            return assemble(container, dst, [shard], [0, len(writer.energies)], chosen, scores)
