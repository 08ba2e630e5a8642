"""`pureebm purify` and `pureebm models` end to end, as subprocesses."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA
from tests.stack import bomb_png


def pureebm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pureebm", *args], capture_output=True, text=True, timeout=300
    )


def write_zip(path, cifar, count: int) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(cifar["images"][i]).save(buffer, format="PNG")
            archive.writestr(f"class{cifar['labels'][i]}/{i}.png", buffer.getvalue())
        archive.writestr("README.txt", b"not an image")


def test_purify_a_zip_keeps_members_and_changes_pixels(tmp_path, tiny_registry, cifar):
    src = tmp_path / "data.zip"
    write_zip(src, cifar, 6)
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
    assert "purified 6 of 6 images" in result.stdout and "images/s" in result.stdout
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        assert b.read("README.txt") == b"not an image"
        for name in a.namelist()[:-1]:
            before = np.asarray(Image.open(io.BytesIO(a.read(name))))
            after = np.asarray(Image.open(io.BytesIO(b.read(name))))
            assert before.shape == after.shape and not np.array_equal(before, after)
    assert len(json.loads(report.read_text())) == 6


def test_a_filter_purifies_the_highest_energy_half_and_copies_the_rest(
    tmp_path, tiny_registry, cifar
):
    src = tmp_path / "data.zip"
    write_zip(src, cifar, 7)
    outputs = {}
    for name, extra in (("all", []), ("half", ["--filter", "0.5"])):
        outputs[name], report = tmp_path / f"{name}.zip", tmp_path / f"{name}.json"
        common = ["--registry", str(tiny_registry), "--model", "tiny:1", "--steps", "3"]
        args = ["purify", str(src), "-o", str(outputs[name]), *common, "--seed", "4"]
        result = pureebm(*args, "--report", str(report), *extra)
        assert result.returncode == 0, result.stderr
    rows = json.loads(report.read_text())
    assert "purified 4 of 7 images" in result.stdout  # ceil(0.5 * 7)
    assert "100%" in result.stderr and "4/4" in result.stderr  # the bar ends full
    assert len(rows) == 7 and sum(row["purified"] for row in rows) == 4
    ranked = sorted(rows, key=lambda row: -row["energy_before"])
    assert {row["name"] for row in ranked[:4]} == {row["name"] for row in rows if row["purified"]}
    with (
        zipfile.ZipFile(src) as a,
        zipfile.ZipFile(outputs["all"]) as every,
        zipfile.ZipFile(outputs["half"]) as half,
    ):
        assert a.namelist() == half.namelist()
        for row in rows:  # each image once: purified as without a filter, or as sent
            expected = every if row["purified"] else a
            assert half.read(row["name"]) == expected.read(row["name"])
            assert row["purified"] == (half.read(row["name"]) != a.read(row["name"]))


def test_filter_auto_needs_a_calibrated_threshold(tmp_path, tiny_registry, cifar):
    src = tmp_path / "data.zip"
    write_zip(src, cifar, 2)
    args = ["--registry", str(tiny_registry), "--model", "tiny:1", "--filter", "auto"]
    result = pureebm("purify", str(src), "-o", str(tmp_path / "out.zip"), *args)
    assert result.returncode != 0 and "no calibrated energy threshold" in result.stderr
    assert not (tmp_path / "out.zip").exists()
    bad = pureebm("purify", str(src), "-o", str(tmp_path / "out.zip"), "--filter", "1.5")
    assert bad.returncode == 1 and "filter is a fraction 0 < k <= 1" in bad.stderr


def test_models_lists_the_registry_and_errors_are_clear(tmp_path, tiny_registry):
    listing = pureebm("models", "--registry", str(tiny_registry))
    assert listing.returncode == 0 and listing.stdout.startswith("tiny:1")
    shipped = pureebm("models").stdout.splitlines()  # the repo's registry
    defaults = [line.split()[0] for line in shipped if "(default)" in line]
    assert defaults == ["standard:1"]  # one line marked, the DEFAULT file's
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


def test_a_models_default_filter_applies_unless_the_caller_asks_for_every_image(
    tmp_path, tiny_registry, cifar
):
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    pinned = ["--eps", "0.01", "--tau", "0.0005", "--steps", "3", "--filter", "0.5"]
    registered = pureebm(
        "calibrate", "tiny:1", str(DATA), "--images", "4", "--registry", str(root), *pinned
    )
    assert registered.returncode == 0, registered.stderr
    src = tmp_path / "data.zip"
    write_zip(src, cifar, 7)
    common = ["-o", str(tmp_path / "out.zip"), "--registry", str(root), "--model", "tiny"]
    default = pureebm("purify", str(src), *common)
    assert default.returncode == 0, default.stderr
    assert "purified 4 of 7 images" in default.stdout  # the model's filter 0.5
    every = pureebm("purify", str(src), *common, "--filter", "1", "--overwrite")
    assert "purified 7 of 7 images" in every.stdout, every.stderr


def test_every_option_of_every_command_has_a_help_text() -> None:
    from pureebm.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert not missing, missing


def test_the_cli_finds_the_registry_that_pureebm_registry_names(tiny_registry) -> None:
    """As the service does: an installed wheel has no models/ beside its code."""
    env = {**os.environ, "PUREEBM_REGISTRY": str(tiny_registry)}
    listed = subprocess.run(
        [sys.executable, "-m", "pureebm", "models"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0 and listed.stdout.startswith("tiny:1"), listed.stderr


def test_output_is_a_file_or_a_folder_and_its_extension_must_fit_the_input(
    tmp_path, tiny_registry, cifar
):
    src = tmp_path / "train.zip"
    write_zip(src, cifar, 2)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(cifar["images"][0]).save(folder / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("mine")
    common = ("--registry", str(tiny_registry), "--model", "tiny", "--steps", "1")

    into_folder = pureebm("purify", str(src), "-o", str(tmp_path / "out"), *common)
    assert into_folder.returncode == 0, into_folder.stderr
    assert zipfile.ZipFile(tmp_path / "out" / "train.purified.zip").namelist() == (
        zipfile.ZipFile(src).namelist()
    )
    beside = pureebm("purify", str(folder), *common)  # no -o: beside the input
    assert beside.returncode == 0, beside.stderr
    assert (tmp_path / "images.purified" / "a.png").exists()
    again = pureebm("purify", str(folder), "-o", str(tmp_path / "images.purified"), *common)
    assert again.returncode == 0  # an existing folder: written into it
    assert (tmp_path / "images.purified" / "images.purified" / "a.png").exists()
    refused = {
        "a zip named .tar": pureebm("purify", str(src), "-o", str(tmp_path / "o.tar"), *common),
        "an image named .zip": pureebm(
            "purify", str(folder / "a.png"), "-o", str(tmp_path / "o.zip"), *common
        ),
        "a folder named .zip": pureebm(
            "purify", str(folder), "-o", str(tmp_path / "o.zip"), *common
        ),
        "no such input": pureebm("purify", str(tmp_path / "nosuch.zip"), *common),
    }
    for what, result in refused.items():
        assert result.returncode != 0, what
        assert result.stderr.startswith("pureebm: ") and "Traceback" not in result.stderr, what
    assert not any((tmp_path / name).exists() for name in ("o.tar", "o.zip"))
    assert (tmp_path / "out" / "kept.txt").read_text() == "mine"


def test_a_named_preset_purifies_as_its_source_with_those_parameters(
    tmp_path, tiny_registry, cifar
):
    root = tmp_path / "registry"
    shutil.copytree(tiny_registry, root)
    registry = ["--registry", str(root)]
    strong = pureebm("preset", "strong", "--from", "tiny", "--steps", "5", "--filter", "0.5",
                     "--description", "harder", *registry)  # fmt: skip
    light = pureebm("preset", "light", "--purifier", "jpeg", "--quality", "60", *registry)
    assert strong.returncode == 0 and light.returncode == 0, strong.stderr + light.stderr
    assert "registered strong:1 from tiny:1" in strong.stdout
    presets = {m["name"]: m for m in json.loads(pureebm("models", "--json", *registry).stdout)}
    assert presets["strong"]["weights"] == presets["tiny"]["weights"]  # stored once
    assert presets["strong"]["purifier"]["steps"] == 5 and presets["strong"]["filter"] == 0.5
    assert presets["strong"]["energy_threshold"] == presets["tiny"]["energy_threshold"]
    assert presets["strong"]["derived_from"] == "tiny:1"
    assert presets["light"]["weights"] is None and presets["light"]["derived_from"] is None
    assert presets["light"]["purifier"] == {"family": "jpeg", "quality": 60}

    src = tmp_path / "data.zip"
    write_zip(src, cifar, 6)

    def purified(name: str, *options: str) -> dict[str, bytes]:
        out = tmp_path / f"{name}.zip"
        done = pureebm("purify", str(src), "-o", str(out), "--seed", "3", *registry, *options)
        assert done.returncode == 0, done.stderr
        with zipfile.ZipFile(out) as archive:
            return {n: archive.read(n) for n in archive.namelist()}

    assert purified("a", "--model", "strong") == purified(
        "b", "--model", "tiny", "--steps", "5", "--filter", "0.5"
    )
    assert purified("c", "--model", "light") == purified(
        "d", "--purifier", "jpeg", "--quality", "60", "--model", "tiny"
    )
    for refused, named in (
        (("preset", "x", "--from", "tiny", "--steps", "0.5"), "steps"),
        (("preset", "Bad Name", "--from", "tiny"), "name"),
        (("purify", str(src), "--model", "light", "--filter", "0.5"), "no model to rank"),
    ):
        result = pureebm(*refused, *registry)
        assert result.returncode != 0 and named in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the with ends


MISTAKES = {  # what a user types -> a piece of the one line the CLI answers with
    "purify a missing file": (["purify", "{tmp}/nothere.zip"], "no such file"),
    "purify onto its input": (["purify", "{tmp}/in.zip", "-o", "{tmp}/in.zip"], "is the input"),
    "purify onto a file": (["purify", "{tmp}/in.zip", "-o", "{tmp}/taken.zip"], "--overwrite"),
    "a mistyped option": (["purify", "{tmp}/in.zip", "--modle", "m"], "did you mean --model"),
    "submit a missing file": (["submit", "{tmp}/nothere.zip"], "no such file"),
    "submit a folder": (["submit", "{tmp}"], "is a folder"),
    "submit with no service": (["submit", "{tmp}/in.zip", "--url", "{closed}"], "cannot reach"),
    "jobs with no service": (["jobs", "--url", "{closed}"], "cannot reach"),
    "status with no service": (["status", "abc", "--url", "{closed}"], "cannot reach"),
    "wait with no service": (["wait", "abc", "--url", "{closed}"], "cannot reach"),
    "report with no service": (["report", "abc", "--url", "{closed}"], "cannot reach"),
    "cancel with no service": (["cancel", "abc", "--url", "{closed}"], "cannot reach"),
    "download with no service": (["download", "abc", "--url", "{closed}"], "cannot reach"),
    "eval a missing file": (["eval", "{tmp}/nothere.npz"], "nothere.npz"),
    "train on a missing file": (["train", "{tmp}/nothere.npz"], "nothere.npz"),
    "models from a missing registry": (["models", "--registry", "{tmp}/none"], "none"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_every_common_mistake_gets_one_line_and_no_traceback(tmp_path, cifar, case):
    write_zip(tmp_path / "in.zip", cifar, 2)
    (tmp_path / "taken.zip").write_bytes(b"precious")
    args, expected = MISTAKES[case]
    filled = [a.format(tmp=tmp_path, closed=closed_port()) for a in args]
    done = pureebm(*filled)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr, done.stderr
    assert (tmp_path / "taken.zip").read_bytes() == b"precious"


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`pureebm models --json | head -c 1`: the pipe closes before the CLI writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pureebm", "models", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr


def test_the_service_url_comes_from_pureebm_url(tmp_path):
    url = closed_port()
    done = subprocess.run(
        [sys.executable, "-m", "pureebm", "jobs"], capture_output=True, text=True,
        env={**os.environ, "PUREEBM_URL": url}, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and url in done.stderr, done.stderr
