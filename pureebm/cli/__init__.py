"""The `pureebm` command line: purify data, list models, train an EBM or a DDPM,
calibrate or import one, evaluate defences, talk to a running service. Each
subcommand imports what it needs when it runs, so `pureebm --help` answers at once.

`serve`, `worker` and `keygen` belong to the service and the worker: they register
themselves under the `pureebm.commands` entry-point group (pyproject.toml), so
the engine never imports either.
"""

from __future__ import annotations

import argparse
import difflib
import os
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


class Parser(argparse.ArgumentParser):
    """argparse, with the closest known option suggested for a mistyped one."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = self.parse_known_args(args, namespace)
        unknown = [extra for extra in extras if extra.startswith("-")]
        if extras:
            command = self.subcommands.get(getattr(parsed, "command", ""), self)
            known = [o for action in command._actions for o in action.option_strings]
            hints = [
                f"{option}: did you mean {', '.join(close)}?"
                for option in unknown
                if (close := difflib.get_close_matches(option.split("=")[0], known, n=2))
            ]
            command.error(
                f"unrecognized arguments: {' '.join(extras)}"
                + ("".join(f"\n  {hint}" for hint in hints))
            )
        return parsed

    @property
    def subcommands(self) -> dict[str, argparse.ArgumentParser]:
        actions = self._subparsers._group_actions if self._subparsers else []
        return {name: parser for a in actions for name, parser in a.choices.items()}  # type: ignore[union-attr]


def build_parser() -> Parser:
    parser = Parser(prog="pureebm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    for entry in sorted(entry_points(group="pureebm.commands"), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    import httpx

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
    except httpx.TransportError as e:
        url = getattr(args, "url", "the service")
        sys.exit(f"pureebm: cannot reach {url} ({type(e).__name__}: {e}); is it running? "
                 "(--url or PUREEBM_URL names another)")  # fmt: skip
    except BrokenPipeError:  # `pureebm report ID | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:  # a missing, unreadable or existing file: the message names it
        sys.exit(f"pureebm: {e.strerror + ': ' + str(e.filename) if e.filename else e}")
