"""The tree that travels to a lent GPU stays under its limit (bench/travel_size.py)."""

from __future__ import annotations

import subprocess

import pytest

from bench.travel_size import LIMIT_MIB, ROOT, size_mib


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_tree_that_travels_fits_a_visit() -> None:
    assert size_mib() <= LIMIT_MIB


def test_the_size_counts_tracked_and_unignored_files_and_what_is_carried(tmp_path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n.whl/\n")
    for name, size in {"tracked.bin": 2**20, "new.bin": 2**20, "ignored/a.bin": 2**20,
                       ".whl/w.whl": 2**20}.items():  # fmt: skip
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * size)
    git("add", "tracked.bin", ".gitignore")
    assert size_mib(tmp_path) == pytest.approx(2, abs=0.01)
    assert size_mib(tmp_path, [".whl"]) == pytest.approx(3, abs=0.01)
