"""A single image sent as itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from pureebm.containers.base import (
    Container,
    Lookup,
    Member,
)
from pureebm.images import (
    Limits,
    encode_image,
    image_format_of,
)


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
