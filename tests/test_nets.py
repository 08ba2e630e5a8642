"""The two energy architectures: shapes, sizes, parameter counts."""

from __future__ import annotations

import pytest
import torch

from pureebm.nets import ConvEBM, ResEBM, build_energy_net


def test_resnet_has_about_1_05_million_parameters() -> None:
    count = sum(p.numel() for p in ResEBM().parameters())
    assert 1.0e6 < count < 1.1e6


@pytest.mark.parametrize("architecture", ["conv", "resnet"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 48, 64])
def test_one_energy_per_image_for_any_size_and_channel_count(architecture, channels, size) -> None:
    net = build_energy_net(architecture, n_c=channels, n_f=8)
    energy = net(torch.randn(2, channels, size, size))
    assert energy.shape == (2,)
    assert torch.isfinite(energy).all()


def test_conv_width_doubles_through_the_strided_layers() -> None:
    widths = [m.out_channels for m in ConvEBM(n_f=16).layers if isinstance(m, torch.nn.Conv2d)]
    assert widths == [16, 32, 64, 128, 1]


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_energy_net("transformer")
