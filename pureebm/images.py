"""Images: decoding to what the model sees, and encoding purified pixels back.

The model sees 8-bit RGB. Grayscale, bilevel, palette, CMYK and 16-bit images
are converted to it and back (grayscale via ITU-R 601 luma, 16-bit by x257,
palette images return as RGB); an alpha channel is kept aside and re-attached
unchanged. The errors and limits here are shared with archives.py: each error
carries the HTTP status it maps to.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}


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


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 16_000_000  # per image; larger is treated as a decompression bomb
    max_members: int = 200_000
    max_member_bytes: int = 512 << 20
    max_total_bytes: int = 16 << 30  # uncompressed, all members together
    max_ratio: float = 250.0  # uncompressed / compressed, for compressed containers

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
    if image.format not in set(IMAGE_FORMATS.values()):
        raise UnsupportedInput(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputTooLarge(f"{width}x{height} pixels is over the {limits.max_pixels} limit")
    try:
        image.load()
    except Image.DecompressionBombError as e:
        raise InputTooLarge(f"decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UnsupportedInput(f"corrupt or truncated {image.format} image: {e}") from e
    return picture_from_pil(image, image.format)


def picture_from_pil(image: Image.Image, image_format: str) -> Picture:
    mode, alpha = image.mode, None
    if mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)
        return Picture(np.repeat(gray[..., None], 3, axis=2), None, mode, image_format)
    if mode == "F":
        raise UnsupportedInput("floating-point images are not supported")
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        alpha = np.asarray(image.getchannel("A")).copy()
    rgb = np.asarray(image.convert("RGB")).copy()
    return Picture(rgb, alpha, mode, image_format)


def restore_mode(picture: Picture) -> Image.Image:
    """The picture's RGB pixels back in its original mode, alpha re-attached."""
    image = Image.fromarray(picture.rgb)
    mode = picture.mode
    if mode in SIXTEEN_BIT_MODES:
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(gray)  # uint16 -> mode I;16
    if mode in ("L", "LA", "1", "La"):
        image = image.convert("L")
    elif mode == "CMYK" and picture.format in ("JPEG", "TIFF"):
        return image.convert("CMYK")
    if picture.alpha is not None:
        image.putalpha(Image.fromarray(picture.alpha))
    return image


def encode_image(picture: Picture, image_format: str | None = None) -> bytes:
    """Encode a picture like its original (same format unless one is given)."""
    image = restore_mode(picture)
    image_format = image_format or picture.format
    options: dict[str, object] = {}
    if image_format == "JPEG":
        options = {"quality": 95, "subsampling": 0}
        if image.mode in ("RGBA", "LA"):
            image = image.convert(image.mode[:-1])
    elif image_format == "WEBP":
        options = {"lossless": True}
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def image_format_of(name: str) -> str | None:
    return IMAGE_FORMATS.get(PurePosixPath(name).suffix.lower())
