"""`pureebm models`: list the registry's presets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pureebm.registry import DEFAULT_ROOT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.add_argument("--json", action="store_true", help="every manifest in full, as JSON")
    p.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> None:
    from pureebm.registry import Registry

    registry = Registry(args.registry)
    manifests = registry.list()
    if args.json:
        print(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
        return
    default_entry = registry.pinned(registry.default_ref())
    for m in manifests:
        default = " (default)" if (m.name, m.version) == default_entry else ""
        weights = m.weights
        trained = (
            f"{weights.architecture}, {weights.image_size}px x{weights.channels}, trained "
            f"{weights.training.iterations} it in {weights.training.wall_time_s:.0f} s on "
            f"{weights.training.hardware}"
            if weights
            else "no weights"
        )
        derived = f" (from {m.derived_from})" if m.derived_from else ""
        print(
            f"{m.ref}{default}  {m.purifier.summary()}"
            f"{'' if m.filter is None else f' filter={m.filter}'}{derived}  {trained}"
        )
