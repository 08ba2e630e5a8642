"""Images: recognising them by content, decoding to what the model sees, and
encoding purified pixels back.

The model sees 8-bit RGB. Grayscale, bilevel, palette, CMYK, 16-bit and 32-bit
integer images are converted to it and back to their own mode (grayscale via
ITU-R 601 luma, 16-bit by x257, palette images return as RGB); an alpha channel
is kept aside and re-attached unchanged, and so are the EXIF block (its
orientation tag included: the pixels are purified as stored) and the ICC
profile. What cannot come back as it was sent is refused instead of changed:
animations and multi-page files, 16-bit colour, floating point, integers past
16 bits. The errors and limits here are shared with pureebm.containers: each error
carries the HTTP status it maps to.
"""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
SUPPORTED_FORMATS = set(IMAGE_FORMATS.values())
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}  # "I" (32-bit) holding values below 2^16
# the modes decode_image takes: each comes back as sent (restore_mode) but palettes, which
# return as RGB (documented), and "F", refused later with its reason
HANDLED_MODES = {
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "CMYK",
    "F",
} | SIXTEEN_BIT_MODES
KEPT_INFO = ("exif", "icc_profile")  # metadata blocks written back as sent (Picture fields)
SNIFF_BYTES = 512  # a file's first bytes, enough for every signature below
# magic numbers of raster formats (offset, bytes): the supported ones are purified; any
# other is refused rather than passed through unpurified.
SIGNATURES: list[tuple[str, int, bytes]] = [
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"),
    ("JPEG", 0, b"\xff\xd8\xff"),
    ("TIFF", 0, b"II*\x00"),
    ("TIFF", 0, b"MM\x00*"),
    ("BigTIFF", 0, b"II+\x00"),
    ("BigTIFF", 0, b"MM\x00+"),
    ("GIF", 0, b"GIF87a"),
    ("GIF", 0, b"GIF89a"),
    ("JPEG 2000", 0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    ("JPEG 2000", 0, b"\xffO\xffQ"),
    ("JPEG XL", 0, b"\xff\x0a"),
    ("JPEG XL", 0, b"\x00\x00\x00\x0cJXL \r\n\x87\n"),
    ("Photoshop", 0, b"8BPS"),
    ("QOI", 0, b"qoif"),
    ("OpenEXR", 0, b"v/1\x01"),
    ("DDS", 0, b"DDS "),
    ("ICNS", 0, b"icns"),
    ("Radiance HDR", 0, b"#?RADIANCE"),
    ("FITS", 0, b"SIMPLE  ="),
    ("DICOM", 128, b"DICM"),
]
# names of raster formats the engine does not decode that have no reliable magic
# number (TGA, ICO, PCX ...) or several (HEIF's brands): a member named so is
# refused rather than passed through. Formats with one are recognised by content.
OTHER_IMAGE_SUFFIXES = {
    ".gif", ".ico", ".cur", ".tga", ".pcx", ".ppm", ".pgm", ".pbm", ".pnm", ".pam",
    ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".sgi", ".xbm", ".xpm", ".apng",
}  # fmt: skip
# ISO-BMFF brands of still images and image sequences (HEIF, AVIF, MIAF, HEIF's JPEG
# and AVC flavours): a file whose ftyp box names one, as its major brand or among its
# compatible ones, holds images (ISO/IEC 23008-12, AV1 Image File Format)
IMAGE_BRANDS = {
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1",
    b"mif2", b"msf1", b"miaf", b"avif", b"avis", b"avio", b"avci", b"avcs", b"jpeg",
    b"jpgs",
}  # fmt: skip
NETPBM = re.compile(rb"P[1-7]\s+(#|\d)")  # PBM, PGM, PPM, PAM: "P6 32 32 255"
BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}  # the DIB header sizes a BMP declares


class FormatError(ValueError):
    """Input that cannot be used as it is; ``status`` is the HTTP status it maps to."""

    status = 422


class UnsupportedInput(FormatError):
    """Not an image, corrupt, or a container of an unknown kind."""

    status = 415


class InputTooLarge(FormatError):
    """Over a size, pixel-count, member-count or compression-ratio limit."""

    status = 413


