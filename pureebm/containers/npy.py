"""npy headers read without loading the arrays: shapes and dtypes checked first."""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import IO

import numpy as np

from pureebm.images import (
    InputTooLarge,
    Limits,
    UnsupportedInput,
)

MIN_IMAGE_SIDE = 8  # an N x H x W array with smaller sides is taken for metadata


def image_shaped(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """An array that could hold images: uint8 or float, N x H x W (sides of at least
    MIN_IMAGE_SIDE), N x H x W x C or N x C x H x W with C in 1, 3, 4."""
    if not (dtype == np.uint8 or dtype.kind == "f"):
        return False
    if len(shape) == 3:
        return min(shape[1:]) >= MIN_IMAGE_SIDE
    return len(shape) == 4 and (shape[3] in (1, 3, 4) or shape[1] in (1, 3, 4))


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    data_offset: int  # bytes from the start of the npy file to its data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(f: IO[bytes]) -> NpyHeader:
    """What an npy file declares, read from its header alone."""
    version = np.lib.format.read_magic(f)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(f)
    return NpyHeader(shape, fortran_order, dtype, f.tell())


def npy_header(head: bytes) -> NpyHeader | None:
    """The header of an npy file starting with ``head``, or None (not one, or a header
    longer than ``head``)."""
    if not head.startswith(b"\x93NUMPY"):
        return None
    try:
        return read_npy_header(io.BytesIO(head))
    except (ValueError, EOFError):
        return None


def npz_headers(archive: zipfile.ZipFile, limits: Limits) -> dict[str, NpyHeader]:
    """Every .npy member's header, by member name. Refuses object arrays and arrays
    that declare more bytes than their members hold or than the limits allow, from
    the headers alone: a reader allocates what a header declares before it reads a
    byte of data."""
    headers = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        try:
            with archive.open(info) as f:
                header = read_npy_header(f)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise UnsupportedInput(f"unreadable npz member {info.filename}: {e}") from e
        if header.dtype.hasobject:
            raise UnsupportedInput(f"npz array {info.filename} holds Python objects: refused")
        if header.nbytes > min(info.file_size, limits.max_total_bytes):
            raise InputTooLarge(
                f"npz array {info.filename} declares shape {header.shape} ({header.nbytes} "
                f"bytes) in a member of {info.file_size} bytes"
            )
        headers[info.filename] = header
    return headers
