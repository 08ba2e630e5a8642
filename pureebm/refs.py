"""Model references: ``NAME`` (the highest version) or ``NAME:VERSION``."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
REF_PATTERN = NAME_PATTERN.removesuffix("$") + "(:[0-9]{1,9})?$"


class RegistryError(Exception):
    """A registry entry is missing, malformed or fails its integrity check."""


def parse_ref(ref: str) -> tuple[str, int | None]:
    """ "name" -> (name, None); "name:3" -> (name, 3)."""
    name, _, version = ref.partition(":")
    # ASCII digits only ('²'.isdigit() is True), and few enough to be a version
    if not re.match(NAME_PATTERN, name) or (version and not re.fullmatch(r"[0-9]{1,9}", version)):
        raise RegistryError(f"bad model reference {ref!r}: expected NAME or NAME:VERSION")
    return name, int(version) if version else None
