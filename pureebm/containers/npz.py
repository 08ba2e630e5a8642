"""npz files: an image array, purified, and every other member back byte for byte."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pureebm.containers.base import COPY_CHUNK, Container, Lookup, Member
from pureebm.containers.npy import NpyHeader, image_shaped, npz_headers
from pureebm.images import (
    InputTooLarge,
    Limits,
    Picture,
    UnsafeInput,
    UnsupportedInput,
    restore_mode,
)

# the names an images array goes by, in the order they are looked for
IMAGE_KEYS = ("images", "x", "x_train", "X", "X_train", "imgs", "data", "inputs", "features")
LOCAL_HEADER = 30  # a zip local file header's fixed part


class NpzContainer(Container):
    """npz with one images array (uint8, N x H x W or N x H x W x C, C in 1, 3, 4),
    found by ``images_key``.

    Image members are named ``<key>/<index>``. Only the images are read: from the
    file through a memory map where the member is stored, else decompressed once.
    Every other member is checked from its header and copied through byte for byte.
    """

    kind = "npz"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        self._images: np.ndarray | None = None
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
                headers = npz_headers(archive, limits)
        except zipfile.BadZipFile as e:
            raise UnsupportedInput(f"unreadable npz: {e}") from e
        repeated = [name for name, n in Counter(i.filename for i in infos).items() if n > 1]
        if repeated:
            raise UnsafeInput(f"npz member {repeated[0]!r} appears twice")
        total = sum(i.file_size for i in infos)
        if total > limits.max_uncompressed(path.stat().st_size):
            raise InputTooLarge(
                f"npz of {total} bytes uncompressed is over the size or compression-ratio limit"
            )
        self.key = images_key(headers)
        self.info = next(i for i in infos if i.filename == self.key + ".npy")
        self.header = header = headers[self.key + ".npy"]
        shape = header.shape
        if (
            header.dtype != np.uint8
            or len(shape) not in (3, 4)
            or (len(shape) == 4 and shape[3] not in (1, 3, 4))
        ):
            raise UnsupportedInput(
                f"{self.key!r} must be uint8 NHW or NHWC with C in 1, 3, 4; "
                f"got {header.dtype} {shape}"
            )
        if 0 in shape[1:]:
            raise UnsupportedInput(f"npz images of shape {shape} hold no pixels")
        limits.check_size(width=shape[2], height=shape[1])
        if shape[0] > limits.max_members:
            raise InputTooLarge(f"{shape[0]} images is over the {limits.max_members} limit")
        if not shape[0]:
            raise UnsupportedInput("the npz holds no images")
        row_bytes = header.nbytes // shape[0]
        self.members = [Member(f"{self.key}/{i}", "image", row_bytes) for i in range(shape[0])]

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = read_images(self.path, self.info, self.header)
        return self._images

    def iter_images(self, positions: Sequence[int] | None = None) -> Iterator[tuple[str, Picture]]:
        for index in range(len(self.members)) if positions is None else positions:
            yield self.members[index].name, self.picture(index)

    def picture(self, index: int) -> Picture:
        row = np.asarray(self.images[index])
        channels = 1 if row.ndim == 2 else row.shape[2]
        gray = row if row.ndim == 2 else row[..., 0]
        if channels == 1:
            return Picture(np.repeat(gray[..., None], 3, axis=2), None, "L", "NPZ")
        return Picture(
            np.ascontiguousarray(row[..., :3]),
            row[..., 3].copy() if channels == 4 else None,
            "RGBA" if channels == 4 else "RGB",
            "NPZ",
        )

    def write(self, dst: Path, purified: Lookup) -> None:
        """The same members in the same order: ``images`` with each purified row,
        every other member copied as sent."""
        images = np.array(self.images)
        for index in range(len(self.members)):
            picture = purified(index)
            if picture is not None:  # else the row stays as sent
                images[index] = np.asarray(restore_mode(picture)).reshape(images[index].shape)
        with zipfile.ZipFile(self.path) as src, zipfile.ZipFile(dst, "w") as out:
            for info in src.infolist():
                copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                copy.compress_type = info.compress_type
                large = info.file_size > 1 << 30 or images.nbytes > 1 << 30
                with out.open(copy, "w", force_zip64=large) as f:
                    if info.filename == self.info.filename:
                        np.lib.format.write_array(f, images, allow_pickle=False)
                    else:
                        with src.open(info) as member:
                            shutil.copyfileobj(member, f, COPY_CHUNK)


def images_key(headers: dict[str, NpyHeader]) -> str:
    """The array that holds the images: the only one that could (``image_shaped``),
    else the first of IMAGE_KEYS among them. Any other array that could hold images
    is refused, naming the arrays: it would pass through unpurified."""
    arrays = {name[: -len(".npy")]: header for name, header in headers.items()}
    candidates = [key for key, h in arrays.items() if image_shaped(h.dtype, h.shape)]
    named = [key for key in IMAGE_KEYS if key in arrays]
    if not candidates and not named:
        raise UnsupportedInput(
            f"the npz has no array of images (arrays: {', '.join(arrays) or 'none'}): name it "
            "'images' (uint8, N x H x W or N x H x W x C)"
        )
    key = candidates[0] if len(candidates) == 1 else (named or candidates)[0]
    others = [c for c in candidates if c != key]
    if others:
        raise UnsupportedInput(
            f"npz arrays {', '.join(repr(c) for c in [key, *others])} could each hold images; "
            f"{key!r} would be purified and {', '.join(repr(c) for c in others)} passed through "
            "unpurified: send one array of images per npz"
        )
    return key


def read_images(path: Path, info: zipfile.ZipInfo, header: NpyHeader) -> np.ndarray:
    """The ``images`` array: a read-only memory map of the file where the member is
    stored uncompressed, else read once through the decompressor."""
    order = "F" if header.fortran_order else "C"
    if info.compress_type == zipfile.ZIP_STORED:
        with path.open("rb") as f:
            f.seek(info.header_offset)
            local = f.read(LOCAL_HEADER)
        name_length = int.from_bytes(local[26:28], "little")
        extra_length = int.from_bytes(local[28:30], "little")
        start = info.header_offset + LOCAL_HEADER + name_length + extra_length
        return np.memmap(path, header.dtype, "r", start + header.data_offset, header.shape, order)
    with zipfile.ZipFile(path) as archive, archive.open(info) as f:
        f.read(header.data_offset)
        data = np.empty(header.shape, header.dtype, order=order)
        view = memoryview(data.reshape(-1, order="A")).cast("B")
        filled = 0
        while filled < len(view):
            chunk = f.readinto(view[filled : filled + COPY_CHUNK])
            if not chunk:
                raise UnsupportedInput("the npz's 'images' member ends early")
            filled += chunk
        return data
