"""Purifier families: each module defines one family's spec and purifier and
registers the spec (``pureebm.purifiers.spec``); importing this package registers
them all. A new family is one module here and one name in the import below.

Torch-free at import: the API reads the specs; purifiers import torch when built.
"""

from __future__ import annotations

from pureebm.purifiers import ddpm, jpeg, langevin, reps  # noqa: F401  (registration)
from pureebm.purifiers.base import ModelLoader, Purified, Purifier
from pureebm.purifiers.spec import (
    FAMILIES,
    Filter,
    PurifierSpec,
    overrides_model,
    parse_filter,
    resolve,
    spec_union,
)

Spec = spec_union()
Overrides = overrides_model()

__all__ = [
    "FAMILIES",
    "Filter",
    "ModelLoader",
    "Overrides",
    "Purified",
    "Purifier",
    "PurifierSpec",
    "Spec",
    "parse_filter",
    "resolve",
]
