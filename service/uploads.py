"""Uploads: bounded in size, streamed to the job's folder, validated before queueing."""

from __future__ import annotations

import errno
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile

from pureebm.containers import Container, open_container, purified_name
from pureebm.images import (
    FormatError,
    InputTooLarge,
    Limits,
    UnsafeInput,
    UnsupportedInput,
)
from pureebm.shards import write_shard
from service.disk import check_space, free_bytes, job_needs
from service.problems import Problem
from service.settings import Settings

UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")  # control characters and path separators
CHUNK = 1 << 20
# a file name is at most 255 bytes; the result's adds ".purified" and a suffix, and
# writing it aside (pureebm.atomic) an 18-byte prefix
MAX_NAME_BYTES = 200


@dataclass
class PreparedInput:
    kind: str  # image, files, zip, tar, npz
    input_file: str
    input_name: str
    input_bytes: int
    result_name: str
    pixels: list[int]  # per image, in container order


def sent_filename(name: str | None, fallback: str) -> str:
    """The name a file was sent with, kept as it is (spaces and any script included),
    or ``fallback`` when it has none. A name that is not a plain file name (a path,
    a control character, "." or "..", over MAX_NAME_BYTES UTF-8 bytes) is refused."""
    if not name:
        return fallback
    if UNSAFE_NAME.search(name) or name in (".", "..") or len(name.encode()) > MAX_NAME_BYTES:
        raise UnsafeInput(f"{name!r} is not a plain file name")
    return name


def copy_upload(upload: UploadFile, dest: Path) -> int:
    upload.file.seek(0)
    with dest.open("wb") as out:
        shutil.copyfileobj(upload.file, out, CHUNK)
    return dest.stat().st_size


def validate_images(
    container: Container, max_job_pixels: int, decoded: Path, max_decoded_bytes: int
) -> tuple[list[int], list[str]]:
    """Decode every image once so a bad one is refused now, not in a worker, and
    refuse a job whose images add up to more than ``max_job_pixels``. Returns each
    image's pixel count and Pillow mode, in container order.

    The decoded images are kept for the workers in ``decoded`` (a shard file, read
    back through a memory map) while they fit in ``max_decoded_bytes``, so each
    image is decoded once per job; workers decode the ones after that again.
    """
    names, pixels, modes, total = container.image_names(), [], [], 0
    pictures = container.iter_images()
    caching = True  # the kept images are a prefix: positions 0 .. len(kept) - 1
    with write_shard(decoded) as kept:
        while True:
            try:
                item = next(pictures, None)
            except FormatError as e:
                raise type(e)(f"{names[len(pixels)]}: {e}") from e
            if item is None:
                return pixels, modes
            name, picture = item
            pixels.append(picture.rgb.shape[0] * picture.rgb.shape[1])
            modes.append(picture.mode)
            total += pixels[-1]
            if total > max_job_pixels:
                raise InputTooLarge(
                    f"the images add up to over the {max_job_pixels}-pixel job limit"
                )
            caching = caching and kept.pixel_bytes + picture.nbytes <= max_decoded_bytes
            if caching:
                kept.add_picture(name, picture)


def prepare_input(
    folder: Path,
    decoded: Path,
    settings: Settings,
    limits: Limits,
    files: list[UploadFile] | None,
    archive: UploadFile | None,
    held: int = 0,
) -> PreparedInput:
    """Store the upload in ``folder`` and check it completely against ``limits``,
    keeping decoded images in ``decoded`` (see ``validate_images``); raises
    FormatError or Problem (507 when the data volume cannot hold the job beside the
    ``held`` bytes reserved for the jobs admitted before)."""
    try:
        return store_and_validate(folder, decoded, settings, limits, files, archive, held)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise Problem(507, "the data volume is full: retry later") from e
        raise


def store_and_validate(
    folder: Path,
    decoded: Path,
    settings: Settings,
    limits: Limits,
    files: list[UploadFile] | None,
    archive: UploadFile | None,
    held: int = 0,
) -> PreparedInput:
    if bool(files) == bool(archive):
        raise Problem(400, "send either one or more `files` or one `archive`, not both or neither")
    reserve = settings.disk_reserve_bytes
    check_space(folder, sum(u.size or 0 for u in files or [archive]), reserve, held)
    if archive is not None:
        name = sent_filename(archive.filename, "upload")
        size = copy_upload(archive, folder / name)
        container = open_container(folder / name, limits)
        if container.kind == "folder":
            raise UnsupportedInput("not an image or a supported archive")
        kind, stored = container.kind, name
    elif files is not None and len(files) == 1:
        name = sent_filename(files[0].filename, "image.png")
        size = copy_upload(files[0], folder / name)
        container = open_container(folder / name, limits)
        if container.kind != "image":
            raise UnsupportedInput(f"{name}: `files` takes images; send archives as `archive`")
        kind, stored = "image", name
    else:
        assert files is not None
        if len(files) > settings.max_files:
            raise Problem(413, f"{len(files)} files is over the {settings.max_files}-file limit")
        names = [sent_filename(f.filename, f"image{i}.png") for i, f in enumerate(files)]
        if len(set(names)) != len(names):
            raise UnsafeInput("two uploaded files have the same name")
        stored, size = "files.zip", 0
        with zipfile.ZipFile(folder / stored, "w", zipfile.ZIP_STORED) as packed:
            for upload, member in zip(files, names, strict=True):
                upload.file.seek(0)
                with packed.open(member, "w") as out:
                    shutil.copyfileobj(upload.file, out, CHUNK)
                size += packed.getinfo(member).file_size
        container = open_container(folder / stored, limits)
        if len(container.image_names()) != len(files):
            raise UnsupportedInput("every file in `files` must be an image")
        kind, name = "files", "files"
    # an npz holds raw pixels already, which workers load whole: keeping them is no gain;
    # and the kept pixels take at most half the space above the reserve
    room = max(0, free_bytes(folder) - reserve) // 2
    keep_bytes = 0 if container.kind == "npz" else min(settings.max_decoded_bytes, room)
    pixels, modes = validate_images(container, settings.max_job_pixels, decoded, keep_bytes)
    check_space(folder, job_needs(size, pixels), reserve, held)
    return PreparedInput(kind, stored, name, size, purified_name(kind, name, modes[0]), pixels)
