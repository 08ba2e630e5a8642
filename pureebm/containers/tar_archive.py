"""Tar archives, optionally gzip, bz2 or xz compressed."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pureebm.containers.archive import Archive
from pureebm.containers.base import (
    Lookup,
    Member,
    check_member_name,
    encoded_images,
    member_kind,
)
from pureebm.containers.labels import SIDECAR_BYTES
from pureebm.images import (
    SNIFF_BYTES,
    InputTooLarge,
    Limits,
    UnsafeInput,
    UnsupportedInput,
)


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
        check_tar_headers(path, self.compression, max_total)
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

    def read_files(self, names: Sequence[str]) -> dict[str, bytes]:
        wanted, found = set(names), {}
        with tarfile.open(self.path, "r:*") as archive:  # one pass: a tar.gz reads forward
            for info in archive:
                if info.name in wanted:
                    found[info.name] = read_tar_member(archive, info, SIDECAR_BYTES + 1)
        return found

    def read_member(self, reader: tarfile.TarFile, name: str) -> bytes:
        return read_tar_member(reader, self.images[name])

    def write(self, dst: Path, purified: Lookup) -> None:
        with tarfile.open(self.path, "r:*") as src, compressed_tar(dst, self.compression) as out:
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


@contextlib.contextmanager
def compressed_tar(dst: Path, compression: str | None) -> Iterator[tarfile.TarFile]:
    """A tar to write at ``dst``; a gzip one names no file in its header (``dst`` is
    a temporary name, renamed once whole, which a header would otherwise keep)."""
    if compression != "gz":
        with tarfile.open(dst, f"w:{compression}" if compression else "w") as out:
            yield out
        return
    with (
        open(dst, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw) as zipped,
        tarfile.open(fileobj=zipped, mode="w") as out,
    ):
        yield out


def tar_compression(path: Path) -> str | None:
    head = path.open("rb").read(6)
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return None


BLOCK = 512
# Extended headers (pax 'x' and 'g', GNU long names 'L' and 'K') are parsed whole by
# Python's tarfile, the pax ones in time quadratic in their length (CVE-2024-6232 in
# 3.11.7): so their declared sizes are checked first, from the raw blocks.
MAX_EXTENDED_HEADER = {b"x": 16 << 10, b"g": 16 << 10, b"L": 8 << 10, b"K": 8 << 10}
OPENERS = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}


def header_size(block: bytes) -> int:
    """A tar header's size field: octal digits, or GNU base-256."""
    field = block[124:136]
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError as e:
        raise UnsupportedInput(f"a tar header with a corrupt size field {field!r}") from e


def check_tar_headers(path: Path, compression: str | None, max_total: int) -> None:
    """Walk the raw 512-byte headers, before tarfile parses any: refuse an extended
    header over MAX_EXTENDED_HEADER and an archive over ``max_total`` bytes."""
    opener = OPENERS.get(compression or "", open)
    walked = 0
    with opener(path, "rb") as f:
        while block := f.read(BLOCK):
            if len(block) < BLOCK or block == bytes(BLOCK):
                return  # the end-of-archive blocks, or a truncation tarfile reports
            size = header_size(block)
            limit = MAX_EXTENDED_HEADER.get(block[156:157])
            if limit is not None and size > limit:
                kind = block[156:157].decode()
                raise UnsafeInput(
                    f"a tar extended header ('{kind}') of {size} bytes: over the {limit}-byte limit"
                )
            walked += BLOCK + size
            if walked > max_total:
                raise InputTooLarge("the archive is over its size or compression-ratio limit")
            skip = -(-size // BLOCK) * BLOCK
            if compression is None:
                f.seek(skip, io.SEEK_CUR)
            else:
                while skip:
                    skip -= len(f.read(min(skip, 1 << 20))) or skip


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
