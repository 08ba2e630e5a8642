"""The media type a result is served with, from its file name."""

from __future__ import annotations

from pathlib import Path

MEDIA_TYPES = {
    ".png": "image/png",
    ".tif": "image/tiff",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".npz": "application/octet-stream",
}


def media_type_of(result: Path) -> str:
    return MEDIA_TYPES.get(result.suffix, "application/octet-stream")
