"""`pureebm worker` (also `python -m worker`), registered with the `pureebm` command
line through the `pureebm.commands` entry-point group. Only argparse is imported
here; torch and RQ are imported when the worker starts."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cuda:0, cpu, ... (default: auto)")
    parser.add_argument(
        "--queues",
        nargs="+",
        help="queues to take, in order (pureebm: every batch lane, taken in turn); "
        "default: pureebm-sync pureebm",
    )
    parser.add_argument("--batch-size", type=int, help="default: chosen for the device")
    parser.add_argument("--redis-url", help="default: PUREEBM_REDIS_URL")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.set_defaults(run=run)


def register(sub: argparse._SubParsersAction) -> None:
    add_arguments(sub.add_parser("worker", help="run one long-lived worker on one device"))


def run(args: argparse.Namespace) -> None:
    from jobs.settings import JobSettings
    from worker.main import run_worker

    settings = JobSettings(**({"redis_url": args.redis_url} if args.redis_url else {}))
    run_worker(settings, args.device, args.queues, args.batch_size, args.burst)
