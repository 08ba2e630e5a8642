"""`pureebm models`: list the registry's presets; `pureebm preset`: name a setting."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pureebm.cli.options import add_purifier_options, purifier_overrides
from pureebm.registry import DEFAULT_ROOT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.add_argument("--json", action="store_true", help="every manifest in full, as JSON")
    p.set_defaults(run=run_models)

    p = sub.add_parser(
        "preset",
        help="register a purification setting under a name (such as the trade-off "
        "presets light, standard, strong): a model and parameters, resolved as a job "
        "resolves them",
    )
    p.add_argument("name", help="the preset's NAME; it gets NAME's next version")
    p.add_argument(
        "--from", dest="source", help="the model, NAME[:VERSION] (default: the registry's)"
    )
    add_purifier_options(p, seed=False)
    p.add_argument("--description", default="", help="what the setting is for, and its figures")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.set_defaults(run=run_preset)


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


def run_preset(args: argparse.Namespace) -> None:
    from pureebm.purifiers import Overrides
    from pureebm.registry import Registry
    from pureebm.requests import resolve_request

    registry = Registry(args.registry)
    try:
        resolved = resolve_request(Overrides(**purifier_overrides(args)), args.source, registry)
    except ValueError as e:  # pydantic's ValidationError and FilterError included
        sys.exit(f"pureebm: {e}")
    source = registry.manifest(resolved.model or args.source or registry.default_ref())
    runs_weights = resolved.uses_weights  # then the preset names the source's weights
    try:
        manifest = registry.add_preset(
            name=args.name,
            purifier=resolved.purifier,
            filter=resolved.filter,
            weights=source.weights.sha256 if runs_weights and source.weights else None,
            energy_threshold=source.energy_threshold if runs_weights else None,
            derived_from=source.ref if runs_weights else None,
            description=args.description,
        )
    except ValueError as e:  # a name the registry cannot hold
        sys.exit(f"pureebm: {e}")
    print(
        f"registered {manifest.ref}"
        f"{f' from {source.ref}' if runs_weights else ''}: {manifest.purifier.summary()}"
        f"{'' if manifest.filter is None else f' filter={manifest.filter}'}"
    )
