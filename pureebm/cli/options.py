"""The purifier options `purify` and `submit` share: every family's, from one spec."""

from __future__ import annotations

import argparse

from pureebm.purifiers import FAMILIES, Overrides


def add_purifier_options(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """The purification parameters `purify`, `submit` and `preset` share: every
    purifier family's (pureebm.purifiers.Overrides), checked by the families' specs;
    and the random seed (``seed``), which a preset does not hold."""
    for field, info in Overrides.model_fields.items():
        option = "--" + field.replace("_", "-")
        if field == "purifier":
            p.add_argument(option, choices=list(FAMILIES), help=info.description)
        else:
            p.add_argument(option, metavar=field.upper(), help=info.description)
    if seed:
        p.add_argument("--seed", type=int, help="random seed (drawn if unset)")


def purifier_overrides(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in Overrides.model_fields if getattr(args, k) is not None}
