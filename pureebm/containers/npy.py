"""npy headers read without loading the arrays: shapes and dtypes checked first."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from pureebm.images import (
    InputTooLarge,
    Limits,
    UnsupportedInput,
)


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
