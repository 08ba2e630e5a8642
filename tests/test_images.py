"""Decoding and encoding single images: modes, alpha, 16 bits, and bombs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pureebm.containers.base import member_kind
from pureebm.images import (
    InputTooLarge,
    Limits,
    UnsupportedInput,
    decode_image,
    encode_image,
    sniff_format,
)
from tests.hostile import sixteen_bit_rgb_png
from tests.stack import bomb_png, png


def test_modes_are_converted_and_restored(cifar):
    rgb = cifar["images"][7]
    gray = decode_image(png(rgb, "L"))
    assert gray.mode == "L" and np.all(gray.rgb[..., 0] == gray.rgb[..., 1])
    assert Image.open(io.BytesIO(encode_image(gray))).mode == "L"

    rgba = np.concatenate([rgb, np.arange(32 * 32, dtype=np.uint16).reshape(32, 32, 1) % 256], 2)
    alpha = decode_image(png(rgba.astype(np.uint8)))
    out = Image.open(io.BytesIO(encode_image(alpha.with_pixels(255 - alpha.rgb))))
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3], rgba[..., 3])

    palette = decode_image(png(rgb, "P"))
    assert palette.mode == "P" and palette.rgb.shape == (32, 32, 3)

    wide = (rgb[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    sixteen = decode_image(buffer.getvalue())
    np.testing.assert_array_equal(sixteen.rgb[..., 0], rgb[..., 0])
    back = np.asarray(Image.open(io.BytesIO(encode_image(sixteen))))
    np.testing.assert_array_equal(back, wide)


def test_a_declared_decompression_bomb_is_too_large_not_a_crash():
    with pytest.raises(InputTooLarge, match="decompression bomb"):
        decode_image(bomb_png())


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_and_icc_profile_come_back_as_sent(cifar):
    from PIL import ImageCms, ImageOps

    stored = Image.fromarray(np.ascontiguousarray(cifar["images"][0][:24]).repeat(2, axis=1))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display: stored 64 x 24, displayed 24 x 64
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt in ("JPEG", "PNG", "WEBP"):
        picture = decode_image(encoded(stored, fmt, exif=exif, icc_profile=profile))
        back = Image.open(io.BytesIO(encode_image(picture.with_pixels(255 - picture.rgb))))
        assert back.getexif().get(0x0112) == 6, fmt
        assert back.info.get("icc_profile") == profile, fmt
        assert ImageOps.exif_transpose(back).size == (24, 64), fmt


def test_what_cannot_come_back_as_sent_is_refused(cifar):
    rgb = cifar["images"][0]
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    for fmt in ("PNG", "TIFF", "WEBP"):
        animated = encoded(frames[0], fmt, save_all=True, append_images=frames[1:])
        with pytest.raises(UnsupportedInput, match="2 frames"):
            decode_image(animated)
    with pytest.raises(UnsupportedInput, match="16-bit colour"):
        decode_image(sixteen_bit_rgb_png(rgb))
    with pytest.raises(UnsupportedInput, match="outside 0 to 65535"):
        decode_image(encoded(Image.fromarray(np.full((4, 4), 100_000, np.int32)), "TIFF"))


@pytest.mark.parametrize(
    "mode,fmt", [("1", "PNG"), ("1", "TIFF"), ("I", "TIFF"), ("CMYK", "JPEG"), ("CMYK", "TIFF")]
)
def test_each_mode_comes_back_in_its_own_mode(cifar, mode, fmt):
    rgb = cifar["images"][3]
    if mode == "I":
        image = Image.fromarray(rgb[..., 0].astype(np.int32) * 257)
    else:
        image = Image.fromarray(rgb).convert(mode)
    picture = decode_image(encoded(image, fmt))
    back = Image.open(io.BytesIO(encode_image(picture)))
    assert (back.mode, back.format) == (mode, fmt)
    if mode in ("1", "I"):  # lossless and exactly representable: the identity round trip
        np.testing.assert_array_equal(np.asarray(back), np.asarray(image))


def test_limits_count_padded_pixels_and_bound_the_aspect_ratio():
    limits = Limits(max_pixels=1100, max_aspect=64)
    limits.check_size(31, 31)  # 1,024 once padded to 32 a side
    with pytest.raises(InputTooLarge, match="once padded to 32 a side"):
        limits.check_size(10, 40)  # 400 pixels, 1,280 once padded
    with pytest.raises(InputTooLarge, match="64:1 aspect-ratio"):
        decode_image(png(np.zeros((1, 100_000, 3), np.uint8)))
    decode_image(png(np.zeros((1, 64, 3), np.uint8)))  # 64:1 is allowed


def test_a_corrupt_frame_index_or_a_mode_that_would_change_is_refused(cifar):
    tiff = bytearray(encoded(Image.fromarray(cifar["images"][0]), "TIFF"))
    first = int.from_bytes(tiff[4:8], "little")
    entries = int.from_bytes(tiff[first : first + 2], "little")
    next_ifd = first + 2 + 12 * entries
    tiff[next_ifd : next_ifd + 4] = (len(tiff) + 1000).to_bytes(4, "little")  # past the end
    with pytest.raises(UnsupportedInput, match="corrupt TIFF"):
        decode_image(bytes(tiff))
    lab = encoded(Image.fromarray(cifar["images"][0]).convert("LAB"), "TIFF")
    with pytest.raises(UnsupportedInput, match="LAB image would come back as RGB"):
        decode_image(lab)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    brands = major + b"\0\0\0\0" + b"".join(compatible)
    return (8 + len(brands)).to_bytes(4, "big") + b"ftyp" + brands + b"\0" * 64


@pytest.mark.parametrize(
    "head",
    [ftyp(b"msf1", b"msf1", b"heic"), ftyp(b"avis", b"avif"), ftyp(b"mp42", b"isom", b"avif")],
    ids=["heif-sequence", "avif-sequence", "avif-among-compatible-brands"],
)
def test_any_iso_bmff_image_brand_is_an_image_whatever_its_major_brand(head):
    assert sniff_format(head) == "HEIF/AVIF"
    with pytest.raises(UnsupportedInput, match="HEIF/AVIF"):
        member_kind("photo", head)  # no suffix to go by: refused, not passed through


def test_a_video_file_is_no_image():
    assert sniff_format(ftyp(b"mp42", b"isom", b"mp41")) is None
