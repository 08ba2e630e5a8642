"""Decoding and encoding single images: modes, alpha, 16 bits, and bombs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pureebm.images import InputTooLarge, decode_image, encode_image
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
