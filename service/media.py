"""The media type a result is served with, from its file name."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

MEDIA_TYPES = {
    ".png": "image/png",
    ".tif": "image/tiff",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".npz": "application/octet-stream",
}


def binary_content(*media_types: str) -> dict[str, dict[str, Any]]:
    """The OpenAPI ``content`` of a response that is a file of one of ``media_types``."""
    return {
        media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types
    }


def media_type_of(result: Path) -> str:
    return MEDIA_TYPES.get(result.suffix, "application/octet-stream")


def attachment(name: str) -> str:
    """A Content-Disposition header for ``name``, in any script (RFC 6266 filename*, as
    Starlette's FileResponse writes it; headers themselves are Latin-1)."""
    quoted = quote(name)
    if quoted == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=utf-8''{quoted}"
