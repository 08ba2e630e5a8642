"""`pureebm serve` and `pureebm keygen`, registered with the `pureebm` command line
through the `pureebm.commands` entry-point group. Only argparse is imported here;
each command imports the service when it runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the API (plus embedded Valkey and workers when PUREEBM_REDIS_URL is unset)",
    )
    serve.add_argument("--host", help="default: PUREEBM_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: PUREEBM_PORT or 8000")
    serve.add_argument("--device", default="auto", help="the embedded workers' device")
    serve.add_argument(
        "--workers", type=int, default=1, help="embedded worker processes (default: 1)"
    )
    serve.set_defaults(run=run_serve)
    keygen = sub.add_parser("keygen", help="make an API key and print the sha256 to store")
    keygen.set_defaults(run=run_keygen)


def run_serve(args: argparse.Namespace) -> None:
    from service.embedded import serve

    serve(host=args.host, port=args.port, device=args.device, workers=args.workers)


def run_keygen(args: argparse.Namespace) -> None:
    import secrets

    from service.auth import key_hash

    key = secrets.token_urlsafe(32)
    print(f"API key (give to the caller): {key}")
    print(f"sha256 (put in PUREEBM_API_KEY_HASHES or the keys file): {key_hash(key)}")