class UnsafeInput(FormatError):
    """An archive member with an absolute path, '..', a link or a device."""

    status = 422


class Limits(BaseModel):
    """What an input may be; the service's settings of the same names are these
    (jobs.settings.JobSettings is a Limits), so each limit is defined here only."""

    model_config = ConfigDict(frozen=True)

    max_pixels: int = Field(16_000_000, ge=1)  # per image, padded; over: a decompression bomb
    max_members: int = Field(200_000, ge=1)
    max_member_bytes: int = Field(512 << 20, ge=1)
    max_total_bytes: int = Field(16 << 30, ge=1)  # uncompressed, all members together
    max_ratio: float = Field(250.0, gt=1)  # uncompressed / compressed
    max_aspect: float = Field(64.0, ge=1)  # longer side / shorter side
    # sides are padded to the model's image size, so they count as at least this (the
    # API sets it to the model's size for each job)
    min_side: int = Field(32, ge=1)

    def check_size(self, width: int, height: int) -> None:
        """Refuse an image whose pixels, counted once its sides are padded to
        ``min_side``, are over ``max_pixels`` (that is the work it costs: a 1 x 100,000
        strip costs as much as 32 x 100,000), or whose aspect ratio is over
        ``max_aspect``."""
        padded = max(width, self.min_side) * max(height, self.min_side)
        if padded > self.max_pixels:
            raise InputTooLarge(
                f"{width}x{height} pixels ({padded} once padded to {self.min_side} a side) "
                f"is over the {self.max_pixels}-pixel limit"
            )
        if max(width, height) > self.max_aspect * max(min(width, height), 1):
            raise InputTooLarge(
                f"{width}x{height} pixels is over the {self.max_aspect:g}:1 aspect-ratio limit"
            )

    def max_uncompressed(self, compressed_bytes: int | None) -> int:
        """The most a container of ``compressed_bytes`` may unpack to: the total limit,
        and for a compressed one max_ratio times its size (at least 64 KiB of it)."""
        if compressed_bytes is None:
            return self.max_total_bytes
        return min(self.max_total_bytes, int(self.max_ratio * max(compressed_bytes, 1 << 16)))


@dataclass
class Picture:
    """A decoded image: what the model sees, plus what is needed to restore it."""

    rgb: np.ndarray  # H x W x 3, uint8
    alpha: np.ndarray | None  # H x W, uint8, re-attached unchanged
    mode: str  # the original Pillow mode (or "L"/"RGB"/"RGBA" for npz rows)
    format: str  # PNG, JPEG, ... ("NPZ" for npz rows)
    exif: bytes = b""  # written back as sent
    icc_profile: bytes = b""

    def with_pixels(self, rgb: np.ndarray) -> Picture:
        """The same picture (mode, alpha, format) holding other RGB pixels."""
        return dataclasses.replace(self, rgb=rgb)

    @property
    def nbytes(self) -> int:
        """Bytes of its decoded pixels, alpha included."""
        return self.rgb.nbytes + (0 if self.alpha is None else self.alpha.nbytes)


