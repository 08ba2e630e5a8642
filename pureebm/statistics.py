"""The one 95% interval every figure here is reported with (no torch).

A mean and the half-width of its 95% Student-t interval, mean +- t_{0.975, n-1}
s / sqrt(n): the quality card's PSNR and r over held-out images and the
evaluation's rows over targets and seeds alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def t_quantile(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    table = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    return table.get(dof, 2.23 if dof < 15 else 2.09 if dof < 30 else 1.96)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for a single value)."""
    if len(values) < 2:
        return float(np.mean(values)), 0.0
    half = t_quantile(len(values) - 1) * np.std(values, ddof=1) / len(values) ** 0.5
    return float(np.mean(values)), float(half)
