"""The `pureebm` command line: purify data, list models, train an EBM or a DDPM,
calibrate or import one, evaluate defences, talk to a running service. Each
subcommand imports what it needs when it runs, so `pureebm --help` answers at once.

`serve`, `worker` and `keygen` belong to the service and the worker: they register
themselves under the `pureebm.commands` entry-point group (pyproject.toml), so
the engine never imports either.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from pureebm.cli import (
    calibrate,
    evaluate,
    import_weights,
    jobs,
    models,
    purify,
    submit,
    train,
)

COMMANDS = (purify, models, train, calibrate, import_weights, submit, jobs, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pureebm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for entry in sorted(entry_points(group="pureebm.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    from pureebm.client import PureEBMError
    from pureebm.filtering import FilterError
    from pureebm.images import FormatError
    from pureebm.registry import RegistryError

    try:
        args.run(args)
    except (FormatError, RegistryError, FilterError) as e:
        sys.exit(f"pureebm: {e}")
    except PureEBMError as e:
        sys.exit(f"pureebm: the service answered {e}")
