"""Shard files: purified images streamed to disk as they come, read back without copies.

A shard file is an uncompressed (stored) zip written member by member:

- ``pixels.bin``: every image's RGB bytes (H x W x 3), each followed by its alpha
  bytes (H x W) if it has one, back to back, streamed as images come;
- then small ``.npy`` arrays: ``names``, ``shapes`` (N x 2), ``offsets`` (where
  each image's bytes start, plus the end), ``has_alpha``, ``modes``, ``formats``,
  ``energy_before``, ``energy_after``, ``psnr`` (dB to the original; NaN: not
  known), and ``kept`` with ``kept_offsets`` (each
  image's EXIF block and ICC profile, back to back): what is needed to encode
  each image like its original without decoding the original again.

A stored zip member is contiguous in the file, so a reader maps ``pixels.bin``
into memory once and each image is a view into it (no copy, no per-image member).
The file is written aside and renamed when complete (pureebm.atomic), so a reader
sees a whole shard or none, and neither the writer nor the reader ever holds more
than one image. The CLI (one shard in a temporary folder), the service's workers
(one file per shard) and the API (the images it decoded while validating, for
the workers) use it, so memory is bounded by the largest image, not by the size
of a job (mapped pages are the kernel's page cache, reclaimed under pressure).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from pureebm.atomic import atomic_path
from pureebm.containers import Container
from pureebm.images import KEPT_INFO, Picture
from pureebm.results import Energy, PurifiedImage

PIXELS = "pixels.bin"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local header, before its name


class ShardWriter:
    """Appends purified images to an open shard file (see ``write_shard``)."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.pixels: IO[bytes] = archive.open(PIXELS, "w", force_zip64=True)
        self.energies: list[Energy] = []
        self.shapes: list[tuple[int, int]] = []
        self.offsets, self.has_alpha = [0], []
        self.modes: list[str] = []
        self.formats: list[str] = []
        self.kept: list[bytes] = []  # per image, KEPT_INFO's blocks in order

    def add(self, image: PurifiedImage) -> None:
        self.add_picture(
            image.name, image.picture, image.energy_before, image.energy_after, image.psnr
        )

    def add_picture(
        self,
        name: str,
        picture: Picture,
        energy_before: float = math.nan,
        energy_after: float = math.nan,
        psnr: float = math.nan,
    ) -> None:
        size = 0
        for plane in (picture.rgb,) if picture.alpha is None else (picture.rgb, picture.alpha):
            data = np.ascontiguousarray(plane, np.uint8)
            self.pixels.write(data.data)
            size += data.nbytes
        self.offsets.append(self.offsets[-1] + size)
        self.shapes.append(picture.rgb.shape[:2])
        self.has_alpha.append(picture.alpha is not None)
        self.energies.append(Energy(name, energy_before, energy_after, psnr=psnr))
        self.modes.append(picture.mode)
        self.formats.append(picture.format)
        self.kept.extend(getattr(picture, key) for key in KEPT_INFO)

    @property
    def pixel_bytes(self) -> int:
        return self.offsets[-1]

    def write_array(self, key: str, array: np.ndarray) -> None:
        with self.archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)

    def finish(self) -> None:
        self.pixels.close()
        names = [e.name for e in self.energies]
        before = [e.energy_before for e in self.energies]
        after = [e.energy_after for e in self.energies]
        moved = [e.psnr for e in self.energies]
        self.write_array("names", np.array(names, dtype=str))
        self.write_array("shapes", np.array(self.shapes, np.int64).reshape(-1, 2))
        self.write_array("offsets", np.array(self.offsets, np.int64))
        self.write_array("has_alpha", np.array(self.has_alpha, bool))
        self.write_array("modes", np.array(self.modes, dtype=str))
        self.write_array("formats", np.array(self.formats, dtype=str))
        self.write_array("energy_before", np.array(before, np.float32))
        self.write_array("energy_after", np.array(after, np.float32))
        self.write_array("psnr", np.array(moved, np.float32))
        sizes = [len(block) for block in self.kept]
        self.write_array("kept", np.frombuffer(b"".join(self.kept), np.uint8))
        self.write_array("kept_offsets", np.cumsum([0, *sizes], dtype=np.int64))


