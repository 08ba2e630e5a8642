"""Tiled energies: the same energy and input gradient as the whole image, and the
same purified image, for both architectures and awkward sizes."""

from __future__ import annotations

import pytest
import torch

from pureebm.langevin import purify
from pureebm.nets import ConvEBM, ResEBM
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.tiles import TiledEnergy, receptive_range


def test_receptive_range_of_the_conv_ebm() -> None:
    # from the top: conv4 valid reads rows 0..3 of the layer below; each conv4
    # stride 2 pad 1 maps [a, b] to [2a - 1, 2b + 2]; conv3 pad 1 widens by one
    assert receptive_range(ConvEBM.geometry, 0, 0) == (-8, 39)
    assert receptive_range(ConvEBM.geometry, 1, 1) == (0, 47)  # 8 rows on: the stride


@pytest.mark.parametrize("net", [ConvEBM(n_f=8), ResEBM(n_f=8)], ids=["conv", "resnet"])
@pytest.mark.parametrize("size", [(97, 130), (64, 64), (200, 45)])
def test_tiles_give_the_whole_image_energy_and_gradient(net, size) -> None:
    torch.manual_seed(0)
    net = net.double().eval()
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    (whole,) = torch.autograd.grad(net(x).sum(), x)
    tiled = TiledEnergy(net, max_tile_pixels=40 * 40)
    assert len(list(tiled.tiles(x))) > 4  # really split
    energy = tiled(x)
    (by_tiles,) = torch.autograd.grad(energy.sum(), x)
    torch.testing.assert_close(energy, net(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(by_tiles, whole, rtol=1e-10, atol=1e-16)


def test_purifying_in_tiles_matches_purifying_whole() -> None:
    torch.manual_seed(0)
    net = ConvEBM(n_f=8)
    images = torch.randint(0, 256, (1, 3, 150, 120), dtype=torch.uint8)
    params = LangevinSpec(steps=5, eps=0.02, tau=0.05)
    whole = purify(net, images, params, seed=3, tile_pixels=10**9)
    tiled = purify(net, images, params, seed=3, tile_pixels=48 * 48)
    # float32 sums in another order: at most a rare 1-level rounding difference
    difference = (whole.images.int() - tiled.images.int()).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3
    torch.testing.assert_close(tiled.energy_after, whole.energy_after, rtol=1e-4, atol=1e-6)
