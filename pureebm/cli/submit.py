"""`pureebm submit`: purify through a running service."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pureebm.cli.options import add_purifier_options, purifier_overrides


def register(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="purify through a running service")
    submit.add_argument("input", type=Path, help="an image or an archive (zip, tar, npz)")
    submit.add_argument("-o", "--output", type=Path, required=True, help="the purified copy")
    submit.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    submit.add_argument("--api-key", help="default: PUREEBM_API_KEY")
    submit.add_argument("--model", help="NAME or NAME:VERSION (default: the service's)")
    add_purifier_options(submit)
    submit.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace) -> None:
    import os

    from tqdm import tqdm

    from pureebm.client import PureEBMClient

    params = {"model": args.model, "seed": args.seed, **purifier_overrides(args)}
    api_key = args.api_key or os.environ.get("PUREEBM_API_KEY")
    started = time.perf_counter()
    with PureEBMClient(args.url, api_key) as client, tqdm(unit="img", desc="purify") as bar:
        job = client.submit(args.input, **params)
        bar.total = job["progress"]["total"]
        print(f"job {job['id']}: {job['progress']['total']} images", file=sys.stderr)

        def show(job: dict) -> None:
            bar.total = job["progress"]["total"]  # a filter's second phase is sized once chosen
            bar.set_postfix_str(job["status"])
            bar.update(job["progress"]["done"] - bar.n)

        client.wait(job["id"], on_progress=show)
        client.download(job["id"], args.output)
        report = client.report(job["id"])
    seconds = time.perf_counter() - started
    print(
        f"purified {report['purified']} of {len(report['images'])} images in {seconds:.1f} s "
        f"-> {args.output}"
    )
