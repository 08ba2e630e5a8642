"""Training images as the models see them, and extra natural images to train on."""

from __future__ import annotations

import numpy as np
import torch

from pureebm.nets import MIN_IMAGE_SIZE
from pureebm.pipeline import model_input, padded_shape


def as_training_images(images: np.ndarray, channels: int | None = None) -> torch.Tensor:
    """N x H x W x 3 uint8 -> the model's view, as purification will see it: one
    channel when every image is grey (R = G = B) or ``channels`` is 1, and sides
    under the nets' 32 pixels edge-padded to 32, by ``pureebm.pipeline``'s own
    conversion and padding."""
    if channels is None:
        channels = 1 if np.array_equal(images, images[..., :1].repeat(3, axis=3)) else 3
    images = model_input(images, channels)  # luma for one channel, as purification sees it
    height, width = padded_shape(images.shape[1:3], MIN_IMAGE_SIZE)
    pad_h, pad_w = height - images.shape[1], width - images.shape[2]
    if pad_h or pad_w:
        images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(images))


def photograph_crops(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` random size x size crops of scikit-image's colour photographs,
    each taken at a random scale (the photograph shrunk 1-8x first) and flipped
    at random: natural-image statistics beyond a small training set."""
    from skimage import data as photographs
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    sources = [
        getattr(photographs, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")
    ]
    scales = [1 / 8, 1 / 4, 1 / 2, 1]
    pyramid = [
        (rescale(p, s, channel_axis=2, anti_aliasing=True) * 255).round().astype(np.uint8)
        for p in sources
        for s in scales
    ]
    pyramid = [p for p in pyramid if min(p.shape[:2]) >= size]
    crops = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        image = pyramid[rng.integers(len(pyramid))]
        y = rng.integers(image.shape[0] - size + 1)
        x = rng.integers(image.shape[1] - size + 1)
        crop = image[y : y + size, x : x + size]
        crops[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return crops
