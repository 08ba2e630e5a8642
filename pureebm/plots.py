"""PNG figures drawn with Pillow alone: image grids and simple line charts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


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
    size: tuple[int, int] = (720, 420),
) -> None:
    """One panel per series (each with its own y range), drawn to a PNG."""
    width, panel_h = size[0], size[1] // max(len(series), 1)
    image = Image.new("RGB", (width, panel_h * len(series) + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title, fill="black")
    for i, (label, values) in enumerate(series.items()):
        top, left, right = 24 + i * panel_h, 60, width - 12
        bottom = top + panel_h - 28
        xs = list(x) if x is not None else list(range(len(values)))
        draw.rectangle([left, top, right, bottom], outline="#888888")
        draw.text((left + 4, top + 2), label, fill=PALETTE[i % len(PALETTE)])
        finite = [v for v in values if np.isfinite(v)]
        if len(finite) < 1 or len(xs) < 1:
            continue
        lo, hi = min(finite), max(finite)
        hi = hi if hi > lo else lo + 1.0
        x_lo, x_hi = min(xs), max(xs)
        x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
        draw.text((4, top), f"{hi:.3g}", fill="black")
        draw.text((4, bottom - 10), f"{lo:.3g}", fill="black")
        draw.text((left, bottom + 2), f"{x_lo:g}", fill="black")
        draw.text((right - 40, bottom + 2), f"{x_hi:g}", fill="black")
        points = [
            (
                left + (xv - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (v - lo) / (hi - lo) * (bottom - top),
            )
            for xv, v in zip(xs, values, strict=False)
            if np.isfinite(v)
        ]
        if len(points) > 1:
            draw.line(points, fill=PALETTE[i % len(PALETTE)], width=2)
        for px, py in points if len(points) <= 20 else []:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=PALETTE[i % len(PALETTE)])
    image.save(path)


def bar_chart(
    groups: Mapping[str, Mapping[str, float]],
    path: Path,
    title: str = "",
    size: tuple[int, int] = (760, 400),
) -> None:
    """Grouped bars of values in [0, 1]: one group per key, one bar per inner key."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 4), title[:120], fill="black")
    left, top, right, bottom = 50, 40, width - 12, height - 40
    draw.line([left, bottom, right, bottom], fill="black")
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - fraction * (bottom - top)
        draw.line([left - 4, y, right, y], fill="#dddddd")
        draw.text((8, y - 6), f"{fraction:.0%}", fill="black")
    series = list(dict.fromkeys(k for values in groups.values() for k in values))
    for j, name in enumerate(series):
        draw.rectangle(
            [right - 170, top + 14 * j, right - 160, top + 14 * j + 10],
            fill=PALETTE[j % len(PALETTE)],
        )
        draw.text((right - 154, top + 14 * j - 1), name, fill="black")
    slot = (right - left) / max(len(groups), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(groups.items()):
        x0 = left + i * slot + slot * 0.1
        for j, name in enumerate(series):
            value = values.get(name, float("nan"))
            if np.isfinite(value):
                y = bottom - value * (bottom - top)
                draw.rectangle(
                    [x0 + j * bar, y, x0 + (j + 1) * bar - 2, bottom],
                    fill=PALETTE[j % len(PALETTE)],
                )
                draw.text((x0 + j * bar, y - 12), f"{value:.0%}", fill="black")
        draw.text((x0, bottom + 6), label, fill="black")
    image.save(path)
