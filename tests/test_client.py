"""The Python client and `pureebm submit` against a running service; `pureebm serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from pureebm.client import PureEBMClient, PureEBMError
from tests.stack import KEY_A, Stack, free_port, png, worker_pids, zip_bytes


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_registry) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("client"), tiny_registry)
    stack.start_worker()
    yield stack
    stack.stop()


def test_client_purifies_an_npz_and_reports_progress(stack, tmp_path, cifar):
    src, dst = tmp_path / "d.npz", tmp_path / "d.purified.npz"
    np.savez(src, images=cifar["images"][:9], labels=cifar["labels"][:9])
    seen: list[int] = []
    with PureEBMClient(stack.url, KEY_A) as client:
        job = client.purify(
            src, dst, on_progress=lambda j: seen.append(j["progress"]["done"]), steps=4, seed=3
        )
        assert job["status"] == "finished" and seen[-1] == 9
        assert len(client.report(job["id"])["images"]) == 9
        assert client.models()[0]["name"] == "tiny"
        with pytest.raises(PureEBMError) as refused:
            client.submit(src, steps=99999)
        assert refused.value.status == 422
    with np.load(dst) as out:
        np.testing.assert_array_equal(out["labels"], cifar["labels"][:9])


def test_client_filters_an_npz_by_energy(stack, tmp_path, cifar):
    """filter=0.3 of 9 rows: the 3 of highest energy purified, the 6 others as sent."""
    src, dst = tmp_path / "d.npz", tmp_path / "d.filtered.npz"
    np.savez(src, images=cifar["images"][:9], labels=cifar["labels"][:9])
    with PureEBMClient(stack.url, KEY_A) as client:
        job = client.purify(src, dst, steps=4, seed=3, filter=0.3)
        report = client.report(job["id"])
    assert job["params"]["filter"] == 0.3 and report["purified"] == 3
    with np.load(dst) as out:
        for row, original, purified in zip(
            report["images"], cifar["images"][:9], out["images"], strict=True
        ):
            assert np.array_equal(original, purified) != row["purified"]


def submit_command(src, dst, url: str, key: str, *extra: str) -> subprocess.CompletedProcess:
    argv = ["submit", str(src), "-o", str(dst), "--url", url, "--api-key", key, *extra]
    return subprocess.run(
        [sys.executable, "-m", "pureebm", *argv], capture_output=True, text=True, timeout=300
    )


def test_submit_command_uploads_follows_and_downloads(stack, tmp_path, cifar):
    src, dst = tmp_path / "in.zip", tmp_path / "out.zip"
    src.write_bytes(zip_bytes({f"{i}.png": png(cifar["images"][i]) for i in range(5)}))
    result = submit_command(src, dst, stack.url, KEY_A, "--steps", "3")
    assert result.returncode == 0, result.stderr
    assert "purified 5 of 5 images" in result.stdout
    assert zipfile.ZipFile(dst).namelist() == [f"{i}.png" for i in range(5)]
    filtered = submit_command(src, dst, stack.url, KEY_A, "--steps", "3", "--filter", "0.4")
    assert filtered.returncode == 0, filtered.stderr
    assert "purified 2 of 5 images" in filtered.stdout
    bad = submit_command(src, dst, stack.url, "wrong")
    assert bad.returncode != 0 and "403" in bad.stderr


def test_serve_runs_valkey_a_worker_and_the_api_and_ctrl_c_stops_them(
    tmp_path, tiny_registry, cifar
):
    port = free_port()
    env = {  # the default data folder, ./data, and the registry's own DEFAULT
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("PUREEBM_DATA_DIR", "PUREEBM_DEFAULT_MODEL")
        },
        "PUREEBM_PORT": str(port),
        "PUREEBM_REGISTRY": str(tiny_registry),
    }
    env.pop("PUREEBM_REDIS_URL", None)
    serve = subprocess.Popen(
        [sys.executable, "-m", "pureebm", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = serve.stdout.readline()
        assert "embedded Valkey" in banner, banner
        valkey_port = int(banner.split("127.0.0.1:")[1].split(" ")[0])
        url = f"http://127.0.0.1:{port}"
        Stack.wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "readiness")
        [worker_pid] = worker_pids(serve.pid)
        one = httpx.post(
            f"{url}/v1/purify",
            files={"files": ("a.png", png(cifar["images"][0]))},
            data={"steps": "2"},
            timeout=120,
        )
        assert one.status_code == 200 and one.headers["content-type"] == "image/png"
    finally:
        serve.send_signal(signal.SIGINT)
        remaining = serve.communicate(timeout=60)[0]
    assert "stopped API, workers and Valkey" in remaining
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    for closed in (port, valkey_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", closed), timeout=5).close()
