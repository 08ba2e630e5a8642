"""Job management against a running service: `pureebm jobs`, `status`, `wait`,
`download`, `cancel` and `report`; and the options every service command shares."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pureebm.client import PureEBMClient


DEFAULT_URL = "http://127.0.0.1:8000"
FULL_ID = 32  # hex digits of a job id; a shorter prefix is looked up among your jobs


def add_service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("PUREEBM_URL", DEFAULT_URL),
        help=f"the service (default: PUREEBM_URL, else {DEFAULT_URL})",
    )
    parser.add_argument("--api-key", help="default: PUREEBM_API_KEY")


def full_job_id(client: PureEBMClient, job: str) -> str:
    """``job``, or the one job of yours whose id starts with it (as progress bars show
    the first 8 digits); an unknown or ambiguous prefix exits with a message."""
    if len(job) >= FULL_ID:
        return job
    ids = [item["id"] for item in client.jobs(limit=200)["items"] if item["id"].startswith(job)]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        sys.exit(f"pureebm: no job of yours starts with {job!r} (`pureebm jobs` lists them)")
    sys.exit(f"pureebm: {job!r} starts {len(ids)} of your jobs: give more of the id")


def service_client(args: argparse.Namespace) -> PureEBMClient:
    from pureebm.client import PureEBMClient

    return PureEBMClient(args.url, args.api_key or os.environ.get("PUREEBM_API_KEY"))


def describe(job: dict[str, Any]) -> str:
    progress = job["progress"]
    line = f"{job['id']}  {job['status']:<8}  {progress['done']}/{progress['total']}  "
    line += job["input_name"]
    if job.get("error"):
        line += f"  ({job['error']})"
    return line


def register(sub: argparse._SubParsersAction) -> None:
    listing = sub.add_parser("jobs", help="list your jobs on a running service, newest first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-200)")
    listing.set_defaults(run=run_jobs)
    for name, run, about in [
        ("status", run_status, "show one job"),
        ("wait", run_wait, "follow a job until it ends (reattach after a detach)"),
        ("cancel", run_cancel, "cancel a job and delete its data"),
        ("report", run_report, "print a finished job's energy report (JSON)"),
        ("download", run_download, "download a finished job's result"),
    ]:
        command = sub.add_parser(name, help=about)
        command.add_argument("job", help="the job id, or its first digits")
        if name == "download":
            command.add_argument(
                "-o", "--output", type=Path, default=Path("."), help="a file or a folder"
            )
            command.add_argument(
                "--overwrite", action="store_true", help="replace an existing file"
            )
        add_service_options(command)
        command.set_defaults(run=run)
    add_service_options(listing)


def run_jobs(args: argparse.Namespace) -> None:
    with service_client(args) as client:
        page = client.jobs(limit=args.limit)
    for job in page["items"]:
        print(describe(job))
    print(f"{len(page['items'])} of {page['total']} jobs", file=sys.stderr)


def run_status(args: argparse.Namespace) -> None:
    with service_client(args) as client:
        print(describe(client.job(full_job_id(client, args.job))))


def run_wait(args: argparse.Namespace) -> None:
    with service_client(args) as client:
        print(describe(follow(client, full_job_id(client, args.job))))


@contextlib.contextmanager
def ctrl_c_at_next_poll() -> Iterator[threading.Event]:
    """Ctrl-C as a flag the caller reads at its next poll, not a KeyboardInterrupt
    raised wherever the main thread is: one raised inside a finaliser (a collected
    file's __del__, say) is printed and dropped, and Ctrl-C would be lost. A second
    Ctrl-C raises at once. Main thread only."""
    pressed = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def follow(client: PureEBMClient, job_id: str) -> dict[str, Any]:
    """Wait for the job with a progress bar; the finished job. Ctrl-C raises
    KeyboardInterrupt at the next poll (within about a second)."""
    from tqdm import tqdm

    # the service's eta (from its last 30 s, chains included), not tqdm's own guess
    layout = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
    with (
        tqdm(unit="img", desc=job_id[:8], bar_format=layout) as bar,
        ctrl_c_at_next_poll() as pressed,
    ):

        def show(job: dict[str, Any]) -> None:
            if pressed.is_set():
                raise KeyboardInterrupt
            progress = job["progress"]
            bar.total = progress["total"]
            ahead = progress.get("queue_position")
            eta = progress.get("eta_s")
            state = job["status"] + (f", {ahead} jobs ahead" if ahead else "")
            state += f", eta {eta:.0f} s" if eta is not None and job["status"] == "running" else ""
            bar.set_postfix_str(state)
            bar.update(progress["done"] - bar.n)

        return client.wait(job_id, on_progress=show)


def run_cancel(args: argparse.Namespace) -> None:
    with service_client(args) as client:
        print(describe(client.cancel(full_job_id(client, args.job))))


def run_report(args: argparse.Namespace) -> None:
    with service_client(args) as client:
        print(json.dumps(client.report(full_job_id(client, args.job)), indent=2))


def run_download(args: argparse.Namespace) -> None:
    from pureebm.containers import check_output_name
    from pureebm.images import FormatError

    with service_client(args) as client:
        job_id = full_job_id(client, args.job)
        if not args.output.is_dir():
            job = client.job(job_id)
            try:
                check_output_name(job["kind"], args.output, job["input_name"], service=True)
            except FormatError as e:
                sys.exit(f"pureebm: {e}")
        print(client.download(job_id, args.output, args.overwrite))
