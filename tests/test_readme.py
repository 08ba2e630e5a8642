"""The README's curl and client examples, run as they stand against a real server, so
they cannot drift from what the service does."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.stack import Stack

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_registry):
    stack = Stack(tmp_path_factory.mktemp("readme"), tiny_registry, api_key_hashes="[]")
    stack.start_worker()
    yield stack
    stack.stop()


def run(code: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PUREEBM_URL": url, "PYTHON": sys.executable,
           "WORK": str(cwd)}  # fmt: skip
    return subprocess.run(code, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_readme_shows_two_shell_examples_and_one_python_example() -> None:
    assert len(blocks("sh")) == 2 and len(blocks("python")) == 1
    assert "steps=150" not in README.read_text()  # far outside the default's calibration
    assert len(README.read_text().splitlines()) <= 300


def test_the_curl_job_example_submits_polls_downloads_and_deletes(stack, tmp_path) -> None:
    result = run(["bash", "-euo", "pipefail", "-c", blocks("sh")[0]], tmp_path, stack.url)
    assert result.returncode == 0, result.stderr
    sent = zipfile.ZipFile(tmp_path / "train.zip")
    back = zipfile.ZipFile(tmp_path / "train.purified.zip")
    with sent, back:
        assert back.namelist() == sent.namelist()
        changed = [
            not np.array_equal(
                np.asarray(Image.open(sent.open(name))), np.asarray(Image.open(back.open(name)))
            )
            for name in sent.namelist()
            if name.endswith(".png")
        ]
    assert len(changed) == 16 and all(changed)  # the tiny model's preset has no filter
    assert '"energy_before"' in result.stdout  # the report was printed


def test_a_mistyped_field_stops_the_curl_example_with_the_services_answer(stack, tmp_path):
    mistyped = blocks("sh")[0].replace("-F archive=@", "-F archiv=@")
    result = run(["bash", "-c", mistyped], tmp_path, stack.url)
    assert result.returncode != 0 and "archiv" in result.stdout + result.stderr
    assert not (tmp_path / "train.purified.zip").exists()


def test_the_curl_purify_example_answers_a_png_and_a_zip(stack, tmp_path) -> None:
    result = run(["bash", "-euo", "pipefail", "-c", blocks("sh")[1]], tmp_path, stack.url)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "cat.purified.png").size == (32, 32)
    with zipfile.ZipFile(tmp_path / "purified.zip") as archive:
        assert archive.namelist() == ["a.jpg", "b.png"]


def test_the_python_client_example_runs(stack, tmp_path) -> None:
    result = run([sys.executable, "-c", blocks("python")[0]], tmp_path, stack.url)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"job [0-9a-f]{32} finished: 8 of 16 purified\n", result.stdout)
