"""Shard files: streamed writes, lookups across shards, and where shards are cut."""

from __future__ import annotations

import numpy as np
import pytest

from pureebm.images import Picture
from pureebm.results import PurifiedImage
from pureebm.shards import ShardSet, cut_shards, write_shard


def test_shards_are_cut_by_image_count_and_by_pixels() -> None:
    assert cut_shards([1024] * 10, max_images=4, max_pixels=10**9) == [0, 4, 8, 10]
    # a 16-Mpx image fills a shard alone; small ones pack up to the pixel budget
    pixels = [100, 100, 16_000_000, 100, 100, 100]
    assert cut_shards(pixels, max_images=100, max_pixels=250) == [0, 2, 3, 5, 6]
    assert cut_shards([5], max_images=1, max_pixels=1) == [0, 1]


def picture(rng: np.random.Generator, i: int) -> Picture:
    """Mixed sizes; every third image has an alpha channel; modes and formats vary."""
    height, width = 8 + i, 5 + 2 * i
    rgb = rng.integers(0, 256, (height, width, 3), np.uint8)
    alpha = rng.integers(0, 256, (height, width), np.uint8) if i % 3 == 0 else None
    return Picture(rgb, alpha, "RGBA" if alpha is not None else "L", ["PNG", "JPEG"][i % 2])


def test_pictures_of_mixed_sizes_come_back_by_position_across_shards(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = [PurifiedImage(f"dir/{i}.png", picture(rng, i), i, -i) for i in range(7)]
    bounds = [0, 3, 4, 7]
    paths = [tmp_path / f"{s}.npz" for s in range(3)]
    for path, start, stop in zip(paths, bounds, bounds[1:], strict=False):
        with write_shard(path) as writer:
            for image in images[start:stop]:
                writer.add(image)
    shards = ShardSet(paths, bounds, [image.name for image in images])
    for position, image in reversed(list(enumerate(images))):  # any order works
        back = shards.picture(position)
        np.testing.assert_array_equal(back.rgb, image.rgb)
        assert (back.mode, back.format) == (image.picture.mode, image.picture.format)
        if image.picture.alpha is None:
            assert back.alpha is None
        else:
            np.testing.assert_array_equal(back.alpha, image.picture.alpha)
    shards.close()
    energies = list(shards.energies())
    assert [e.name for e in energies] == [image.name for image in images]
    assert [e.energy_after for e in energies] == [-i for i in range(7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.npz", "1.npz", "2.npz"]


def test_an_unfinished_shard_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "0.npz"
    with pytest.raises(RuntimeError), write_shard(path) as writer:
        writer.add(
            PurifiedImage("a", Picture(np.zeros((4, 4, 3), np.uint8), None, "RGB", "PNG"), 0, 0)
        )
        raise RuntimeError("the worker was stopped")
    assert list(tmp_path.iterdir()) == []
