"""Labelled image sets: npz (`images` uint8 NHWC, `labels`) or a class-per-folder tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pureebm.containers import open_container


def load_labelled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x H x W x 3, labels int64 N). Folders: one subfolder per class,
    classes numbered in sorted order."""
    path = Path(path)
    if path.is_dir():
        classes = sorted(p.name for p in path.iterdir() if p.is_dir())
        images, labels = [], []
        for index, name in enumerate(classes):
            for _, picture in open_container(path / name).iter_images():
                images.append(picture.rgb)
                labels.append(index)
        return np.stack(images), np.array(labels, np.int64)
    with np.load(path, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"].astype(np.int64)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    return np.ascontiguousarray(images[..., :3]), labels


def stratified_split(
    images: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same fraction of every class goes to the test set."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test[members[: round(len(members) * test_fraction)]] = True
    return images[~test], labels[~test], images[test], labels[test]
