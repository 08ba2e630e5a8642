"""What purification gives back: each image's purified picture and its energies.
A leaf module, so that the pipeline (which makes them) and the shard files (which
store them) need not import each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pureebm.images import Picture


class Energy(NamedTuple):
    name: str
    energy_before: float
    energy_after: float
    purified: bool = True  # False: left as it was sent by an energy filter


@dataclass
class PurifiedImage:
    name: str
    picture: Picture  # the input's mode, alpha and format, with the purified RGB pixels
    energy_before: float
    energy_after: float
    sweep: dict[int, np.ndarray] = field(default_factory=dict)  # t -> Psi_t RGB, if asked

    @property
    def rgb(self) -> np.ndarray:  # H x W x 3 uint8
        return self.picture.rgb
