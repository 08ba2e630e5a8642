"""`pureebm purify` and `pureebm models` end to end, as subprocesses."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

from tests.stack import bomb_png


def pureebm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pureebm", *args], capture_output=True, text=True, timeout=300
    )


def test_purify_a_zip_keeps_members_and_changes_pixels(tmp_path, tiny_registry, cifar):
    src = tmp_path / "data.zip"
    with zipfile.ZipFile(src, "w") as archive:
        for i in range(6):
            buffer = io.BytesIO()
            Image.fromarray(cifar["images"][i]).save(buffer, format="PNG")
            archive.writestr(f"class{cifar['labels'][i]}/{i}.png", buffer.getvalue())
        archive.writestr("README.txt", b"not an image")
    out, report = tmp_path / "clean.zip", tmp_path / "report.json"
    result = pureebm(
        "purify",
        str(src),
        "-o",
        str(out),
        "--registry",
        str(tiny_registry),
        "--model",
        "tiny:1",
        "--steps",
        "5",
        "--seed",
        "0",
        "--report",
        str(report),
    )
    assert result.returncode == 0, result.stderr
    assert "purified 6 images" in result.stdout and "images/s" in result.stdout
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        assert b.read("README.txt") == b"not an image"
        for name in a.namelist()[:-1]:
            before = np.asarray(Image.open(io.BytesIO(a.read(name))))
            after = np.asarray(Image.open(io.BytesIO(b.read(name))))
            assert before.shape == after.shape and not np.array_equal(before, after)
    assert len(__import__("json").loads(report.read_text())) == 6


def test_models_lists_the_registry_and_errors_are_clear(tmp_path, tiny_registry):
    listing = pureebm("models", "--registry", str(tiny_registry))
    assert listing.returncode == 0 and listing.stdout.startswith("tiny:1")
    shipped = pureebm("models").stdout.splitlines()  # the repo's registry
    defaults = [line.split()[0] for line in shipped if "(default)" in line]
    newest = max(
        int(line.split()[0].split(":")[1]) for line in shipped if line.startswith("cifar10-conv:")
    )
    assert defaults == [f"cifar10-conv:{newest}"]  # the default name's highest version only
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    result = pureebm(
        "purify",
        str(bad),
        "-o",
        str(tmp_path / "o.zip"),
        "--registry",
        str(tiny_registry),
        "--model",
        "tiny",
    )
    assert result.returncode != 0 and "corrupt zip" in result.stderr
    assert not (tmp_path / "o.zip").exists()


def test_a_decompression_bomb_is_one_clear_line_not_a_traceback(tmp_path, tiny_registry):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    out = tmp_path / "o.png"
    result = pureebm(
        "purify", str(bomb), "-o", str(out), "--registry", str(tiny_registry), "--model", "tiny"
    )
    assert result.returncode != 0 and "decompression bomb" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
