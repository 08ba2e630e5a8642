"""Purifying pictures and containers: sizes, channels, shard-independent seeds."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pureebm.containers import open_container
from pureebm.images import Picture
from pureebm.pipeline import buckets, chunks, purify_container, purify_pictures
from tests.conftest import purifier_of


def purifier(model):
    return purifier_of(model, steps=4)


def pictures(images: np.ndarray) -> list[tuple[str, Picture]]:
    return [(f"img{i}", Picture(rgb, None, "RGB", "PNG")) for i, rgb in enumerate(images)]


def test_results_keep_order_names_and_sizes_across_mixed_shapes(tiny_model, cifar):
    items = pictures(cifar["images"][:6])
    items[1] = ("small", Picture(cifar["images"][1][:20, :17], None, "RGB", "PNG"))
    items[4] = ("large", Picture(np.tile(cifar["images"][4], (2, 2, 1)), None, "RGB", "PNG"))
    out = list(purify_pictures(purifier(tiny_model), items, batch_size=4, seed=0))
    assert [o.name for o in out] == [name for name, _ in items]
    assert [o.rgb.shape for o in out] == [p.rgb.shape for _, p in items]
    assert all(o.rgb.dtype == np.uint8 for o in out)
    assert all(np.isfinite([o.energy_before, o.energy_after]).all() for o in out)


def test_every_image_of_a_mixed_batch_comes_out_as_purified_alone(tiny_model, cifar):
    rng = np.random.default_rng(0)
    items = []
    for i in range(10):
        h, w = (int(v) for v in rng.integers(20, 72, size=2))
        tiled = np.tile(cifar["images"][i], (3, 3, 1))[:h, :w]
        items.append((f"img{i}", Picture(np.ascontiguousarray(tiled), None, "RGB", "PNG")))
    items.append(("twin", items[0][1]))  # a shape that repeats
    shapes = [(max(p.rgb.shape[0], 32), max(p.rgb.shape[1], 32)) for _, p in items]
    shared = [g for g in buckets(shapes, 512 * 512) if len({shapes[i] for i in g}) > 1]
    assert len(shared) >= 2  # the test really pads and masks
    mixed = list(purify_pictures(purifier(tiny_model), items, batch_size=64, seed=5))
    for index, (item, result) in enumerate(zip(items, mixed, strict=True)):
        alone = next(purify_pictures(purifier(tiny_model), [item], seed=5, positions=[index]))
        difference = np.abs(result.rgb.astype(int) - alone.rgb.astype(int))
        assert difference.max() <= 1 and difference.mean() < 0.01
        assert result.energy_before == pytest.approx(alone.energy_before, rel=1e-4, abs=1e-5)
        assert result.energy_after == pytest.approx(alone.energy_after, rel=1e-4, abs=1e-5)
    assert not np.array_equal(mixed[0].rgb, mixed[-1].rgb)  # the twin drew its own noise


def test_buckets_share_canvases_within_the_slack():
    shapes = [(32, 32), (100, 80), (32, 32), (96, 80), (40, 36), (500, 500), (33, 32)]
    groups = buckets(shapes, max_canvas_pixels=512 * 512, slack=1.25)
    assert sorted(i for group in groups for i in group) == list(range(len(shapes)))
    for group in groups:
        canvas = max(shapes[i][0] for i in group) * max(shapes[i][1] for i in group)
        assert canvas * len(group) <= 1.25 * sum(shapes[i][0] * shapes[i][1] for i in group)
    together = {frozenset(group) for group in groups}
    assert frozenset({1, 3}) in together  # 100x80 and 96x80: 2% padding
    assert frozenset({5}) in together  # nothing else is close to 500x500
    assert any({0, 2} <= group for group in together)  # equal shapes always share
    assert len(groups) < len(shapes)
    alone = buckets(shapes, max_canvas_pixels=32 * 32, slack=1.25)
    assert alone == [[5], [1], [3], [4], [6], [0, 2]]


def test_splitting_into_shards_gives_the_same_pixels(tiny_model, cifar):
    items = pictures(cifar["images"][:8])
    whole = list(purify_pictures(purifier(tiny_model), items, batch_size=4, seed=11))
    first = list(purify_pictures(purifier(tiny_model), items[:4], batch_size=4, seed=11))
    second = list(
        purify_pictures(
            purifier(tiny_model), items[4:], batch_size=4, seed=11, positions=range(4, len(items))
        )
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
        purifier(tiny_model),
        batch_size=2,
        seed=0,
        on_image=lambda r: seen.append(r.name),
    )
    results = list(
        purify_pictures(purifier(tiny_model), open_container(src).iter_images(), 2, seed=0)
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


def test_a_filter_purifies_large_images_as_often_as_small_ones(tmp_path, tiny_model, cifar):
    """Eight 32 px and eight 128 px images in one zip, filter 0.5: four of each size."""
    small = cifar["images"][:8]
    large = cifar["images"][8:16].repeat(4, axis=1).repeat(4, axis=2)
    src = tmp_path / "mixed.zip"
    with zipfile.ZipFile(src, "w") as archive:
        for i, rgb in enumerate([*small, *large]):
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, "PNG")
            archive.writestr(f"{i:02d}.png", buffer.getvalue())
    energies = purify_container(
        open_container(src), tmp_path / "out.zip", purifier(tiny_model), batch_size=4, seed=0,
        filter=0.5, scorer=purifier_of(tiny_model, steps=0),
    )  # fmt: skip
    purified = [e.purified for e in energies]
    assert sum(purified[:8]) == 4 and sum(purified[8:]) == 4
