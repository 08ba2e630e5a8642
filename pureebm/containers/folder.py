"""A folder tree of images and other files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from pureebm.containers.base import (
    Container,
    Lookup,
    Member,
    encoded_images,
    member_kind,
)
from pureebm.containers.labels import SIDECAR_BYTES
from pureebm.images import (
    SNIFF_BYTES,
    Limits,
    UnsafeInput,
)


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

    def read_files(self, names: Sequence[str]) -> dict[str, bytes]:
        found = {}
        for name in names:
            with (self.path / name).open("rb") as f:
                found[name] = f.read(SIDECAR_BYTES + 1)
        return found

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
