"""PNG figures: image grids (Pillow) and line charts (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_rows(rows: Sequence[torch.Tensor], path: Path, scale: int = 3) -> None:
    """Save rows of uint8 images (each row N x C x H x W, same N) as one PNG grid."""
    tiles = []
    for row in rows:
        row = row.expand(-1, 3, -1, -1) if row.shape[1] == 1 else row[:, :3]
        padded = torch.nn.functional.pad(row, (1, 1, 1, 1), value=255)
        tiles.append(torch.cat(list(padded), dim=2))  # C x H x (N*W)
    grid = torch.cat(tiles, dim=1).permute(1, 2, 0).numpy()
    image = Image.fromarray(np.ascontiguousarray(grid))
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def amplified_difference(a: torch.Tensor, b: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """uint8 image of (a - b) * gain centred on mid-grey."""
    diff = (a.float() - b.float()) * gain + 127.5
    return diff.clamp(0, 255).round().to(torch.uint8)


def line_chart(
    series: Mapping[str, Sequence[float]],
    path: Path,
    x: Sequence[float] | None = None,
    title: str = "",
    x_label: str = "step",
) -> None:
    """One panel per series, stacked, sharing the x axis, with ticks and labels."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(7.5, 2.2 * len(series)), sharex=True)
    for ax, (label, values) in zip(np.atleast_1d(axes), series.items(), strict=True):
        xs = list(x) if x is not None else list(range(len(values)))
        ax.plot(xs, values, marker="o" if len(values) <= 20 else None, linewidth=1.5)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[-1].set_xlabel(x_label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
