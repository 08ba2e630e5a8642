"""`pureebm import`: register released weights (a PureGen EBM or a diffusers U-Net)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pureebm.registry import DEFAULT_ROOT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="register a downloaded folder: a PureGen reference EBM or a diffusers UNet",
    )
    p.add_argument("source", type=Path, help="the folder (e.g. from huggingface-cli download)")
    p.add_argument("--name", required=True, help="registry name of the new entry")
    p.add_argument("--version", type=int, help="its version (default: the next free one)")
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    p.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> None:
    from pureebm.registry import Registry
    from pureebm.registry.importing import ImportRefused, import_folder

    try:
        manifest = import_folder(
            args.source,
            Registry(args.registry),
            args.name,
            args.version,
            command="pureebm " + shlex.join(sys.argv[1:]),
        )
    except ImportRefused as e:
        sys.exit(f"pureebm: refused {args.source}: {e}")
    architecture = manifest.weights.architecture if manifest.weights else "no weights"
    print(
        f"registered {manifest.ref} ({architecture}, {manifest.purifier.summary()}) "
        f"in {args.registry}"
    )
