"""npz files: an image array, purified, and every other array back byte for byte."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pureebm.containers.base import (
    Container,
    Lookup,
    Member,
)
from pureebm.containers.npy import check_npy_headers, image_shaped
from pureebm.images import (
    InputTooLarge,
    Limits,
    Picture,
    UnsupportedInput,
    restore_mode,
)


class NpzContainer(Container):
    """npz with ``images`` (uint8, N x H x W or N x H x W x C, C in 1, 3, 4).

    Image members are named ``images/<index>``; every other key is carried
    through unchanged.
    """

    kind = "npz"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            self.compressed = any(i.compress_type != zipfile.ZIP_STORED for i in infos)
            total = sum(i.file_size for i in infos)
        if total > limits.max_uncompressed(path.stat().st_size):
            raise InputTooLarge(
                f"npz of {total} bytes uncompressed is over the size or compression-ratio limit"
            )
        check_npy_headers(path, limits)
        try:
            with np.load(path, allow_pickle=False) as npz:
                self.arrays = {key: npz[key] for key in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            raise UnsupportedInput(f"unreadable npz (object arrays are refused): {e}") from e
        images = self.arrays.get("images")
        if images is None:
            raise UnsupportedInput("the npz has no 'images' array")
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[3] not in (1, 3, 4))
        ):
            raise UnsupportedInput(
                "'images' must be uint8 NHW or NHWC with C in 1, 3, 4; "
                f"got {images.dtype} {images.shape}"
            )
        for key, array in self.arrays.items():
            if key != "images" and image_shaped(array.dtype, array.shape):
                raise UnsupportedInput(
                    f"npz array {key!r} {array.shape} holds images, which would pass through "
                    "unpurified: send one array of images, 'images', per npz"
                )
        if 0 in images.shape[1:]:
            raise UnsupportedInput(f"npz images of shape {images.shape} hold no pixels")
        limits.check_size(width=images.shape[2], height=images.shape[1])
        self.members = [
            Member(f"images/{i}", "image", images[i].nbytes) for i in range(len(images))
        ]
        if len(self.members) > limits.max_members:
            raise InputTooLarge(
                f"{len(self.members)} images is over the {limits.max_members} limit"
            )
        if not self.members:
            raise UnsupportedInput("the npz holds no images")

    def iter_images(self, positions: Sequence[int] | None = None) -> Iterator[tuple[str, Picture]]:
        for index in range(len(self.members)) if positions is None else positions:
            yield self.members[index].name, self.picture(index)

    def picture(self, index: int) -> Picture:
        row = self.arrays["images"][index]
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
        images = self.arrays["images"].copy()
        for index in range(len(self.members)):
            picture = purified(index)
            if picture is not None:  # else the row stays as sent
                images[index] = np.asarray(restore_mode(picture)).reshape(images[index].shape)
        arrays = {**self.arrays, "images": images}
        save = np.savez_compressed if self.compressed else np.savez
        with dst.open("wb") as f:
            save(f, **arrays)
