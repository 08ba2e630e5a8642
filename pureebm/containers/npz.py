"""npz files: the image arrays, purified, and every other member back byte for byte."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pureebm.containers.base import COPY_CHUNK, Container, Lookup, Member
from pureebm.containers.labels import Labels
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


@dataclass
class ImageArray:
    key: str
    info: zipfile.ZipInfo
    header: NpyHeader
    start: int  # the position of its first image among the container's members


class NpzContainer(Container):
    """npz with one images array (uint8, N x H x W or N x H x W x C, C in 1, 3, 4),
    or several of one image shape (Keras' ``x_train`` and ``x_test``), found by
    ``image_keys``.

    Image members are named ``<key>/<index>``. Only the images are read: from the
    file through a memory map where the member is stored, else decompressed once.
    Every other member is checked from its header and copied through byte for byte.
    """

    kind = "npz"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        self._images: dict[str, np.ndarray] = {}
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
        self.arrays: list[ImageArray] = []
        self.members = []
        for key in image_keys(headers):
            header = headers[key + ".npy"]
            info = next(i for i in infos if i.filename == key + ".npy")
            check_images(key, header, limits)
            self.arrays.append(ImageArray(key, info, header, len(self.members)))
            rows = header.shape[0]
            self.members += [
                Member(f"{key}/{i}", "image", header.nbytes // rows) for i in range(rows)
            ]
        if len(self.members) > limits.max_members:
            raise InputTooLarge(
                f"{len(self.members)} images is over the {limits.max_members} limit"
            )

    def labels(self) -> Labels:
        """Each image array's labels: the array named for it (``label_key``), integer
        or text, one per image."""
        values: list[str] = []
        keys = []
        with np.load(self.path, allow_pickle=False) as npz:
            for array in self.arrays:
                key = label_key(array.key, npz.files)
                if key is None:
                    return Labels(None, f"no labels: no label array beside {array.key!r}")
                labels = npz[key]
                rows = array.header.shape[0]
                if labels.dtype.kind not in "iuU" or labels.reshape(-1).shape != (rows,):
                    return Labels(None, f"no labels: {key!r} is not one class per image")
                values += [str(v) for v in labels.reshape(-1)]
                keys.append(repr(key))
        return Labels(values, f"npz {', '.join(keys)} ({len(set(values))} classes)")

    def images(self, array: ImageArray) -> np.ndarray:
        if array.key not in self._images:
            self._images[array.key] = read_images(self.path, array.info, array.header)
        return self._images[array.key]

    def locate(self, index: int) -> tuple[ImageArray, int]:
        """The array that holds member ``index``, and its row there."""
        array = next(a for a in reversed(self.arrays) if a.start <= index)
        return array, index - array.start

    def iter_images(self, positions: Sequence[int] | None = None) -> Iterator[tuple[str, Picture]]:
        for index in range(len(self.members)) if positions is None else positions:
            yield self.members[index].name, self.picture(index)

    def picture(self, index: int) -> Picture:
        array, position = self.locate(index)
        row = np.asarray(self.images(array)[position])
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
        """The same members in the same order: each image array with its purified
        rows, every other member copied as sent."""
        written = {array.info.filename: array for array in self.arrays}
        with zipfile.ZipFile(self.path) as src, zipfile.ZipFile(dst, "w") as out:
            for info in src.infolist():
                copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                copy.compress_type = info.compress_type
                array = written.get(info.filename)
                images = None if array is None else self.purified_array(array, purified)
                large = info.file_size > 1 << 30 or (images is not None and images.nbytes > 1 << 30)
                with out.open(copy, "w", force_zip64=large) as f:
                    if images is not None:
                        np.lib.format.write_array(f, images, allow_pickle=False)
                    else:
                        with src.open(info) as member:
                            shutil.copyfileobj(member, f, COPY_CHUNK)

    def purified_array(self, array: ImageArray, purified: Lookup) -> np.ndarray:
        """``array`` with each purified row (the others as sent)."""
        images = np.array(self.images(array))
        for row in range(len(images)):
            picture = purified(array.start + row)
            if picture is not None:
                images[row] = np.asarray(restore_mode(picture)).reshape(images[row].shape)
        return images


def label_key(images_key: str, keys: Sequence[str]) -> str | None:
    """The array that labels ``images_key``: x_train -> y_train, x -> y, images ->
    labels (any case), else a lone ``labels``, ``targets`` or ``y``."""
    lower = images_key.lower()
    paired = [("x", "y"), ("images", "labels"), ("imgs", "labels"), ("data", "labels")]
    wanted = [y + lower[len(x) :] for x, y in paired if lower.startswith(x)]
    wanted += ["labels", "targets", "y"]
    by_lower = {key.lower(): key for key in keys if key != images_key}
    return next((by_lower[w] for w in wanted if w in by_lower), None)


def check_images(key: str, header: NpyHeader, limits: Limits) -> None:
    """An image array as the container takes it: uint8 NHW or NHWC, C in 1, 3, 4."""
    shape = header.shape
    if (
        header.dtype != np.uint8
        or len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[3] not in (1, 3, 4))
    ):
        raise UnsupportedInput(
            f"{key!r} must be uint8 NHW or NHWC with C in 1, 3, 4; got {header.dtype} {shape}"
        )
    if 0 in shape[1:]:
        raise UnsupportedInput(f"npz images of shape {shape} hold no pixels")
    limits.check_size(width=shape[2], height=shape[1])
    if not shape[0]:
        raise UnsupportedInput(f"the npz's {key!r} holds no images")


def image_keys(headers: dict[str, NpyHeader]) -> list[str]:
    """The arrays that hold the images: the only one that could (``image_shaped``),
    or every one that could when they are all uint8 of one image shape (Keras'
    x_train and x_test), else the first of IMAGE_KEYS among them. Any other array
    that could hold images is refused, naming the arrays: it would pass through
    unpurified."""
    arrays = {name[: -len(".npy")]: header for name, header in headers.items()}
    candidates = [key for key, h in arrays.items() if image_shaped(h.dtype, h.shape)]
    named = [key for key in IMAGE_KEYS if key in arrays]
    if not candidates and not named:
        raise UnsupportedInput(
            f"the npz has no array of images (arrays: {', '.join(arrays) or 'none'}): name it "
            "'images' (uint8, N x H x W or N x H x W x C)"
        )
    alike = {(arrays[k].dtype, arrays[k].shape[1:]) for k in candidates}
    if len(candidates) > 1 and len(alike) == 1 and next(iter(alike))[0] == np.uint8:
        return candidates
    key = candidates[0] if len(candidates) == 1 else (named or candidates)[0]
    others = [c for c in candidates if c != key]
    if others:
        raise UnsupportedInput(
            f"npz arrays {', '.join(repr(c) for c in [key, *others])} could each hold images; "
            f"{key!r} would be purified and {', '.join(repr(c) for c in others)} passed through "
            "unpurified: send image arrays of one shape (uint8 N x H x W x C), or one per npz"
        )
    return [key]


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