def decode_image(data: bytes, limits: Limits = Limits()) -> Picture:
    """Decode image bytes; raises UnsupportedInput or InputTooLarge with the reason."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow refuses the declared size at open
        raise InputTooLarge(f"declared size is a decompression bomb: {e}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise UnsupportedInput("not a readable image") from e
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedInput(f"unsupported image format {image.format}")
    limits.check_size(*image.size)
    try:
        frames = getattr(image, "n_frames", 1)
    except (OSError, SyntaxError, TypeError, ValueError) as e:  # a corrupt frame index
        raise UnsupportedInput(f"corrupt {image.format} image: {e}") from e
    if frames > 1:
        raise UnsupportedInput(
            f"an animated or multi-page {image.format} ({frames} frames) would come back "
            "as its first frame: send each frame as an image"
        )
    if image.mode not in HANDLED_MODES:
        raise UnsupportedInput(
            f"a {image.mode} image would come back as RGB: send it as RGB, grayscale or CMYK"
        )
    if image.mode in ("RGB", "RGBA") and any(";16" in str(tile.args) for tile in image.tile):
        raise UnsupportedInput(
            f"a 16-bit colour {image.format} would come back 8-bit (only 16-bit grayscale "
            "is kept at 16 bits): send it as 8-bit colour"
        )
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise InputTooLarge(f"decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UnsupportedInput(f"corrupt or truncated {image.format} image: {e}") from e
    return picture_from_pil(image, image.format)


def picture_from_pil(image: Image.Image, image_format: str) -> Picture:
    mode, alpha = image.mode, None
    kept = {key: image.info.get(key) or b"" for key in KEPT_INFO}
    if mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise UnsupportedInput(
                "a 32-bit integer image with values outside 0 to 65535 would be clipped: "
                "send it at 16 bits"
            )
        gray = np.round(wide / 257.0).astype(np.uint8)
        return Picture(np.repeat(gray[..., None], 3, axis=2), None, mode, image_format, **kept)
    if mode == "F":
        raise UnsupportedInput("floating-point images are not supported")
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        alpha = np.asarray(image.getchannel("A")).copy()
    rgb = np.asarray(image.convert("RGB")).copy()
    return Picture(rgb, alpha, mode, image_format, **kept)


def restore_mode(picture: Picture, image_format: str | None = None) -> Image.Image:
    """The picture's RGB pixels back in its original mode, alpha re-attached; CMYK
    only where ``image_format`` (default: the original's) holds it."""
    image = Image.fromarray(picture.rgb)
    mode = picture.mode
    if mode in SIXTEEN_BIT_MODES:
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(gray.astype(np.int32) if mode == "I" else gray)
    if mode == "1":
        return image.convert("L").convert("1", dither=Image.Dither.NONE)
    if mode in ("L", "LA", "La"):
        image = image.convert("L")
    elif mode == "CMYK" and (image_format or picture.format) in ("JPEG", "TIFF"):
        return image.convert("CMYK")
    if picture.alpha is not None:
        image.putalpha(Image.fromarray(picture.alpha))
    return image


def lossless_format(mode: str) -> str:
    """The lossless format a single image's result is written in: PNG, or TIFF for
    the modes PNG cannot hold (CMYK, 32-bit integer)."""
    return "TIFF" if mode in ("CMYK", "I") else "PNG"


def encode_image(picture: Picture, image_format: str | None = None) -> bytes:
    """Encode a picture like its original (same format unless one is given), with
    its EXIF block and ICC profile."""
    image_format = image_format or picture.format
    image = restore_mode(picture, image_format)
    options: dict[str, object] = {}
    if image_format == "JPEG":
        options = {"quality": 95, "subsampling": 0}
        if image.mode in ("RGBA", "LA"):
            image = image.convert(image.mode[:-1])
    elif image_format == "WEBP":
        options = {"lossless": True}
    if image_format != "BMP":
        options |= {key: value for key in KEPT_INFO if (value := getattr(picture, key))}
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def signature_of(head: bytes, signatures: list[tuple[str, int, bytes]]) -> str | None:
    """The name of the first (name, offset, magic) of ``signatures`` that ``head``
    carries, or None."""
    for name, offset, magic in signatures:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def sniff_format(head: bytes) -> str | None:
    """The raster format a file starting with ``head`` (its first SNIFF_BYTES) holds,
    from its magic number, whatever its name: "PNG", "GIF", ...; None if none."""
    if (image_format := signature_of(head, SIGNATURES)) is not None:
        return image_format
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in BMP_HEADER_SIZES:
        return "BMP"
    if NETPBM.match(head):
        return "Netpbm"
    if head[4:8] == b"ftyp" and IMAGE_BRANDS & set(ftyp_brands(head)):
        return "HEIF/AVIF"
    return None


def ftyp_brands(head: bytes) -> list[bytes]:
    """The brands an ISO-BMFF ftyp box at the start of ``head`` names: the major one,
    then the compatible ones (as far as ``head`` holds the box)."""
    size = int.from_bytes(head[:4], "big")
    box = head[: min(size, len(head))] if size >= 16 else head[:16]
    return [box[8:12]] + [box[i : i + 4] for i in range(16, len(box) - 3, 4)]


def image_format_of(name: str) -> str | None:
    return IMAGE_FORMATS.get(PurePosixPath(name).suffix.lower())
