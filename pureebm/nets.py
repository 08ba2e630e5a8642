"""Energy networks E(x) -> one scalar per image (low energy = natural image).

Two architectures from the PureEBM paper's code (docs/architecture.md):

- ``conv``: the plain convolutional EBM of Nijkamp et al. / Hill et al.
- ``resnet``: an SNGAN-discriminator-style residual EBM, the paper's main model.

Both are fully convolutional up to a spatial mean, so they score any image of at
least 32x32 pixels, and both take any channel count. Each exposes the map before
the mean (``energy_map``) and the (kernel, stride, padding) of its layers along
its widest path (``geometry``), with which ``pureebm.tiles`` scores large images
tile by tile.

Both also score a zero-padded batch of images of different sizes exactly as each
image alone (``forward(x, valid)``): after every layer, the features outside each
image's valid region are set to zero, which is what that image's own zero padding
would hold there, and the energy is the mean over the valid positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Valid:
    """Each image's valid height and width (N x 2) inside a zero-padded batch."""

    sizes: torch.Tensor

    def after(self, kernel: int, stride: int, padding: int) -> Valid:
        """The valid sizes of a layer's output: floor((size + 2 padding - kernel) / stride) + 1."""
        return Valid((self.sizes + 2 * padding - kernel) // stride + 1)

    def region(self, height: int, width: int) -> torch.Tensor:
        """N x 1 x height x width: True inside each image."""
        rows = torch.arange(height, device=self.sizes.device)
        cols = torch.arange(width, device=self.sizes.device)
        inside_rows = rows.view(1, -1) < self.sizes[:, :1]
        inside_cols = cols.view(1, -1) < self.sizes[:, 1:]
        return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]

    def mask(self, features: torch.Tensor) -> torch.Tensor:
        return features * self.region(*features.shape[2:]).to(features.dtype)

    def mean(self, energy_map: torch.Tensor) -> torch.Tensor:
        """N x H x W -> N: the mean over each image's valid positions (in float32 at
        least, so that a count stays exact under bfloat16 autocast)."""
        energy_map = energy_map.float() if energy_map.dtype != torch.float64 else energy_map
        inside = self.region(*energy_map.shape[1:])[:, 0].to(energy_map.dtype)
        return (energy_map * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2))


def masked(features: torch.Tensor, valid: Valid | None) -> torch.Tensor:
    return features if valid is None else valid.mask(features)


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

    def forward(self, x: torch.Tensor, valid: Valid | None = None) -> torch.Tensor:
        if valid is None:
            return self.energy_map(x).mean(dim=(1, 2))
        h = valid.mask(x)
        for layer in self.layers:
            h = layer(h)
            if isinstance(layer, nn.Conv2d):
                valid = valid.after(layer.kernel_size[0], layer.stride[0], layer.padding[0])
                h = valid.mask(h)
        return valid.mean(h[:, 0])


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

    def forward(self, x: torch.Tensor, valid: Valid | None = None) -> torch.Tensor:
        """``valid``: the input's valid sizes in a padded batch (x is zero outside them)."""
        pooled = valid.after(2, 2, 0) if valid is not None and self.downsample else valid
        h = x if self.first else F.relu(x)
        h = masked(self.conv2(F.relu(masked(self.conv1(h), valid))), valid)
        if self.downsample:
            h = masked(F.avg_pool2d(h, 2), pooled)
        if self.first:
            skip = masked(self.shortcut(F.avg_pool2d(x, 2)), pooled)
        else:
            skip = masked(self.shortcut(x), valid)
            if self.downsample:
                skip = masked(F.avg_pool2d(skip, 2), pooled)
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

    def forward(self, x: torch.Tensor, valid: Valid | None = None) -> torch.Tensor:
        if valid is None:
            return self.energy_map(x).mean(dim=(1, 2))
        h = valid.mask(x)
        for block in self.blocks:
            h = block(h, valid)
            if block.downsample:
                valid = valid.after(2, 2, 0)
        return valid.mean(self.linear(F.relu(h).permute(0, 2, 3, 1)).squeeze(3))


ARCHITECTURES: dict[str, type[nn.Module]] = {"conv": ConvEBM, "resnet": ResEBM}

MIN_IMAGE_SIZE = 32


def build_energy_net(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct a registered architecture; an unknown name is a ValueError."""
    if architecture not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r} (known: {known})")
    return ARCHITECTURES[architecture](**kwargs)
