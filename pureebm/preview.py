"""A job's card as one PNG: a sample of images as sent, purified, and their difference
amplified, above a histogram of the scores with the filter's cut.

Pillow and numpy only (no torch): the worker draws it when it finalises a job, and
the API serves the file it wrote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 96  # px: each sample is shown this tall
AMPLIFY = 8  # the difference |purified - sent| is shown this many times brighter
MAX_SAMPLES = 6
HISTOGRAM_BINS = 40
MARGIN, TEXT = 8, 14  # px: a margin, a line of text
INK, CUT = (30, 30, 30), (200, 30, 30)


@dataclass
class Sample:
    name: str
    sent: np.ndarray  # H x W x 3 uint8
    purified: np.ndarray
    psnr: float | None


def tile(rgb: np.ndarray) -> Image.Image:
    """``rgb`` scaled to TILE px tall (nearest neighbour, so pixels stay visible)."""
    height, width = rgb.shape[:2]
    size = (max(1, round(width * TILE / height)), TILE)
    return Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST)


def difference(sent: np.ndarray, purified: np.ndarray) -> np.ndarray:
    moved = np.abs(purified.astype(np.int16) - sent.astype(np.int16)) * AMPLIFY
    return np.clip(moved, 0, 255).astype(np.uint8)


def histogram(scores: Sequence[float], cut: float | None, width: int, height: int) -> Image.Image:
    """Bars of the scores' counts; a red line at ``cut`` (images above it were purified)."""
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    values = np.asarray([s for s in scores if s is not None and np.isfinite(s)], np.float64)
    if values.size == 0:
        draw.text((MARGIN, MARGIN), "no scores: this purifier gives none", fill=INK)
        return panel
    low, high = float(values.min()), float(values.max())
    if cut is not None:
        low, high = min(low, cut), max(high, cut)
    if high <= low:
        high = low + 1.0
    counts, edges = np.histogram(values, HISTOGRAM_BINS, (low, high))
    top, bottom = MARGIN + TEXT, height - MARGIN - TEXT
    bar = (width - 2 * MARGIN) / HISTOGRAM_BINS
    for i, count in enumerate(counts):
        x0 = MARGIN + i * bar
        y0 = bottom - (bottom - top) * count / counts.max()
        draw.rectangle((x0, y0, x0 + bar - 1, bottom), fill=(90, 120, 170))
    draw.line((MARGIN, bottom, width - MARGIN, bottom), fill=INK)
    draw.text((MARGIN, bottom + 2), f"{edges[0]:.4g}", fill=INK)
    right = f"{edges[-1]:.4g}"
    draw.text((width - MARGIN - 7 * len(right), bottom + 2), right, fill=INK)
    title = f"score before purification, {values.size} images"
    if cut is not None:
        x = MARGIN + (cut - low) / (high - low) * (width - 2 * MARGIN)
        draw.line((x, top, x, bottom), fill=CUT, width=2)
        title += f"; the filter purified those above {cut:.4g} (red)"
    draw.text((MARGIN, MARGIN), title, fill=INK)
    return panel


def job_card(
    samples: Sequence[Sample], scores: Sequence[float | None], cut: float | None, title: str
) -> Image.Image:
    """Rows of sent | purified | difference x AMPLIFY, then the scores' histogram."""
    rows = [[tile(s.sent), tile(s.purified), tile(difference(s.sent, s.purified))] for s in samples]
    widths = [sum(t.width for t in row) + 2 * MARGIN for row in rows]
    title_width = math.ceil(ImageFont.load_default().getlength(title))  # the font drawn with
    width = max([640, title_width + 2 * MARGIN, *(w + 260 for w in widths)])
    rows_height = len(rows) * (TILE + MARGIN)
    chart = 200
    card = Image.new("RGB", (width, TEXT * 3 + rows_height + chart + MARGIN), "white")
    draw = ImageDraw.Draw(card)
    draw.text((MARGIN, MARGIN // 2), title, fill=INK)
    draw.text(
        (MARGIN, MARGIN // 2 + TEXT),
        f"sent | purified | difference x{AMPLIFY}",
        fill=INK,
    )
    y = 3 * TEXT
    for sample, row in zip(samples, rows, strict=True):
        x = MARGIN
        for picture in row:
            card.paste(picture, (x, y))
            x += picture.width + MARGIN
        moved = "" if sample.psnr is None else f"{sample.psnr:.1f} dB"
        draw.text((x, y + TILE // 2 - TEXT), sample.name[:40], fill=INK)
        draw.text((x, y + TILE // 2), moved, fill=INK)
        y += TILE + MARGIN
    card.paste(histogram(scores, cut, width, chart), (0, y))
    return card
