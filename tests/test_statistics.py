"""pureebm.statistics: the 95% interval of every reported figure."""

from __future__ import annotations

import numpy as np
import pytest

from pureebm.statistics import mean_interval


def test_mean_interval_is_students_t():
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.30 * 1.0 / 3**0.5, rel=1e-3)
    assert mean_interval([0.5]) == (0.5, 0.0)


def test_the_interval_covers_the_mean_about_95_percent_of_the_time():
    """Over 2,000 samples of 5 normal draws, the t interval holds the true mean in
    95% of them (within 2 points); 1.96 standard errors would hold it in ~88%."""
    rng = np.random.default_rng(0)
    samples = rng.normal(3.0, 2.0, (2000, 5))
    covered = [abs(m - 3.0) <= h for m, h in map(mean_interval, samples.tolist())]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.02)