@contextlib.contextmanager
def write_shard(path: Path) -> Iterator[ShardWriter]:
    """A writer whose images appear at ``path`` when the block ends without an error;
    an unfinished shard (an error, a canceled job) leaves nothing behind."""
    with (
        atomic_path(path) as partial,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        writer = ShardWriter(archive)
        try:
            yield writer
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                writer.pixels.close()
            raise
        writer.finish()


class ShardSet:
    """Purified pixels by image position, from shard files that split the purified images
    at ``bounds``.

    ``purified`` lists the container positions of the purified images in order
    (all of them when None; an energy filter's selection otherwise), and
    ``bounds`` are where each shard starts in that list, plus its length: shard
    ``s`` holds purified images ``bounds[s]`` to ``bounds[s + 1] - 1``. One
    shard file is opened at a time (a picture already handed out keeps its map
    alive); reading in container order opens each once.
    """

    def __init__(
        self,
        paths: list[Path],
        bounds: list[int],
        names: list[str],
        purified: list[int] | None = None,
    ) -> None:
        purified = list(range(len(names))) if purified is None else purified
        if len(paths) != len(bounds) - 1 or bounds[-1] != len(purified):
            raise ValueError("shard paths and bounds do not cover the purified images")
        self.paths, self.bounds, self.names = paths, bounds, names
        self.rank = {position: i for i, position in enumerate(purified)}
        self.open: OpenShard | None = None

    def shard_of(self, position: int) -> int:
        return bisect.bisect_right(self.bounds, position) - 1

    def file(self, shard: int) -> OpenShard:
        if self.open is None or self.open.index != shard:
            self.close()
            self.open = OpenShard(self.paths[shard], shard)
        return self.open

    def picture(self, position: int) -> Picture | None:
        """The purified picture of the image at ``position`` (container order), ready
        to encode like its original; None for an image that was not purified."""
        rank = self.rank.get(position)
        if rank is None:
            return None
        shard = self.shard_of(rank)
        return self.file(shard).picture(rank - self.bounds[shard])

    def energies(self, scores: list[float] | None = None) -> Iterator[Energy]:
        """Every image's energies in container order. An image a filter left out
        (``scores``: every image's energy, from the filter's ranking) keeps its
        score before and after."""
        purified: list[Energy] = []  # in rank order: the shards' rows, shard by shard
        for path in self.paths:
            with np.load(path, allow_pickle=False) as f:
                moved = f["psnr"] if "psnr" in f.files else np.full(len(f["names"]), np.nan)
                rows = zip(f["names"], f["energy_before"], f["energy_after"], moved, strict=True)
                purified += [
                    Energy(str(n), float(b), float(a), psnr=None if np.isnan(p) else float(p))
                    for n, b, a, p in rows
                ]
        for position, name in enumerate(self.names):
            rank = self.rank.get(position)
            if rank is not None:
                yield purified[rank]
            elif scores is not None:
                yield Energy(name, scores[position], scores[position], purified=False)

    def close(self) -> None:
        self.open = None  # the memory map closes with its last view


class OpenShard:
    """One shard file: its index arrays, and its pixels mapped into memory; the
    i-th picture it holds is ``picture(i)``. ``index`` is its place in a ShardSet."""

    def __init__(self, path: Path, index: int = 0) -> None:
        self.index = index
        with np.load(path, allow_pickle=False) as npz:
            self.shapes, self.offsets = npz["shapes"], npz["offsets"]
            self.has_alpha = npz["has_alpha"]
            self.modes, self.formats = (
                [str(m) for m in npz["modes"]],
                [str(f) for f in npz["formats"]],
            )
            self.kept, self.kept_offsets = npz["kept"], npz["kept_offsets"]
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(PIXELS)
        with path.open("rb") as f:
            f.seek(info.header_offset)
            header = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
        stored = header[0] == b"PK\x03\x04" and info.compress_type == zipfile.ZIP_STORED
        if not stored or info.flag_bits & 0x1 or info.file_size != self.offsets[-1]:
            raise ValueError(f"{path} is not a shard file (its pixels are not stored as written)")
        start = info.header_offset + LOCAL_HEADER.size + header[-2] + header[-1]
        self.pixels = (
            np.memmap(path, np.uint8, "r", offset=start, shape=(info.file_size,))
            if info.file_size
            else np.empty(0, np.uint8)
        )

    def __len__(self) -> int:
        return len(self.shapes)

    def picture(self, i: int) -> Picture:
        (height, width), start = self.shapes[i], self.offsets[i]
        rgb_end = start + height * width * 3
        rgb = self.pixels[start:rgb_end].reshape(height, width, 3)
        alpha = None
        if self.has_alpha[i]:
            alpha = self.pixels[rgb_end : self.offsets[i + 1]].reshape(height, width)
        kept = {}
        for k, key in enumerate(KEPT_INFO):
            block = i * len(KEPT_INFO) + k
            kept[key] = self.kept[self.kept_offsets[block] : self.kept_offsets[block + 1]].tobytes()
        return Picture(rgb, alpha, self.modes[i], self.formats[i], **kept)


def assemble(
    container: Container,
    dst: Path,
    paths: list[Path],
    bounds: list[int],
    purified: list[int] | None = None,
    scores: list[float] | None = None,
) -> list[Energy]:
    """Write ``container`` to ``dst`` with each purified image (from the shard files at
    ``paths``, split at ``bounds`` as ShardSet reads them) in place of the one sent,
    atomically: ``dst`` appears whole or not at all. ``purified`` lists the purified
    images' container positions (all of them when None); ``scores``, with a filter,
    every image's ranking energy. Returns every image's energies in container order.
    `pureebm purify` and the service's finaliser both assemble their result here."""
    shards = ShardSet(paths, bounds, container.image_names(), purified)
    try:
        with atomic_path(dst) as partial:
            container.write(partial, shards.picture)
        return list(shards.energies(scores))
    finally:
        shards.close()


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
