"""Archives: the containers images arrive in, read member by member and written back.

A *container* is what a caller sends: a single image, a folder tree, a zip, a tar
(optionally gzip/bz2/xz-compressed) or an npz. Opening one lists its members in
order and refuses anything unsafe or oversized (README: HTTP API errors). Writing one
back reproduces the container, the member paths and their order, swaps each
image for its purified pixels (images.py encodes them), and copies every other
member byte for byte, and every image left unpurified (an energy filter's).

A member is an image by its content, not its name (``member_kind``): a PNG named
``x.png.bak`` or without an extension is purified like ``x.png``. Content that
would otherwise pass through unpurified is refused, naming the member: an image
in a format the engine does not decode (GIF, PPM, ...), an archive inside the
archive, an npy array of images, a file named as an image that is not one.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Generic, Literal, TypeVar

import numpy as np

from pureebm.concurrency import ordered_map
from pureebm.images import (
    OTHER_IMAGE_SUFFIXES,
    SNIFF_BYTES,
    SUPPORTED_FORMATS,
    InputTooLarge,
    Limits,
    Picture,
    UnsafeInput,
    UnsupportedInput,
    decode_image,
    encode_image,
    image_format_of,
    restore_mode,
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


def image_shaped(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """An array that can only be images: uint8 N x H x W x C with C in 1, 3, 4."""
    return dtype == np.uint8 and len(shape) == 4 and shape[3] in (1, 3, 4)


def read_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an npy file declares, read from its header alone."""
    version = np.lib.format.read_magic(f)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, _, dtype = read_header(f)
    return shape, dtype


