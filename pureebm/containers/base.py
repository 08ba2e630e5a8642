"""What every container shares: members, their kinds, safe names, writing back."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, TypeVar

from pureebm.concurrency import ordered_map
from pureebm.containers.labels import Labels, member_labels
from pureebm.containers.npy import image_shaped, npy_header
from pureebm.images import (
    OTHER_IMAGE_SUFFIXES,
    SUPPORTED_FORMATS,
    InputTooLarge,
    Limits,
    Picture,
    UnsafeInput,
    UnsupportedInput,
    decode_image,
    encode_image,
    image_format_of,
    signature_of,
    sniff_format,
)

Kind = Literal["image", "folder", "zip", "tar", "npz"]


T = TypeVar("T")


R = TypeVar("R")


Lookup = Callable[[int], Picture | None]  # image position -> its purified picture, None: as sent


@dataclass
class Member:
    name: str  # '/'-separated path inside the container
    kind: Literal["image", "file", "dir"]
    size: int


COPY_CHUNK = 1 << 20


def picture_bytes(picture: Picture | None) -> int:
    return 0 if picture is None else picture.nbytes


def encode_or_keep(picture: Picture | None) -> bytes | None:
    return None if picture is None else encode_image(picture)


def encoded_images(members: list[Member], purified: Lookup) -> Iterator[bytes | None]:
    """The image members' purified encodings in container order, None for an image
    left as it was sent, encoded in the codec pool ahead of the writer."""
    images = sum(m.kind == "image" for m in members)
    pictures = (purified(position) for position in range(images))
    return ordered_map(encode_or_keep, pictures, picture_bytes)


ARCHIVE_SIGNATURES: list[tuple[str, int, bytes]] = [
    ("zip", 0, b"PK\x03\x04"),
    ("zip", 0, b"PK\x05\x06"),
    ("gzip", 0, b"\x1f\x8b\x08"),
    ("xz", 0, b"\xfd7zXZ\x00"),
    ("7z", 0, b"7z\xbc\xaf\x27\x1c"),
    ("rar", 0, b"Rar!\x1a\x07"),
    ("zstd", 0, b"\x28\xb5\x2f\xfd"),
    ("tar", 257, b"ustar"),
]


def archive_format(head: bytes) -> str | None:
    """The archive or compressed stream a file starting with ``head`` holds, or None."""
    if (name := signature_of(head, ARCHIVE_SIGNATURES)) is not None:
        return name
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bzip2"
    return None


def member_kind(name: str, head: bytes) -> Literal["image", "file"]:
    """What a container's file member is, from its first SNIFF_BYTES: an image to
    purify, or a file to pass through unchanged (labels, json, csv, ...). Raises
    UnsupportedInput for content that holds images the engine would not purify."""
    image_format = sniff_format(head)
    if image_format in SUPPORTED_FORMATS:
        return "image"
    if image_format is not None:
        raise UnsupportedInput(
            f"member {name!r} is a {image_format} image, which is not supported "
            f"(PNG, JPEG, BMP, WebP, TIFF): convert it, or leave it out"
        )
    if (archive := archive_format(head)) is not None:
        raise UnsupportedInput(
            f"member {name!r} is a {archive} archive inside the archive, whose images "
            "would not be purified: unpack it into the outer archive"
        )
    if (header := npy_header(head)) is not None and image_shaped(header.dtype, header.shape):
        raise UnsupportedInput(
            f"member {name!r} is an npy array of images {header.shape}: send it as an npz "
            "with an 'images' array"
        )
    if image_format_of(name):
        raise UnsupportedInput(f"member {name!r} is named as an image but does not hold one")
    if PurePosixPath(name).suffix.lower() in OTHER_IMAGE_SUFFIXES:
        raise UnsupportedInput(
            f"member {name!r} is named as an image in a format that is not supported "
            "(PNG, JPEG, BMP, WebP, TIFF): convert it, or leave it out"
        )
    return "file"


def check_member_name(name: str) -> str:
    """Refuse absolute paths, '..', drive letters and empty names; return it normalised."""
    path = PurePosixPath(name.replace("\\", "/"))
    if (
        not name
        or path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
        or "\x00" in name
    ):
        raise UnsafeInput(f"unsafe member path {name!r}")
    return name


class Container:
    """Base for every container kind: members in order, images decoded on demand."""

    kind: Kind
    members: list[Member]

    def image_names(self) -> list[str]:
        return [m.name for m in self.members if m.kind == "image"]

    def iter_images(self, positions: Sequence[int] | None = None) -> Iterator[tuple[str, Picture]]:
        """Decode the images at ``positions`` (ascending, among the images in container
        order; all when None) with their names. Members are read in this thread and
        decoded in a small thread pool ahead of the caller."""

        def decode(item: tuple[str, bytes]) -> tuple[str, Picture]:
            return item[0], decode_image(item[1], self.limits)

        return ordered_map(decode, self.image_bytes(positions), size=lambda item: len(item[1]))

    def image_bytes(self, positions: Sequence[int] | None) -> Iterator[tuple[str, bytes]]:
        """The encoded bytes of the images at ``positions`` (all when None), with their
        names, in container order."""
        raise NotImplementedError

    def labels(self) -> Labels:
        """The images' classes where the container states them: label sidecars or
        class folders (pureebm.containers.labels)."""
        files = [m.name for m in self.members if m.kind == "file"]
        return member_labels(self.image_names(), files, self.read_files)

    def read_files(self, names: Sequence[str]) -> dict[str, bytes]:
        """The first SIDECAR_BYTES + 1 bytes of each named file member."""
        raise NotImplementedError

    def chosen(self, positions: Sequence[int] | None) -> Iterator[str]:
        """The names of the images at ``positions`` (all when None)."""
        names = self.image_names()
        return iter(names) if positions is None else (names[p] for p in positions)

    def write(self, dst: Path, purified: Lookup) -> None:
        """Write the same container to ``dst`` with every image replaced by its
        purified picture, or copied as it was where ``purified`` gives None."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what reading named images kept open (an archive's handle)."""

    def check_totals(self, limits: Limits, compressed_bytes: int | None = None) -> None:
        if len(self.members) > limits.max_members:
            raise InputTooLarge(
                f"{len(self.members)} members is over the {limits.max_members} limit"
            )
        for member in self.members:
            if member.size > limits.max_member_bytes:
                raise InputTooLarge(
                    f"member {member.name!r} is over {limits.max_member_bytes} bytes"
                )
        total = sum(m.size for m in self.members)
        if total > limits.max_uncompressed(compressed_bytes or None):
            raise InputTooLarge(
                f"{total} bytes uncompressed is over the size or compression-ratio limit "
                f"({limits.max_total_bytes} bytes, {limits.max_ratio:g}x): a zip bomb?"
            )
        if not self.image_names():
            raise UnsupportedInput("the container holds no images")
