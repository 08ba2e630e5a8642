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


# Colour photographs that ship inside installed packages, each free to use:
# (package, name, licence). scikit-image's loaders read its bundled files.
PHOTOGRAPHS: list[tuple[str, str, str]] = [
    ("scikit-image", "astronaut", "public domain (NASA)"),
    ("scikit-image", "chelsea", "CC0"),
    ("scikit-image", "coffee", "CC0"),
    ("scikit-image", "rocket", "public domain"),
    ("scikit-image", "hubble_deep_field", "public domain (NASA)"),
    ("scikit-image", "immunohistochemistry", "no known copyright restrictions"),
    ("scikit-image", "retina", "CC0"),
    ("matplotlib", "grace_hopper", "public domain (U.S. Navy)"),
]


def photograph(package: str, name: str) -> np.ndarray:
    """One of ``PHOTOGRAPHS`` as H x W x 3 uint8."""
    if package == "matplotlib":
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data(f"{name}.jpg")) as image:
            return np.asarray(image.convert("RGB"))
    from skimage import data

    return getattr(data, name)()[..., :3]


def photograph_crops(count: int, size: int, seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """``count`` random size x size crops of ``PHOTOGRAPHS``, each taken at a random
    scale (the photograph shrunk 1-8x first) and flipped at random: natural-image
    statistics beyond a small training set; also the number of crops per photograph."""
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    scales = [1 / 8, 1 / 4, 1 / 2, 1]
    pyramid = []
    for package, name, _ in PHOTOGRAPHS:
        source = photograph(package, name)
        for scale in scales:
            level = rescale(source, scale, channel_axis=2, anti_aliasing=True)
            if min(level.shape[:2]) >= size:
                pyramid.append((name, (level * 255).round().astype(np.uint8)))
    crops = np.empty((count, size, size, 3), np.uint8)
    counts = dict.fromkeys((name for _, name, _ in PHOTOGRAPHS), 0)
    for i in range(count):
        name, image = pyramid[rng.integers(len(pyramid))]
        y = rng.integers(image.shape[0] - size + 1)
        x = rng.integers(image.shape[1] - size + 1)
        crop = image[y : y + size, x : x + size]
        crops[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
        counts[name] += 1
    return crops, counts
