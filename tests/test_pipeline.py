"""Purifying pictures and containers: sizes, channels, shard-independent seeds."""

from __future__ import annotations

import numpy as np
import pytest

from pureebm.archives import open_container
from pureebm.images import Picture
from pureebm.params import LangevinParams
from pureebm.pipeline import chunks, purify_container, purify_pictures

PARAMS = LangevinParams(steps=4)


def pictures(images: np.ndarray) -> list[tuple[str, Picture]]:
    return [(f"img{i}", Picture(rgb, None, "RGB", "PNG")) for i, rgb in enumerate(images)]


def test_results_keep_order_names_and_sizes_across_mixed_shapes(tiny_model, cifar):
    items = pictures(cifar["images"][:6])
    items[1] = ("small", Picture(cifar["images"][1][:20, :17], None, "RGB", "PNG"))
    items[4] = ("large", Picture(np.tile(cifar["images"][4], (2, 2, 1)), None, "RGB", "PNG"))
    out = list(purify_pictures(tiny_model, items, PARAMS, batch_size=4, seed=0))
    assert [o.name for o in out] == [name for name, _ in items]
    assert [o.rgb.shape for o in out] == [p.rgb.shape for _, p in items]
    assert all(o.rgb.dtype == np.uint8 for o in out)
    assert all(np.isfinite([o.energy_before, o.energy_after]).all() for o in out)


def test_splitting_into_shards_gives_the_same_pixels(tiny_model, cifar):
    items = pictures(cifar["images"][:8])
    whole = list(purify_pictures(tiny_model, items, PARAMS, batch_size=4, seed=11))
    first = list(purify_pictures(tiny_model, items[:4], PARAMS, batch_size=4, seed=11))
    second = list(
        purify_pictures(tiny_model, items[4:], PARAMS, batch_size=4, seed=11, start_index=4)
    )
    for a, b in zip(whole, first + second, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)
    assert not np.array_equal(whole[0].rgb, whole[4].rgb)


def test_purify_container_writes_the_same_container(tmp_path, tiny_model, cifar):
    src = tmp_path / "in.npz"
    np.savez(src, images=cifar["images"][:5], labels=cifar["labels"][:5])
    seen: list[str] = []
    energies = purify_container(
        open_container(src),
        tmp_path / "out.npz",
        tiny_model,
        PARAMS,
        batch_size=2,
        seed=0,
        on_image=lambda r: seen.append(r.name),
    )
    results = list(
        purify_pictures(tiny_model, open_container(src).iter_images(), PARAMS, 2, seed=0)
    )
    assert seen == [f"images/{i}" for i in range(5)] == [e.name for e in energies]
    assert [e.energy_after for e in energies] == pytest.approx([r.energy_after for r in results])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]  # no leftovers
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["labels"], cifar["labels"][:5])
        np.testing.assert_array_equal(out["images"], np.stack([r.rgb for r in results]))
        assert not np.array_equal(out["images"], cifar["images"][:5])


def test_chunks_are_bounded_by_images_and_by_pixels(cifar):
    small = Picture(cifar["images"][0], None, "RGB", "PNG")  # 32x32
    large = Picture(np.zeros((64, 64, 3), np.uint8), None, "RGB", "PNG")  # 4x the pixels
    items = [("a", small), ("b", small), ("big", large), ("c", small), ("d", small), ("e", small)]
    sizes = [[name for name, _ in chunk] for chunk in chunks(items, 4, 4 * 32 * 32)]
    assert sizes == [["a", "b", "big"], ["c", "d", "e"]]
