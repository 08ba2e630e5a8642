"""Shard files: purified images streamed to disk as they come, read back one at a time.

A shard file is an npz (a zip of ``.npy`` members) written member by member:
``image_<i>.npy`` for the i-th purified image (``alpha_<i>.npy`` beside it if it
has one), then ``names``, ``modes``, ``formats``, ``energy_before`` and
``energy_after``: what is needed to encode each image like its original without
decoding the original again. It is written aside and renamed
when complete (pureebm.atomic), so a reader sees a whole shard or none, and neither the writer
nor the reader ever holds more than one image. Both the CLI (one shard in a
temporary folder) and the service's workers (one file per shard) use it, so
memory is bounded by the largest image, not by the size of a job.
"""

from __future__ import annotations

import bisect
import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pureebm.atomic import atomic_path
from pureebm.images import Picture

if TYPE_CHECKING:  # the pipeline writes shards; shards only need the type
    from pureebm.pipeline import PurifiedImage


class Energy(NamedTuple):
    name: str
    energy_before: float
    energy_after: float


class ShardWriter:
    """Appends purified images to an open shard file (see ``write_shard``)."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.energies: list[Energy] = []
        self.modes: list[str] = []
        self.formats: list[str] = []

    def add(self, image: PurifiedImage) -> None:
        index, picture = len(self.energies), image.picture
        self.write_array(f"image_{index}", picture.rgb)
        if picture.alpha is not None:
            self.write_array(f"alpha_{index}", picture.alpha)
        self.energies.append(Energy(image.name, image.energy_before, image.energy_after))
        self.modes.append(picture.mode)
        self.formats.append(picture.format)

    def write_array(self, key: str, array: np.ndarray) -> None:
        with self.archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)

    def finish(self) -> None:
        names, before, after = zip(*self.energies, strict=True) if self.energies else ([],) * 3
        self.write_array("names", np.array(names, dtype=str))
        self.write_array("modes", np.array(self.modes, dtype=str))
        self.write_array("formats", np.array(self.formats, dtype=str))
        self.write_array("energy_before", np.array(before, np.float32))
        self.write_array("energy_after", np.array(after, np.float32))


@contextlib.contextmanager
def write_shard(path: Path) -> Iterator[ShardWriter]:
    """A writer whose images appear at ``path`` when the block ends without an error;
    an unfinished shard (an error, a canceled job) leaves nothing behind."""
    with (
        atomic_path(path) as partial,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        writer = ShardWriter(archive)
        yield writer
        writer.finish()


class ShardSet:
    """Purified pixels by member name, from shard files that split the images at ``bounds``.

    ``bounds`` are the positions where shards start, plus the total: shard ``s``
    holds images ``bounds[s]`` to ``bounds[s + 1] - 1`` in container order. One
    shard file is open at a time; reading in container order opens each once.
    """

    def __init__(self, paths: list[Path], bounds: list[int], names: list[str]) -> None:
        if len(paths) != len(bounds) - 1 or bounds[-1] != len(names):
            raise ValueError("shard paths and bounds do not cover the images")
        self.paths, self.bounds = paths, bounds
        self.position = {name: i for i, name in enumerate(names)}
        self.open: OpenShard | None = None

    def shard_of(self, position: int) -> int:
        return bisect.bisect_right(self.bounds, position) - 1

    def file(self, shard: int) -> OpenShard:
        if self.open is None or self.open.index != shard:
            self.close()
            self.open = OpenShard(shard, np.load(self.paths[shard], allow_pickle=False))
        return self.open

    def picture(self, name: str) -> Picture:
        """The purified picture of a member, ready to encode like its original."""
        position = self.position[name]
        shard = self.shard_of(position)
        return self.file(shard).picture(position - self.bounds[shard])

    def energies(self) -> Iterator[Energy]:
        for path in self.paths:
            with np.load(path, allow_pickle=False) as f:
                rows = zip(f["names"], f["energy_before"], f["energy_after"], strict=True)
                for name, before, after in rows:
                    yield Energy(str(name), float(before), float(after))

    def close(self) -> None:
        if self.open is not None:
            self.open.npz.close()
            self.open = None


class OpenShard:
    """One shard file, its small per-image arrays read once."""

    def __init__(self, index: int, npz: np.lib.npyio.NpzFile) -> None:
        self.index, self.npz = index, npz
        self.modes, self.formats = [str(m) for m in npz["modes"]], [str(f) for f in npz["formats"]]
        self.keys = set(npz.files)

    def picture(self, i: int) -> Picture:
        alpha = self.npz[f"alpha_{i}"] if f"alpha_{i}" in self.keys else None
        return Picture(self.npz[f"image_{i}"], alpha, self.modes[i], self.formats[i])


def cut_shards(pixels: list[int], max_images: int, max_pixels: int) -> list[int]:
    """Shard start positions plus the total: a shard ends when it holds ``max_images``
    images or ``max_pixels`` pixels (an image larger than that is a shard alone)."""
    bounds, images, total = [0], 0, 0
    for position, count in enumerate(pixels):
        if images and (images >= max_images or total + count > max_pixels):
            bounds.append(position)
            images, total = 0, 0
        images, total = images + 1, total + count
    return [*bounds, len(pixels)] if pixels else [0]
