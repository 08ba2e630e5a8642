"""Energies and their input gradients for large images, computed tile by tile.

Both energy nets end in a spatial mean: E(x) = mean_j m_j(x) over the positions j
of an output map. Each m_j depends only on the pixels in its receptive field.
For an image over ``max_tile_pixels``, the output map is split into blocks; for
each block the net runs on just the pixels its receptive fields cover (its
*crop*), and the gradient of that block's share of E is added into the image's
gradient. The result is the whole-image energy and gradient (up to float
summation order), while activation memory is that of one crop.

Exactness needs the crop to line up with the net's strides: crops start at
multiples of the product of the strides, so every intermediate feature map of a
crop is a window of the whole image's. Features near a crop's edge see the
net's zero padding instead of real pixels, but no position of the block depends
on them: the crop covers the block's whole receptive field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from pureebm.nets import Valid

Geometry = Sequence[tuple[int, int, int]]  # (kernel, stride, padding) along the widest path
DEFAULT_TILE_PIXELS = 512 * 512


def receptive_range(geometry: Geometry, first: int, last: int) -> tuple[int, int]:
    """Input rows (or columns) read by output positions ``first..last``, inclusive."""
    for kernel, stride, padding in reversed(geometry):
        first, last = first * stride - padding, last * stride - padding + kernel - 1
    return first, last


def crops(geometry: Geometry, size: int, out_size: int, block: int) -> Iterator[tuple[int, ...]]:
    """(output first, output stop, crop start, crop stop) along one axis."""
    alignment = math.prod(stride for _, stride, _ in geometry)
    for first in range(0, out_size, block):
        stop = min(first + block, out_size)
        lo, hi = receptive_range(geometry, first, stop - 1)
        start = max(lo, 0) // alignment * alignment
        yield first, stop, start, min(hi + 1, size)


class TiledEnergy(nn.Module):
    """``net`` (with ``energy_map`` and ``geometry``) scoring large images in tiles."""

    def __init__(self, net: nn.Module, max_tile_pixels: int = DEFAULT_TILE_PIXELS) -> None:
        super().__init__()
        self.net, self.max_tile_pixels = net, max_tile_pixels
        first, last = receptive_range(net.geometry, 0, 0)
        self.field = last - first + 1
        self.stride = math.prod(stride for _, stride, _ in net.geometry)

    def forward(self, x: torch.Tensor, valid: Valid | None = None) -> torch.Tensor:
        """A padded batch (``valid`` sizes) is scored whole: its canvas is one tile at most."""
        if valid is not None or x.shape[2] * x.shape[3] <= self.max_tile_pixels:
            return self.net(x, valid)
        return TiledEnergyFunction.apply(x, self)

    def tiles(self, x: torch.Tensor) -> Iterator[tuple[slice, slice, slice, slice]]:
        """(output rows, output columns, crop rows, crop columns) for every block."""
        out_h, out_w = self.output_size(x)
        side = max(int(math.sqrt(self.max_tile_pixels)), self.field + self.stride)
        block = max((side - self.field) // self.stride, 1)
        geometry, (height, width) = self.net.geometry, x.shape[2:]
        for r0, r1, y0, y1 in crops(geometry, height, out_h, block):
            for c0, c1, x0, x1 in crops(geometry, width, out_w, block):
                # output positions of the block, counted in the crop's own output map
                rows = slice(r0 - y0 // self.stride, r1 - y0 // self.stride)
                cols = slice(c0 - x0 // self.stride, c1 - x0 // self.stride)
                yield rows, cols, slice(y0, y1), slice(x0, x1)

    def output_size(self, x: torch.Tensor) -> tuple[int, int]:
        """The energy map's height and width for x's size (shapes only, on "meta")."""
        out_h, out_w = self.net.energy_map(x[:1].to("meta")).shape[1:]
        return out_h, out_w

    def output_positions(self, x: torch.Tensor) -> int:
        return math.prod(self.output_size(x))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(len(x), device=x.device, dtype=x.dtype)
        with torch.no_grad():
            for rows, cols, crop_rows, crop_cols in self.tiles(x):
                block = self.net.energy_map(x[:, :, crop_rows, crop_cols])[:, rows, cols]
                total += block.sum(dim=(1, 2))
        return total / self.output_positions(x)

    def input_gradient(self, x: torch.Tensor, grad_energy: torch.Tensor) -> torch.Tensor:
        grad = torch.zeros_like(x)
        weight = grad_energy / self.output_positions(x)
        for rows, cols, crop_rows, crop_cols in self.tiles(x):
            crop = x[:, :, crop_rows, crop_cols].detach().requires_grad_(True)
            with torch.enable_grad():
                block = self.net.energy_map(crop)[:, rows, cols].sum(dim=(1, 2))
                (grad_crop,) = torch.autograd.grad((block * weight).sum(), crop)
            grad[:, :, crop_rows, crop_cols] += grad_crop
        return grad


class TiledEnergyFunction(torch.autograd.Function):
    """E(x) computed without a graph; its backward recomputes one tile at a time."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, tiled: TiledEnergy):
        ctx.save_for_backward(x)
        ctx.tiled = tiled
        return tiled.energy(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_energy: torch.Tensor):
        (x,) = ctx.saved_tensors
        return ctx.tiled.input_gradient(x, grad_energy), None
