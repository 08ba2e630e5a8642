"""The two energy architectures: one energy per image, sizes, parameter counts, masks."""

from __future__ import annotations

import pytest
import torch

from pureebm.nets import ConvEBM, ResEBM, Valid, build_energy_net


def test_resnet_has_about_1_05_million_parameters() -> None:
    count = sum(p.numel() for p in ResEBM().parameters())
    assert 1.0e6 < count < 1.1e6


@pytest.mark.parametrize("architecture", ["conv", "resnet"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 48, 64])
def test_one_energy_per_image_for_any_size_and_channel_count(architecture, channels, size) -> None:
    """Each image's energy is its own: the same image gives the same energy alone and
    in a batch, whatever its neighbour, and different images differ."""
    torch.manual_seed(0)
    net = build_energy_net(architecture, n_c=channels, n_f=8).double()
    images = torch.randn(3, channels, size, size, dtype=torch.float64)
    energy = net(images)
    assert energy.shape == (3,) and torch.isfinite(energy).all()
    torch.testing.assert_close(net(images[1:2]), energy[1:2], rtol=1e-10, atol=1e-12)
    swapped = net(torch.stack([images[2], images[1], images[0]]))
    torch.testing.assert_close(swapped, energy.flip(0), rtol=1e-10, atol=1e-12)
    assert energy[0] != energy[1]


def test_conv_width_doubles_through_the_strided_layers() -> None:
    widths = [m.out_channels for m in ConvEBM(n_f=16).layers if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 32, 64, 128, 1]


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_energy_net("transformer")


@pytest.mark.parametrize("architecture", ["conv", "resnet"])
def test_a_masked_padded_batch_scores_each_image_as_alone(architecture) -> None:
    torch.manual_seed(0)
    net = build_energy_net(architecture, n_f=8).double()
    sizes = [(32, 32), (45, 33), (37, 50), (64, 41)]
    images = [torch.randn(1, 3, h, w, dtype=torch.float64) for h, w in sizes]
    canvas = torch.full((len(sizes), 3, 64, 50), 5.0, dtype=torch.float64)  # junk outside
    for slot, image in zip(canvas, images, strict=True):
        slot[:, : image.shape[2], : image.shape[3]] = image[0]
    canvas.requires_grad_(True)
    energies = net(canvas, Valid(torch.tensor(sizes)))
    (gradient,) = torch.autograd.grad(energies.sum(), canvas)
    for i, ((h, w), image) in enumerate(zip(sizes, images, strict=True)):
        image.requires_grad_(True)
        alone = net(image)
        (alone_gradient,) = torch.autograd.grad(alone.sum(), image)
        torch.testing.assert_close(energies[i], alone[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gradient[i, :, :h, :w], alone_gradient[0], rtol=1e-9, atol=1e-12)
        outside = gradient[i].clone()
        outside[:, :h, :w] = 0
        assert outside.abs().max() == 0
    with torch.no_grad():  # without masks the junk would change the energies
        assert not torch.allclose(net(canvas)[:3], energies[:3])
