"""Energy-ranked purification (PureGen's "Filt"): purify only the images the EBM finds
least natural, and pass the others through unchanged.

Every image of a set is first scored by its energy E(x) (a chain of T = 0 steps).
Then, with ``rule``:

- a fraction k (0 < k <= 1): the ceil(k N) images of highest energy are purified
  (the paper uses k = 0.5);
- "auto": the images whose energy is above the model's ``energy_threshold``, the
  median energy of held-out clean images (``clean_threshold``), are purified, so
  about half of a clean set and more of a set whose poisons raise the energy.

Ties go to the earlier position, so the selection is a function of the energies
alone. No torch here: the API and the worker's assembly use it too.
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


def selected_positions(
    energies: Sequence[float], rule: float | str, threshold: float | None = None
) -> list[int]:
    """Positions (ascending) of the images to purify, given every image's energy."""
    energy = np.asarray(energies, np.float64)
    if rule == "auto":
        if threshold is None:
            raise FilterError("filter=auto needs the model's energy threshold")
        return np.flatnonzero(energy > threshold).tolist()
    count = math.ceil(float(rule) * len(energy) - 1e-9)
    highest_first = np.argsort(-energy, kind="stable")  # stable: ties keep position order
    return sorted(highest_first[:count].tolist())
