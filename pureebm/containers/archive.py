"""What a zip and a tar share: one open handle, members listed once."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from pureebm.containers.base import Container

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
