"""The media type a result is served with, from its file name."""

from __future__ import annotations

from pathlib import Path
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


def media_type_of(result: Path) -> str:
    return MEDIA_TYPES.get(result.suffix, "application/octet-stream")


def attachment(name: str) -> str:
    """A Content-Disposition header for ``name``, in any script (RFC 6266 filename*, as
    Starlette's FileResponse writes it; headers themselves are Latin-1)."""
    quoted = quote(name)
    if quoted == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=utf-8''{quoted}"
