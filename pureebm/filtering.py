"""Energy-ranked purification (PureGen's "Filt"): purify only the images the EBM finds
least natural, and pass the others through unchanged.

Every image of a set is first scored by its energy E(x) (a chain of T = 0 steps).
Then, with ``rule``:

- a fraction k (0 < k <= 1): the ceil(k N) images of highest energy are purified
  (the paper uses k = 0.5);
- "auto": the images whose energy is above the model's ``energy_threshold``, the
  median energy of held-out clean images (``clean_threshold``), are purified, so
  about half of a clean set and more of a set whose poisons raise the energy.

A fraction is taken within each size: images are bucketed by their pixel count
(half an octave of area per bucket) and the highest-energy ceil(k n) of each bucket's
n images are purified. Energies of different sizes are not comparable (a larger
photograph is smoother at the model's scale, so its energy is lower), and a set
ranked as one would leave its larger images raw.

Ties go to the earlier position, so the selection is a function of the energies
(and sizes) alone. No torch here: the API and the worker's assembly use it too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pureebm.registry.records import Manifest

THRESHOLD_QUANTILE = 0.5  # of held-out clean energies: the "auto" cut


class FilterError(ValueError):
    """A filter the model cannot apply (``auto`` without a calibrated threshold)."""


def threshold_of(manifest: Manifest) -> float:
    if manifest.energy_threshold is None:
        raise FilterError(
            f"model {manifest.name}:{manifest.version} has no calibrated energy threshold "
            "for filter=auto; give a fraction instead"
        )
    return manifest.energy_threshold


def resolve_filter(
    requested: float | str | None, preset: Manifest | None, scorer: Manifest
) -> float | str | None:
    """The filter a job runs: the caller's, else ``preset``'s default (None: a job
    that does not run its model's preset has none). k = 1 (every image) is no
    filter, so no scoring pass is made; "auto" with a ``scorer`` that has no
    threshold is refused (FilterError)."""
    rule = requested if requested is not None else preset.filter if preset else None
    if rule == "auto":
        threshold_of(scorer)
    return None if rule == 1 else rule


def clean_threshold(energies: Sequence[float]) -> float:
    """The "auto" threshold from held-out clean images' energies."""
    return float(np.quantile(np.asarray(energies, np.float64), THRESHOLD_QUANTILE))


def size_buckets(pixels: Sequence[float]) -> np.ndarray:
    """Each image's size bucket: its pixel count on a half-octave log scale."""
    return np.round(2 * np.log2(np.maximum(np.asarray(pixels, np.float64), 1))).astype(int)


def most_pixels_selected(pixels: Sequence[int], rule: float | str | None) -> int:
    """The most pixels a filter can choose, whatever the energies: every image's for
    no filter or "auto"; for a fraction k, the ceil(k n) largest images of each size
    bucket's n (the energies pick which, so the largest is the bound)."""
    if rule is None or rule == "auto":
        return int(sum(pixels))
    counts = np.asarray(pixels, np.int64)
    buckets = size_buckets(counts)
    most = 0
    for bucket in np.unique(buckets):
        members = np.sort(counts[buckets == bucket])[::-1]
        most += int(members[: math.ceil(float(rule) * len(members) - 1e-9)].sum())
    return most


def selected_positions(
    energies: Sequence[float],
    rule: float | str,
    threshold: float | None = None,
    pixels: Sequence[float] | None = None,
) -> list[int]:
    """Positions (ascending) of the images to purify, given every image's energy and,
    for a fraction, its pixel count (None: one size)."""
    energy = np.asarray(energies, np.float64)
    if rule == "auto":
        if threshold is None:
            raise FilterError("filter=auto needs the model's energy threshold")
        return np.flatnonzero(energy > threshold).tolist()
    buckets = np.zeros(len(energy), int) if pixels is None else size_buckets(pixels)
    chosen: list[int] = []
    for bucket in np.unique(buckets):
        members = np.flatnonzero(buckets == bucket)
        count = math.ceil(float(rule) * len(members) - 1e-9)
        highest_first = members[np.argsort(-energy[members], kind="stable")]  # ties: position
        chosen += highest_first[:count].tolist()
    return sorted(chosen)
