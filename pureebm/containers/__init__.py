"""Containers: what images arrive in, read member by member and written back.

A *container* is what a caller sends: a single image, a folder tree, a zip, a tar
(optionally gzip/bz2/xz-compressed) or an npz. Opening one lists its members in
order and refuses anything unsafe or oversized (README: HTTP API errors). Writing one
back reproduces the container, the member paths and their order, swaps each
image for its purified pixels (images.py encodes them), and copies every other
member byte for byte, and every image left unpurified (an energy filter's).

A member is an image by its content, not its name (``member_kind``): a PNG named
``x.png.bak`` or without an extension is purified like ``x.png``. Content that
would otherwise pass through unpurified is refused, naming the member: an image
in a format the engine does not decode (GIF, PPM, ...), an archive inside the
archive, an npy array of images, a file named as an image that is not one.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePath

import numpy as np

from pureebm.containers.base import Container, Kind
from pureebm.containers.folder import Folder
from pureebm.containers.npz import NpzContainer
from pureebm.containers.single import SingleImage
from pureebm.containers.tar_archive import TarContainer, tar_compression
from pureebm.containers.zip_archive import ZipContainer, check_declared_entries
from pureebm.images import (
    Limits,
    UnsupportedInput,
    image_format_of,
    lossless_format,
    sniff_format,
)

__all__ = [
    "Container",
    "Kind",
    "check_output_name",
    "detect_kind",
    "load_image_array",
    "open_container",
    "purified_name",
]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".npz")
TAR_COMPRESSION = {".tar": None, ".tar.gz": "gz", ".tgz": "gz", ".tar.bz2": "bz2", ".tar.xz": "xz"}
SUFFIXES_OF: dict[str, tuple[str, ...]] = {  # what an archive's copy may be named
    "zip": (".zip",),
    "npz": (".npz",),
    "tar": tuple(TAR_COMPRESSION),
}


def archive_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if lower.endswith(s)), None)


def purified_name(kind: str, input_name: str, mode: str = "RGB") -> str:
    """The purified copy's name: '.purified' before the suffix. A single image (of
    Pillow ``mode``) comes back lossless (PNG, or TIFF where PNG cannot hold the
    mode); loose files sent together ("files") come back as one zip."""
    if kind == "image":
        suffix = ".tif" if lossless_format(mode) == "TIFF" else ".png"
        return f"{PurePath(input_name).stem}.purified{suffix}"
    if kind == "files":
        return "purified.zip"
    if kind == "folder":
        return f"{PurePath(input_name).name}.purified"
    suffix = archive_suffix(input_name)
    stem = input_name[: -len(suffix)] if suffix else input_name
    return f"{stem}.purified{suffix or SUFFIXES_OF[kind][0]}"


LOSSLESS_SUFFIXES = (".png", ".tif", ".tiff")  # what the service answers a single image with


def check_output_name(kind: str, output: Path, sent: Path | str, service: bool = False) -> None:
    """UnsupportedInput where ``output``'s extension does not fit the copy of ``sent``
    (a local file's Path, or as text the name a job's input was sent under) of
    container ``kind``: a zip named
    out.tar, a tar.gz named out.tar (a tar keeps its compression), a folder named
    out.zip, an image named out.zip. From the ``service``, an image comes back as a
    PNG or a TIFF, and loose files as one zip."""
    kind = "zip" if kind == "files" else kind
    suffix = archive_suffix(output.name)
    if kind == "tar":
        compression = (
            tar_compression(sent)
            if isinstance(sent, Path)
            else TAR_COMPRESSION.get(archive_suffix(sent) or ".tar")
        )
        if suffix not in TAR_COMPRESSION or TAR_COMPRESSION[suffix] != compression:
            names = [s for s, c in TAR_COMPRESSION.items() if c == compression]
            raise UnsupportedInput(
                f"{output.name}: this tar comes back as a tar compressed as it was sent "
                f"(name it {' or '.join(names)})"
            )
    elif kind in SUFFIXES_OF:
        if suffix not in SUFFIXES_OF[kind]:
            raise UnsupportedInput(
                f"{output.name}: a {kind} comes back as a {kind} "
                f"(name it {' or '.join(SUFFIXES_OF[kind])})"
            )
    elif kind == "image":
        lossless = output.suffix.lower() in LOSSLESS_SUFFIXES
        if image_format_of(output.name) is None or (service and not lossless):
            allowed = "/".join(LOSSLESS_SUFFIXES) if service else ".png, .tif, .jpg, ..."
            raise UnsupportedInput(f"{output.name}: an image comes back as an image ({allowed})")
    elif kind == "folder" and suffix is not None:
        raise UnsupportedInput(f"{output.name}: a folder comes back as a folder, not a {suffix}")


def detect_kind(path: Path, limits: Limits = Limits()) -> Kind:
    """The container kind, from the content (not the name) except for npz vs zip."""
    if path.is_dir():
        return "folder"
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        check_declared_entries(path, limits)
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as e:
            raise UnsupportedInput(f"corrupt zip archive: {e}") from e
        if names and all(n.endswith(".npy") for n in names):
            return "npz"  # NpzContainer finds the images array among them
        return "zip"
    if tar_compression(path) or (len(head) >= 262 and head[257:262] == b"ustar"):
        return "tar"
    if sniff_format(head) or image_format_of(path.name):
        return "image"  # decoding refuses the formats it does not support, by name
    raise UnsupportedInput("not an image or a supported archive (zip, tar, tar.gz, npz)")


CONTAINERS: dict[Kind, type[Container]] = {
    "image": SingleImage,
    "folder": Folder,
    "zip": ZipContainer,
    "tar": TarContainer,
    "npz": NpzContainer,
}


def open_container(path: str | Path, limits: Limits = Limits()) -> Container:
    """Open and check a container; raises a FormatError subclass naming the fault."""
    path = Path(path)
    kind = detect_kind(path, limits)
    try:
        return CONTAINERS[kind](path, limits)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise UnsupportedInput(f"corrupt {kind} container: {e}") from e


def load_image_array(path: str | Path) -> np.ndarray:
    """Every image of a container as one uint8 N x H x W x 3 array (all one size)."""
    pictures = [picture.rgb for _, picture in open_container(path).iter_images()]
    shapes = {p.shape for p in pictures}
    if len(shapes) != 1:
        raise UnsupportedInput(f"training images must share one size; found {sorted(shapes)}")
    return np.stack(pictures)
