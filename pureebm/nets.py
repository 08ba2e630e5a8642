"""Energy networks E(x) -> one scalar per image (low energy = natural image).

Two architectures from the PureEBM paper's code (DESIGN.md section 1):

- ``conv``: the plain convolutional EBM of Nijkamp et al. / Hill et al.
- ``resnet``: an SNGAN-discriminator-style residual EBM, the paper's main model.

Both are fully convolutional up to a spatial mean, so they score any image of at
least 32x32 pixels, and both take any channel count. Each exposes the map before
the mean (``energy_map``) and the (kernel, stride, padding) of its layers along
its widest path (``geometry``), with which ``pureebm.tiles`` scores large images
tile by tile.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class ConvEBM(nn.Module):
    """conv3x3(n_f), three conv4x4 stride-2 layers doubling channels, conv4x4 valid to 1.

    On 32x32 inputs the last layer yields exactly one value; on larger inputs it
    yields a map whose mean is the energy.
    """

    def __init__(self, n_c: int = 3, n_f: int = 32, leak: float = 0.05) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(n_c, n_f, 3, 1, 1),
            nn.LeakyReLU(leak),
            nn.Conv2d(n_f, n_f * 2, 4, 2, 1),
            nn.LeakyReLU(leak),
            nn.Conv2d(n_f * 2, n_f * 4, 4, 2, 1),
            nn.LeakyReLU(leak),
            nn.Conv2d(n_f * 4, n_f * 8, 4, 2, 1),
            nn.LeakyReLU(leak),
            nn.Conv2d(n_f * 8, 1, 4, 1, 0),
        )

    geometry = ((3, 1, 1), (4, 2, 1), (4, 2, 1), (4, 2, 1), (4, 1, 0))

    def energy_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy_map(x).mean(dim=(1, 2))


class ResidualBlock(nn.Module):
    """SNGAN discriminator block: ReLU-conv-ReLU-conv (+ avg-pool), plus a shortcut.

    ``first`` is SNGAN's "optimized" block that sees the raw image: no leading
    ReLU, and the shortcut pools before its 1x1 convolution.
    """

    def __init__(self, c_in: int, c_out: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.first = first
        self.downsample = downsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        learnable_shortcut = first or downsample or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if learnable_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.first:
            skip = self.shortcut(F.avg_pool2d(x, 2))
        else:
            skip = self.shortcut(x)
            if self.downsample:
                skip = F.avg_pool2d(skip, 2)
        return h + skip


class ResEBM(nn.Module):
    """Optimized down block, down block, two plain blocks (n_f channels), ReLU,
    global average pooling, linear to one value. About 1.05 M parameters at n_f=128."""

    def __init__(self, n_c: int = 3, n_f: int = 128) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            ResidualBlock(n_c, n_f, downsample=True, first=True),
            ResidualBlock(n_f, n_f, downsample=True),
            ResidualBlock(n_f, n_f, downsample=False),
            ResidualBlock(n_f, n_f, downsample=False),
        )
        self.linear = nn.Linear(n_f, 1)

    # conv, conv, pool (x2 with downsampling), then conv, conv twice; shortcuts see less
    geometry = ((3, 1, 1), (3, 1, 1), (2, 2, 0)) * 2 + ((3, 1, 1),) * 4

    def energy_map(self, x: torch.Tensor) -> torch.Tensor:
        # the linear layer is affine, so it commutes with the spatial mean
        return self.linear(F.relu(self.blocks(x)).permute(0, 2, 3, 1)).squeeze(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy_map(x).mean(dim=(1, 2))


ARCHITECTURES: dict[str, type[nn.Module]] = {"conv": ConvEBM, "resnet": ResEBM}

MIN_IMAGE_SIZE = 32


def build_energy_net(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct a registered architecture; an unknown name is a ValueError."""
    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r} (known: {known})")
    return ARCHITECTURES[architecture](**kwargs)
