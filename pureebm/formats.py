"""Image formats and containers (placeholder: completed below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_image_array(path: str | Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        return np.asarray(npz["images"], dtype=np.uint8)
