"""What purification gives back: each image's purified picture, its energies and how
far it moved (PSNR to the original). A leaf module, so that the pipeline (which
makes them) and the shard files (which store them) need not import each other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pureebm.images import Picture

MAX_PSNR = 99.0  # dB, for an unchanged image (JSON has no infinity)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (or sets of them), capped at MAX_PSNR; row
    by row, so a 16-Mpx image costs a row's temporaries, not four image-sized ones."""
    squares = 0
    for row_a, row_b in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True):
        difference = np.subtract(row_a, row_b, dtype=np.int64)
        squares += int(np.dot(difference, difference))
    if squares == 0:  # identical (or empty)
        return MAX_PSNR
    return min(float(10 * np.log10(255**2 * a.size / squares)), MAX_PSNR)


class Energy(NamedTuple):
    name: str
    energy_before: float
    energy_after: float
    purified: bool = True  # False: left as it was sent by an energy filter
    psnr: float | None = None  # dB, purified against sent; None: not purified or not known


@dataclass
class PurifiedImage:
    name: str
    picture: Picture  # the input's mode, alpha and format, with the purified RGB pixels
    energy_before: float
    energy_after: float
    sweep: dict[int, np.ndarray] = field(default_factory=dict)  # t -> Psi_t RGB, if asked
    psnr: float = math.nan  # dB, the purified RGB against the RGB sent

    @property
    def rgb(self) -> np.ndarray:  # H x W x 3 uint8
        return self.picture.rgb
