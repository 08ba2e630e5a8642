"""The Python client and `pureebm submit` against a running service; `pureebm serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from pureebm.cli.jobs import ctrl_c_at_next_poll
from pureebm.client import AsyncPureEBMClient, PureEBMClient, PureEBMError, sent_name
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


def test_the_async_client_purifies_lists_downloads_into_a_folder_and_reports_errors(
    stack, tmp_path, cifar
):
    src = tmp_path / "d.npz"
    np.savez(src, images=cifar["images"][:5], labels=cifar["labels"][:5])
    (tmp_path / "out").mkdir()

    async def session() -> tuple[dict, list[int], Path, dict]:
        seen: list[int] = []
        async with AsyncPureEBMClient(stack.url, KEY_A) as client:
            job = await client.purify(
                src,
                tmp_path / "d.purified.npz",
                lambda j: seen.append(j["progress"]["done"]),
                steps=3,
                seed=4,
            )
            written = await client.download(job["id"], tmp_path / "out")
            listed = await client.jobs(limit=1)
            assert listed["items"][0]["id"] == job["id"]
            with pytest.raises(PureEBMError) as refused:
                await client.submit(src, step=3)
            assert refused.value.status == 422 and "'steps'" in refused.value.detail
            with pytest.raises(PureEBMError) as missing:
                await client.download("0" * 32, tmp_path / "out")
            assert missing.value.status == 404
            return job, seen, written, await client.report(job["id"])

    job, seen, written, report = asyncio.run(session())
    assert job["status"] == "finished" and seen[-1] == 5 and len(report["images"]) == 5
    assert written == tmp_path / "out" / "d.purified.npz"  # the name the service gives
    assert written.read_bytes() == (tmp_path / "d.purified.npz").read_bytes()
    with PureEBMClient(stack.url, KEY_A) as client:  # the same job as the blocking client sees
        assert client.job(job["id"])["params"] == job["params"]


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
    kept = dst.read_bytes()
    refused = submit_command(src, dst, stack.url, KEY_A, "--steps", "3")
    assert refused.returncode != 0 and "--overwrite" in refused.stderr
    assert dst.read_bytes() == kept
    filtered = submit_command(
        src, dst, stack.url, KEY_A, "--steps", "3", "--filter", "0.4", "--overwrite"
    )
    assert filtered.returncode == 0, filtered.stderr
    assert "purified 2 of 5 images" in filtered.stdout
    bad = submit_command(src, dst, stack.url, "wrong", "--overwrite")
    assert bad.returncode != 0 and "403" in bad.stderr
    with PureEBMClient(stack.url, KEY_A) as client:
        before = client.jobs()["total"]
        misnamed = submit_command(src, tmp_path / "out.tar", stack.url, KEY_A)
        assert misnamed.returncode != 0 and "a zip comes back as a zip" in misnamed.stderr
        assert client.jobs()["total"] == before  # refused before the upload
    (tmp_path / "into").mkdir()
    into = submit_command(src, tmp_path / "into", stack.url, KEY_A, "--steps", "1")
    assert into.returncode == 0, into.stderr
    assert (tmp_path / "into" / "in.purified.zip").exists()  # the service's name for it


def pureebm(*argv: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pureebm", *argv, "--url", url, "--api-key", KEY_A],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_jobs_are_listed_followed_downloaded_reported_and_canceled_from_the_cli(
    stack, tmp_path, cifar
):
    src = tmp_path / "set.zip"
    src.write_bytes(zip_bytes({f"{i}.png": png(cifar["images"][i]) for i in range(3)}))
    with PureEBMClient(stack.url, KEY_A) as client:
        job = client.submit(src, steps=2)
        assert job["images"] == 3
        done = client.submit(src, steps=1, filter=0.5)
        client.wait(done["id"])
        assert client.download(done["id"], tmp_path).name == "set.purified.zip"  # a folder
        assert job["id"] in {j["id"] for j in client.jobs()["items"]}
    waited = pureebm("wait", job["id"], url=stack.url)
    assert waited.returncode == 0 and f"{job['id']}  finished  3/3" in waited.stdout
    listed = pureebm("jobs", url=stack.url)
    assert job["id"] in listed.stdout and done["id"] in listed.stdout
    status = pureebm("status", job["id"][:8], url=stack.url)  # as the progress bar shows it
    assert "finished" in status.stdout and "set.zip" in status.stdout, status.stderr
    out = tmp_path / "out"
    out.mkdir()
    fetched = pureebm("download", job["id"], "-o", str(out), url=stack.url)
    assert fetched.returncode == 0, fetched.stderr
    assert zipfile.ZipFile(out / "set.purified.zip").namelist() == ["0.png", "1.png", "2.png"]
    again = pureebm("download", job["id"], "-o", str(out), url=stack.url)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    replaced = pureebm("download", job["id"], "-o", str(out), "--overwrite", url=stack.url)
    assert replaced.returncode == 0, replaced.stderr
    misnamed = pureebm("download", job["id"], "-o", str(tmp_path / "set.tar"), url=stack.url)
    assert misnamed.returncode != 0 and "a zip comes back as a zip" in misnamed.stderr
    assert not (tmp_path / "set.tar").exists()
    report = pureebm("report", job["id"], url=stack.url)
    assert '"purified": 3' in report.stdout
    canceled = pureebm("cancel", job["id"], url=stack.url)
    assert canceled.returncode == 0 and job["id"] in canceled.stdout
    gone = pureebm("status", job["id"], url=stack.url)
    assert gone.returncode != 0 and "410" in gone.stderr and "deleted by its owner" in gone.stderr
    folder = pureebm("submit", str(tmp_path), "-o", str(out), url=stack.url)
    assert folder.returncode != 0 and "is a folder" in folder.stderr


def test_ctrl_c_on_submit_without_a_terminal_leaves_the_job_running(stack, tmp_path, cifar):
    """SIGINT while `pureebm submit` follows a long job: it says how to reattach, and
    the job is still there to wait for."""
    src = tmp_path / "one.png"
    src.write_bytes(png(np.tile(cifar["images"][0], (8, 8, 1))))
    argv = ["submit", str(src), "-o", str(tmp_path / "o.png"), "--steps", "400"]
    command = [sys.executable, "-m", "pureebm", *argv, "--url", stack.url, "--api-key", KEY_A]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # a shell's background job (CI's, say) ignores SIGINT, and so would the child
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    announced = process.stderr.readline()  # "job <id>: 1 images", printed at once
    job_id = announced.split()[1].rstrip(":")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert f"`pureebm wait {job_id}` follows it" in stderr and "Traceback" not in stderr
    with PureEBMClient(stack.url, KEY_A) as client:
        assert client.job(job_id)["status"] in ("queued", "running", "finished")
        client.cancel(job_id)


def test_ctrl_c_while_a_finaliser_runs_is_kept_for_the_next_poll():
    """A KeyboardInterrupt raised inside __del__ is printed and dropped by Python; the
    follow loop's Ctrl-C is a flag instead, so it survives, and a second one raises."""

    class Finalised:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C lands inside the finaliser

    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_at_next_poll() as pressed:
        Finalised()  # collected at once: its __del__ runs here
        assert pressed.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


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
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(
        [sys.executable, "-m", "pureebm", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
        os.killpg(serve.pid, signal.SIGINT)  # Ctrl-C: the whole group, Valkey included
        remaining = serve.communicate(timeout=60)[0]
    assert "stopped API, workers and Valkey" in remaining
    lines = log.read_text().splitlines()
    assert not [line for line in lines if '"level": "ERROR"' in line or "Traceback" in line]
    assert not [line for line in lines if "restarting" in line]  # Valkey outlived the Ctrl-C
    assert not [line for line in lines if "cleaning registries" in line]  # RQ's chatter
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    for closed in (port, valkey_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", closed), timeout=5).close()


def test_a_download_never_replaces_a_file_unasked_nor_writes_through_a_link(stack, tmp_path, cifar):
    src = tmp_path / "set.zip"
    src.write_bytes(zip_bytes({"0.png": png(cifar["images"][0])}))
    precious, link = tmp_path / "precious.zip", tmp_path / "link.zip"
    precious.write_bytes(b"keep me")
    link.symlink_to(precious)
    with PureEBMClient(stack.url, KEY_A) as client:
        with pytest.raises(FileExistsError, match="--overwrite"):
            client.purify(src, precious, steps=1)  # refused before the upload
        job = client.submit(src, steps=1)
        client.wait(job["id"])
        with pytest.raises(FileExistsError):
            client.download(job["id"], link)
        written = client.download(job["id"], link, overwrite=True)
    assert written == link and not link.is_symlink()
    assert zipfile.ZipFile(link).namelist() == ["0.png"]
    assert precious.read_bytes() == b"keep me"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_a_sent_name_in_any_script_is_kept_and_never_a_path():
    assert sent_name("attachment; filename*=utf-8''donn%C3%A9es.purified.zip", "id") == (
        "données.purified.zip"
    )
    assert sent_name("attachment; filename*=UTF-8''%E7%8C%AB.zip", "id") == "猫.zip"
    assert sent_name('attachment; filename="set.purified.zip"', "id") == "set.purified.zip"
    assert sent_name("attachment; filename*=utf-8''..%2F..%2Fetc%2Fpasswd", "id") == "passwd"
    assert sent_name("attachment; filename*=utf-8''..", "id") == "id"
    assert sent_name("", "id") == "id"
