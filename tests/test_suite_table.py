"""bench/suite_table.py: each defence against each attack above its floor, and its worst case."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from bench.suite_table import main, markdown, suite


def run(
    attack: str, seed: int, measured: dict[str, tuple[float, float]], fraction: float = 0.02
) -> dict:
    """A results.json of one attack at 16/255, target 0: defence -> (accuracy, success)."""
    return {
        "config": {
            "attack": attack,
            "poison_fraction": fraction,
            "classifier": {"architecture": "cnn"},
        },
        "attacks": [{"eps": 16 / 255, "seed": seed, "target": 0, "energy_auroc": 0.8}],
        "rows": [
            {
                "eps": 16 / 255,
                "seed": seed,
                "target": 0,
                "defence": defence,
                "natural_accuracy": accuracy,
                "poison_success": success,
            }
            for defence, (accuracy, success) in measured.items()
        ],
    }


def two_attacks() -> list[dict]:
    return [
        # narcissus: floors 0.30 and 0.50; the filter leaves +0.01 and +0.03 above them
        run(
            "narcissus",
            0,
            {
                "clean": (0.72, 0.30),
                "none": (0.73, 0.60),
                "filt": (0.71, 0.31),
                "jpeg:75": (0.72, 0.50),
            },
        ),
        run(
            "narcissus",
            1,
            {
                "clean": (0.72, 0.50),
                "none": (0.73, 0.70),
                "filt": (0.70, 0.53),
                "jpeg:75": (0.72, 0.60),
            },
        ),
        # blend: the filter leaves +0.01, JPEG +0.05
        run(
            "blend",
            0,
            {
                "clean": (0.72, 0.00),
                "none": (0.73, 0.40),
                "filt": (0.69, 0.01),
                "jpeg:75": (0.73, 0.05),
            },
        ),
    ]


def test_worst_case_is_the_attack_left_most_above_its_floor_paired_run_by_run():
    table = suite(two_attacks())
    assert table["attacks"] == ["narcissus 16/255, 2%", "blend, 2%"]
    cell = table["cells"]["filt"]["narcissus 16/255, 2%"]
    assert cell["above_floor"] == pytest.approx(0.02) and cell["runs"] == 2
    assert cell["accuracy_vs_none"] == pytest.approx(-0.025)
    filt, jpeg = table["worst_case"]["filt"], table["worst_case"]["jpeg:75"]
    assert filt["worst_attack"] == "narcissus 16/255, 2%" and filt["above_floor"] == pytest.approx(
        0.02
    )
    assert filt["lowest_accuracy_vs_none"] == pytest.approx(-0.04)
    assert filt["mean_accuracy_vs_none"] == pytest.approx((-0.025 - 0.04) / 2)
    assert filt["within_floor_bar"] and not filt["within_accuracy_bar"]
    assert not filt["beats_jpeg75"]  # removes more, but costs more accuracy
    assert jpeg["worst_attack"] == "narcissus 16/255, 2%" and jpeg["above_floor"] == pytest.approx(
        0.15
    )
    assert "clean" not in table["cells"]
    assert "| filt | +2.0 +- " in markdown(table)


def test_the_command_writes_the_tables_and_both_charts(tmp_path, monkeypatch):
    folders = []
    for i, result in enumerate(two_attacks()):
        folders.append(tmp_path / f"run{i}")
        folders[-1].mkdir()
        (folders[-1] / "results.json").write_text(json.dumps(result))
    out = tmp_path / "table"
    monkeypatch.setattr(sys, "argv", ["suite_table", *map(str, folders), "--out", str(out)])
    main()
    assert json.loads((out / "results.json").read_text())["attacks"] == [
        "narcissus 16/255, 2%",
        "blend, 2%",
    ]
    for chart in ("suite.png", "worst_case.png"):
        with Image.open(out / chart) as image:
            assert image.size[0] > 300 and len(image.convert("L").getcolors(1 << 16)) > 10


def test_two_different_rows_for_the_same_run_are_refused():
    a = run("blend", 0, {"clean": (0.7, 0.0), "none": (0.7, 0.3)})
    b = run("blend", 0, {"clean": (0.7, 0.0), "none": (0.7, 0.4)})
    with pytest.raises(SystemExit, match="two different runs"):
        suite([a, b])


def test_one_attack_at_two_poison_fractions_is_two_attacks():
    weak = run("patch", 0, {"clean": (0.7, 0.01), "none": (0.7, 0.03)})
    strong = run("patch", 0, {"clean": (0.7, 0.01), "none": (0.7, 0.95)}, fraction=0.1)
    table = suite([weak, strong])
    assert table["attacks"] == ["patch, 2%", "patch, 10%"]
    assert table["worst_case"]["none"]["worst_attack"] == "patch, 10%"
    assert table["worst_case"]["none"]["above_floor"] == pytest.approx(0.94)


def test_a_narcissus_crafted_with_other_steps_is_another_attack():
    published = run("narcissus", 0, {"clean": (0.7, 0.3), "none": (0.7, 0.6)})
    early = run("narcissus", 0, {"clean": (0.7, 0.3), "none": (0.7, 0.5)})
    early["config"]["trigger_steps"] = 60
    assert suite([published, early])["attacks"] == [
        "narcissus 16/255, 2%",
        "narcissus 16/255, 2%, 60 steps",
    ]


def test_a_run_against_another_victim_is_another_attack():
    cnn = run("narcissus", 0, {"clean": (0.7, 0.3), "none": (0.7, 0.6)})
    wide = run("narcissus", 0, {"clean": (0.7, 0.4), "none": (0.7, 0.6)})
    wide["config"]["classifier"]["architecture"] = "cnn-wide"
    assert suite([cnn, wide])["attacks"] == [
        "narcissus 16/255, 2%",
        "narcissus 16/255, 2%, cnn-wide victim",
    ]


def test_a_worst_case_over_part_of_the_suite_says_so():
    runs = two_attacks()
    runs.append(run("patch", 0, {"clean": (0.7, 0.01), "none": (0.7, 0.9), "jpeg:75": (0.7, 0.9)}))
    table = suite(runs)
    assert table["worst_case"]["jpeg:75"]["attacks_measured"] == 3
    assert table["worst_case"]["filt"]["attacks_measured"] == 2
    assert table["worst_case"]["filt"]["within_floor_bar"] is None  # no verdict on a part
    rows = {line.split(" | ")[0]: line for line in markdown(table).splitlines()}
    assert "| narcissus 16/255, 2% (2 of 3 attacks measured) |" in rows["| filt"]
    assert rows["| filt"].endswith("| -4.0 | - |")  # no verdict on part of the suite
    assert "| patch, 2% |" in rows["| jpeg:75"] and "measured" not in rows["| jpeg:75"]
