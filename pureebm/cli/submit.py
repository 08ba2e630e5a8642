"""`pureebm submit`: purify through a running service. The job id is printed at once;
Ctrl-C asks whether to cancel the job or leave it running (`pureebm wait` follows it
again)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pureebm.cli.jobs import add_service_options, follow, service_client
from pureebm.cli.options import add_purifier_options, purifier_overrides

if TYPE_CHECKING:
    from pureebm.client import PureEBMClient


def register(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="purify through a running service")
    submit.add_argument("input", type=Path, help="an image or an archive (zip, tar, npz)")
    submit.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("."),
        help="the purified copy: a file named for the input's container, or a folder to "
        "write it into under the service's name (default: this folder)",
    )
    submit.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_service_options(submit)
    submit.add_argument("--model", help="NAME or NAME:VERSION (default: the service's)")
    add_purifier_options(submit)
    submit.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace) -> None:
    from pureebm.containers import check_output_name, detect_kind
    from pureebm.images import FormatError

    if not args.input.exists():
        sys.exit(f"pureebm: {args.input}: no such file")
    if not args.input.is_file():
        sys.exit(
            f"pureebm: {args.input} is a folder: the service takes one file (zip or tar it, "
            "or purify it here with `pureebm purify`)"
        )
    if not args.output.is_dir():  # refused before the upload, not after the work
        try:
            check_output_name(detect_kind(args.input), args.output, args.input, service=True)
        except FormatError as e:
            sys.exit(f"pureebm: {e}")
        if args.output.exists() and not args.overwrite:
            sys.exit(f"pureebm: {args.output} exists: pass --overwrite to replace it")
    params = {"model": args.model, "seed": args.seed, **purifier_overrides(args)}
    started = time.perf_counter()
    with service_client(args) as client:
        job = client.submit(args.input, **params)
        try:
            print(f"job {job['id']}: {job['images']} images", file=sys.stderr, flush=True)
            for warning in job.get("warnings", []):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            follow(client, job["id"])
        except KeyboardInterrupt:
            interrupted(client, job["id"])
            return
        output = client.download(job["id"], args.output, args.overwrite)
        report = client.report(job["id"])
    seconds = time.perf_counter() - started
    print(
        f"purified {report['purified']} of {len(report['images'])} images in {seconds:.1f} s "
        f"-> {output}"
    )


def interrupted(client: PureEBMClient, job_id: str) -> None:
    """Ctrl-C while following: cancel the job, or leave it running (the default, and
    the only choice without a terminal to ask on)."""
    answer = ""
    if sys.stdin.isatty():
        try:
            answer = input(f"\ncancel job {job_id}? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
    if answer in ("y", "yes"):
        client.cancel(job_id)
        print(f"job {job_id} canceled", file=sys.stderr)
    else:
        print(
            f"job {job_id} runs on: `pureebm wait {job_id}` follows it, "
            f"`pureebm download {job_id}` fetches its result",
            file=sys.stderr,
        )
