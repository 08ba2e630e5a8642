"""Zip archives."""

from __future__ import annotations

import shutil
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path

from pureebm.containers.archive import Archive
from pureebm.containers.base import (
    COPY_CHUNK,
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


class ZipContainer(Archive[zipfile.ZipFile]):
    kind = "zip"

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        check_declared_entries(path, limits)
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
                    kind = member_kind(info.filename, f.read(SNIFF_BYTES))
                    if kind == "file":  # read to its end, so a bad CRC is refused now
                        while f.read(COPY_CHUNK):
                            pass
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
                raise UnsupportedInput(f"corrupt zip member {info.filename!r}: {e}") from e
            members.append(Member(info.filename, kind, info.file_size))
        return members

    def open_reader(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.path)

    def read_files(self, names: Sequence[str]) -> dict[str, bytes]:
        found = {}
        with zipfile.ZipFile(self.path) as archive:
            for name in names:
                with archive.open(name) as member:
                    found[name] = member.read(SIDECAR_BYTES + 1)
        return found

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


END_OF_DIRECTORY = b"PK\x05\x06"
ZIP64_LOCATOR = b"PK\x06\x07"
END_SEARCH = 22 + 0xFFFF  # the record and the longest comment


def check_declared_entries(path: Path, limits: Limits) -> None:
    """Refuse a zip whose end-of-central-directory record declares more entries than
    ``limits.max_members``, before the directory is parsed (zipfile reads all of it)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - END_SEARCH))
        tail = f.read()
        end = tail.rfind(END_OF_DIRECTORY)
        if end < 0 or len(tail) < end + 22:
            return  # not a zip: zipfile says so
        entries = int.from_bytes(tail[end + 10 : end + 12], "little")
        locator = end - 20
        if entries == 0xFFFF and locator >= 0 and tail[locator : locator + 4] == ZIP64_LOCATOR:
            f.seek(int.from_bytes(tail[locator + 8 : locator + 16], "little") + 32)
            entries = int.from_bytes(f.read(8), "little")
    if entries > limits.max_members:
        raise InputTooLarge(
            f"the zip declares {entries} members: over the {limits.max_members} limit"
        )


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
