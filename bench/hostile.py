"""The API's memory under hostile uploads: unauthenticated many-part bodies and
stalled uploads, against the API alone (uvicorn on 127.0.0.1, a real Valkey).

    python -m bench.hostile [--parts 1000] [--stalled 300]

1. ``--repeat`` requests of ``--parts`` parts of 1 MB each, sent without a key:
   the key is checked from the headers, so the body is never read and the answer
   is 401.
2. ``--stalled`` uploads with a valid key that declare 10 MB, send 64 KB and then
   nothing: each is cut with 408 after BODY_TIMEOUT_S (5 s here).
3. Hostile archives at full size, one at a time with a valid key: a pax header of
   48,000 digits, a GNU long name declaring 256 MiB, a zip of 400,000 entries, an
   npz of 256 MiB of zeros beside float images, a bad CRC. For each: its status,
   the API's peak RSS above idle, and the slowest /healthz answered meanwhile.

Prints the API's resident memory (VmRSS) idle, at its peak during each phase
(VmHWM, reset before it) and after, and the statuses the requests got. Writes
bench/out/hostile.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from pureebm.registry import Registry, default_root
from tests.hostile import bad_crc_zip, extended_header_targz, npz_bytes
from tests.stack import KEY_A, Stack

OUT = Path(__file__).parent / "out" / "hostile.json"
PART = 1 << 20
BOUNDARY = "hostile"


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS


def status_of(connection: socket.socket) -> str:
    try:
        return connection.recv(64).decode(errors="replace").split(" ")[1]
    except (OSError, IndexError):
        return "closed"


def unauthenticated_parts(port: int, parts: int) -> str:
    """One POST of ``parts`` 1 MB file parts and no key; the status it got."""
    part = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + bytes(PART)
        + b"\r\n"
    )
    length = parts * len(part) + len(f"--{BOUNDARY}--\r\n")
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(head)
        try:
            for _ in range(parts):
                connection.sendall(part)
        except OSError:  # the server answered and closed: the rest was never read
            pass
        return status_of(connection)


def stalled_upload(port: int) -> socket.socket:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY_A}\r\n"
        f"Content-Length: {10 << 20}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
        "\r\n\r\n"
    ).encode()
    part = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\n'
    ).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(head + part + bytes(64 << 10))
    return connection


def hostile_archives() -> dict[str, tuple[str, bytes]]:
    """The issue-26 inputs at the size they were reported at."""
    with np.load(Path(__file__).parents[1] / "tests" / "data" / "cifar64.npz") as data:
        cifar = {"images": data["images"]}
    with tempfile.SpooledTemporaryFile() as entries:
        with zipfile.ZipFile(entries, "w") as archive:
            for i in range(400_000):
                archive.writestr(f"{i}.txt", b"")
        entries.seek(0)
        many_entries = entries.read()
    noise = np.random.default_rng(0).integers(0, 256, 1_200_000, np.uint8)
    float_images = cifar["images"][:2].astype(np.float32)
    zeros = [("zeros", np.zeros(256 << 20, np.uint8)), ("noise", noise), ("images", float_images)]
    return {
        "pax header of 48,000 digits": ("a.tar.gz", extended_header_targz(b"x", 48_000, cifar)),
        "GNU long name declaring 256 MiB": (
            "a.tar.gz",
            extended_header_targz(b"L", 256 << 20, cifar),
        ),
        "zip of 400,000 entries": ("a.zip", many_entries),
        "npz: 256 MiB of zeros, float images": ("a.npz", npz_bytes(zeros, compressed=True)),
        "zip member with a bad CRC": ("a.zip", bad_crc_zip(cifar)),
    }


def upload_watched(stack: Stack, name: str, data: bytes) -> dict:
    """Upload ``data`` as an archive; meanwhile ask /healthz every 50 ms."""
    pid, slowest = stack.api.pid, 0.0
    reset_peak(pid)
    with ThreadPoolExecutor(1) as pool, stack.client() as client:
        started = time.monotonic()
        answer = pool.submit(client.post, "/v1/jobs", files={"archive": (name, data)})
        while not answer.done():
            asked = time.monotonic()
            httpx.get(f"http://127.0.0.1:{stack.port}/healthz", timeout=30)
            slowest = max(slowest, time.monotonic() - asked)
            time.sleep(0.05)
        response = answer.result()
    return {
        "bytes": len(data),
        "status": response.status_code,
        "seconds": round(time.monotonic() - started, 2),
        "peak_rss_mb": round(memory_mb(pid, "VmHWM"), 1),
        "slowest_healthz_s": round(slowest, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="unauthenticated requests sent")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = default_root()
        default = Registry(root).default_ref()  # Stack's own default is its tests' "tiny"
        stack = Stack(Path(work), root, default_model=default, body_timeout_s=5)
        pid = stack.api.pid
        try:
            time.sleep(1)
            idle = memory_mb(pid, "VmRSS")
            reset_peak(pid)
            statuses = Counter(
                unauthenticated_parts(stack.port, args.parts) for _ in range(args.repeat)
            )
            parts_peak = memory_mb(pid, "VmHWM")
            reset_peak(pid)
            with ThreadPoolExecutor(32) as pool:
                connections = list(
                    pool.map(lambda _: stalled_upload(stack.port), range(args.stalled))
                )
            held = memory_mb(pid, "VmRSS")
            with ThreadPoolExecutor(32) as pool:
                stalled = Counter(pool.map(status_of, connections))
            for connection in connections:
                connection.close()
            stalled_peak = memory_mb(pid, "VmHWM")
            after = memory_mb(pid, "VmRSS")
            archives = {
                what: upload_watched(stack, name, data)
                for what, (name, data) in hostile_archives().items()
            }
        finally:
            stack.stop()
    figures = {
        "idle_rss_mb": round(idle, 1),
        "unauthenticated": {
            "requests": args.repeat,
            "parts_of_1mb": args.parts,
            "statuses": dict(statuses),
            "peak_rss_mb": round(parts_peak, 1),
        },
        "stalled": {
            "uploads": args.stalled,
            "statuses": dict(stalled),
            "rss_while_held_mb": round(held, 1),
            "peak_rss_mb": round(stalled_peak, 1),
        },
        "after_rss_mb": round(after, 1),
        "archives": archives,
    }
    print(json.dumps(figures, indent=2))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
