"""The model registry: weights stored once by their sha256, presets naming them, an
explicit default (store), the records they keep (records), and the import of
released weights (importing). No torch until weights are loaded."""

from __future__ import annotations

from pureebm.refs import RegistryError, parse_ref
from pureebm.registry.store import (
    DEFAULT_ROOT,
    WEIGHTS,
    LoadedModel,
    Registry,
    default_root,
)

__all__ = [
    "DEFAULT_ROOT",
    "WEIGHTS",
    "LoadedModel",
    "Registry",
    "RegistryError",
    "default_root",
    "parse_ref",
]