def npy_header(head: bytes) -> tuple[tuple[int, ...], np.dtype] | None:
    """The header of an npy file starting with ``head``, or None (not one, or a header
    longer than ``head``)."""
    if not head.startswith(b"\x93NUMPY"):
        return None
    try:
        return read_npy_header(io.BytesIO(head))
    except (ValueError, EOFError):
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
    if (header := npy_header(head)) is not None and image_shaped(header[1], header[0]):
        raise UnsupportedInput(
            f"member {name!r} is an npy array of images {header[0]}: send it as an npz "
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


class SingleImage(Container):
    kind = "image"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        self.members = [Member(path.name, "image", path.stat().st_size)]

    def image_bytes(self, positions: Sequence[int] | None) -> Iterator[tuple[str, bytes]]:
        for name in self.chosen(positions):
            yield name, self.path.read_bytes()

    def write(self, dst: Path, purified: Lookup) -> None:
        """Written in the format of ``dst``'s extension, else the original's; an image
        left unpurified is copied as it was sent."""
        picture = purified(0)
        if picture is None:
            shutil.copyfile(self.path, dst)
        else:
            dst.write_bytes(encode_image(picture, image_format_of(dst.name)))


class Folder(Container):
    kind = "folder"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        self.members = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for entry in sorted(dirs) + sorted(files):
                full = Path(root, entry)
                name = full.relative_to(path).as_posix()
                if full.is_symlink() or not (full.is_dir() or full.is_file()):
                    raise UnsafeInput(f"{name!r} is a link or a special file")
                if full.is_dir():
                    self.members.append(Member(name, "dir", 0))
                else:
                    with full.open("rb") as f:
                        kind = member_kind(name, f.read(SNIFF_BYTES))
                    self.members.append(Member(name, kind, full.stat().st_size))
            if len(self.members) > limits.max_members:
                break
        self.check_totals(limits)

    def image_bytes(self, positions: Sequence[int] | None) -> Iterator[tuple[str, bytes]]:
        for name in self.chosen(positions):
            yield name, (self.path / name).read_bytes()

    def write(self, dst: Path, purified: Lookup) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        encoded = encoded_images(self.members, purified)
        for member in self.members:
            target = dst / member.name
            if member.kind == "dir":
                target.mkdir(exist_ok=True)
            elif member.kind == "file" or (data := next(encoded)) is None:
                shutil.copyfile(self.path / member.name, target)
            else:
                target.write_bytes(data)


Handle = TypeVar("Handle", zipfile.ZipFile, tarfile.TarFile)


class Archive(Container, Generic[Handle]):
    """A zip or a tar: images read through a handle on the archive.

    A whole pass opens a handle of its own. Named reads (a worker's shards) share
    one handle, kept open until ``close``: a job's shards then do not each
    re-read a zip's directory (half a second for 50,000 members), and shards
    taken in order (as one worker takes a job's shards) move forward through a
    tar.gz instead of decompressing it from its start each time; going back is
    correct, only slower.
    """

    reader: Handle | None = None

    def open_reader(self) -> Handle:
        raise NotImplementedError

    def read_member(self, reader: Handle, name: str) -> bytes:
        raise NotImplementedError

    def image_bytes(self, positions: Sequence[int] | None) -> Iterator[tuple[str, bytes]]:
        if positions is None:
            with self.open_reader() as reader:
                for name in self.image_names():
                    yield name, self.read_member(reader, name)
            return
        if self.reader is None:
            self.reader = self.open_reader()
        try:
            for name in self.chosen(positions):
                yield name, self.read_member(self.reader, name)
        except Exception:
            self.close()  # a handle that failed mid-read is not used again
            raise

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


class ZipContainer(Archive[zipfile.ZipFile]):
    kind = "zip"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        with zipfile.ZipFile(path) as archive:
            self.members = self.list_members(archive, limits)
        self.check_totals(limits, compressed_bytes=path.stat().st_size)

    @staticmethod
    def list_members(archive: zipfile.ZipFile, limits: Limits) -> list[Member]:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise InputTooLarge(f"{len(infos)} members is over the {limits.max_members} limit")
        members = []
        seen: set[str] = set()
        for info in infos:
            check_member_name(info.filename)
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeInput(f"{info.filename!r} is a link or a special file")
            if info.filename in seen:
                raise UnsafeInput(f"{info.filename!r} appears twice")
            seen.add(info.filename)
            if info.flag_bits & 0x1:
                raise UnsupportedInput(f"{info.filename!r} is encrypted")
            if info.compress_type not in ZIP_METHODS:
                raise UnsupportedInput(
                    f"{info.filename!r} uses an unsupported compression method "
                    f"({info.compress_type})"
                )
            if info.is_dir():
                members.append(Member(info.filename, "dir", 0))
                continue
            try:
                with archive.open(info) as f:
                    head = f.read(SNIFF_BYTES)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
                raise UnsupportedInput(f"corrupt zip member {info.filename!r}: {e}") from e
            kind = member_kind(info.filename, head)
            members.append(Member(info.filename, kind, info.file_size))
        return members

    def open_reader(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.path)

    def read_member(self, reader: zipfile.ZipFile, name: str) -> bytes:
        return read_zip_member(reader, name)

    def write(self, dst: Path, purified: Lookup) -> None:
        encoded = encoded_images(self.members, purified)
        with zipfile.ZipFile(self.path) as src, zipfile.ZipFile(dst, "w") as out:
            for info, member in zip(src.infolist(), self.members, strict=True):
                data = next(encoded) if member.kind == "image" else None
                if member.kind == "dir":
                    out.writestr(info, b"")
                elif data is None:  # copied in chunks: a member is never held whole
                    copy_zip_member(src, out, info)
                else:
                    out.writestr(info, data, compress_type=info.compress_type)


ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def copy_zip_member(src: zipfile.ZipFile, out: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    try:
        with src.open(info) as data, out.open(info, "w", force_zip64=True) as copy:
            shutil.copyfileobj(data, copy, COPY_CHUNK)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UnsupportedInput(f"corrupt zip member {info.filename!r}: {e}") from e


def read_zip_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise UnsupportedInput(f"corrupt zip member {name!r}: {e}") from e
    except (RuntimeError, NotImplementedError) as e:  # encrypted, unknown method
        raise UnsupportedInput(f"unreadable zip member {name!r}: {e}") from e


class TarContainer(Archive[tarfile.TarFile]):
    """A tar, plain or compressed. The listing pass keeps every image's header, with
    where its data starts, so reading an image seeks straight to it (forward
    through a compressed stream)."""

    kind = "tar"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        self.compression = tar_compression(path)
        self.members = []
        self.images: dict[str, tarfile.TarInfo] = {}
        total = 0
        seen: set[str] = set()
        # checked at each header, before the member's data is decompressed to skip it; a
        # plain tar too, whose sparse members can declare far more than the file holds
        max_total = limits.max_uncompressed(path.stat().st_size)
        with tarfile.open(path, "r:*") as archive:
            for info in archive:
                check_member_name(info.name)
                if not (info.isreg() or info.isdir()):
                    raise UnsafeInput(f"{info.name!r} is a link, device or special file")
                # results are looked up by name, so a repeated name would swap images
                if info.name.rstrip("/") in seen:
                    raise UnsafeInput(f"{info.name!r} appears twice")
                seen.add(info.name.rstrip("/"))
                total += info.size
                if len(self.members) >= limits.max_members or total > max_total:
                    raise InputTooLarge(
                        "the archive is over its member-count, size or compression-ratio limit"
                    )
                if info.isdir():
                    self.members.append(Member(info.name, "dir", 0))
                    continue
                kind = member_kind(info.name, read_tar_member(archive, info, SNIFF_BYTES))
                self.members.append(Member(info.name, kind, info.size))
                if kind == "image":
                    self.images[info.name] = info
        self.check_totals(limits, compressed_bytes=path.stat().st_size)

    def open_reader(self) -> tarfile.TarFile:
        return tarfile.open(self.path, "r:*")

    def read_member(self, reader: tarfile.TarFile, name: str) -> bytes:
        return read_tar_member(reader, self.images[name])

    def write(self, dst: Path, purified: Lookup) -> None:
        mode = f"w:{self.compression}" if self.compression else "w"
        with tarfile.open(self.path, "r:*") as src, tarfile.open(dst, mode) as out:
            encoded = encoded_images(self.members, purified)
            for info, member in zip(src, self.members, strict=True):
                if info.isdir():
                    out.addfile(info)
                    continue
                data = next(encoded) if member.kind == "image" else None
                if data is None:  # copied in chunks: a member is never held whole
                    out.addfile(plain_tarinfo(info), src.extractfile(info))
                else:
                    out.addfile(plain_tarinfo(info, len(data)), io.BytesIO(data))


def tar_compression(path: Path) -> str | None:
    head = path.open("rb").read(6)
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return None


def read_tar_member(
    archive: tarfile.TarFile, info: tarfile.TarInfo, limit: int | None = None
) -> bytes:
    """A member's bytes, or its first ``limit`` bytes."""
    expected = info.size if limit is None else min(limit, info.size)
    try:
        f = archive.extractfile(info)
        assert f is not None
        data = f.read(expected)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UnsupportedInput(f"corrupt tar member {info.name!r}: {e}") from e
    if len(data) != expected:
        raise UnsupportedInput(f"truncated tar member {info.name!r}")
    return data


def plain_tarinfo(info: tarfile.TarInfo, size: int | None = None) -> tarfile.TarInfo:
    """A regular member's header like ``info``'s (a sparse one is written out whole)."""
    copy = tarfile.TarInfo(info.name)
    copy.size, copy.mode, copy.mtime = info.size if size is None else size, info.mode, info.mtime
    copy.uid, copy.gid, copy.uname, copy.gname = info.uid, info.gid, info.uname, info.gname
    return copy


def check_npy_headers(path: Path, limits: Limits) -> None:
    """Refuse an npz whose arrays declare more bytes than their members hold or than
    the limits allow, from the headers alone: np.load allocates what a header
    declares before it reads a byte of data."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with archive.open(info) as f:
                    shape, dtype = read_npy_header(f)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise UnsupportedInput(f"unreadable npz member {info.filename}: {e}") from e
            declared = math.prod(shape) * dtype.itemsize
            if declared > min(info.file_size, limits.max_total_bytes):
                raise InputTooLarge(
                    f"npz array {info.filename} declares shape {shape} ({declared} bytes) in a "
                    f"member of {info.file_size} bytes"
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


def detect_kind(path: Path) -> Kind:
    """The container kind, from the content (not the name) except for npz vs zip."""
    if path.is_dir():
        return "folder"
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as e:
            raise UnsupportedInput(f"corrupt zip archive: {e}") from e
        if "images.npy" in names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "zip"
    if tar_compression(path) or (len(head) >= 262 and head[257:262] == b"ustar"):
        return "tar"
    if sniff_format(head) or image_format_of(path.name):
        return "image"  # decoding refuses the formats it does not support, by name
    raise UnsupportedInput("not an image or a supported archive (zip, tar, tar.gz, npz)")


CONTAINERS: dict[Kind, type[Container]] = {
    "image": SingleImage,
    "folder": Folder,
    "zip": ZipContainer,
    "tar": TarContainer,
    "npz": NpzContainer,
}


def open_container(path: str | Path, limits: Limits = Limits()) -> Container:
    """Open and check a container; raises a FormatError subclass naming the fault."""
    path = Path(path)
    kind = detect_kind(path)
    try:
        return CONTAINERS[kind](path, limits)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise UnsupportedInput(f"corrupt {kind} container: {e}") from e


def load_image_array(path: str | Path) -> np.ndarray:
    """Every image of a container as one uint8 N x H x W x 3 array (all one size)."""
    pictures = [picture.rgb for _, picture in open_container(path).iter_images()]
    shapes = {p.shape for p in pictures}
    if len(shapes) != 1:
        raise UnsupportedInput(f"training images must share one size; found {sorted(shapes)}")
    return np.stack(pictures)
