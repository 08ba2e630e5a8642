"""bench/eval_table.py: runs of the same attacks side by side, shared rows checked."""

from __future__ import annotations

import pytest

from bench.eval_table import merge


def run(model: str, steps: int, rows: dict[str, float], none_accuracy: float = 0.5) -> dict:
    """A results.json of one attack (eps 16/255, seed 0, target 0)."""
    common = {"eps": 16 / 255, "seed": 0, "target": 0, "base_rate": 0.05}
    measured = {"none": none_accuracy, "clean": 0.52, **rows}
    return {
        "model": model,
        "purifier": {"steps": steps, "eps": 0.01, "tau": 0.004, "init_noise": 0.0},
        "config": {"model": model.split(":")[0]},
        "seconds": 10.0,
        "rows": [
            {**common, "defence": d, "natural_accuracy": a, "poison_success": 0.3}
            for d, a in measured.items()
        ],
    }


def test_defences_of_each_run_are_named_after_its_model_and_shared_rows_kept_once():
    a = run("m:3", 2, {"jpeg:75": 0.48, "pureebm": 0.40, "pureebm:1": 0.45})
    b = run("m:2", 5, {"pureebm": 0.44, "pureebm:2": 0.47, "pureddpm:75 +test": 0.46})
    b["config"]["ddpm_model"] = "d"
    merged = merge([a, b])
    names = [r["defence"] for r in merged["rows"]]
    assert names == [
        "none",
        "clean",
        "jpeg:75",
        "pureebm:2 m:3",
        "pureebm:1 m:3",
        "pureebm:5 m:2",
        "pureebm:2 m:2",
        "pureddpm:75 d +test",
    ]
    paired = merged["summary"]["16/255"]["pureebm:5 m:2"]["natural_accuracy_vs_none"]
    assert paired == pytest.approx(0.44 - 0.5)
    assert merged["seconds"] == 20.0


def test_runs_whose_shared_rows_differ_are_refused():
    with pytest.raises(SystemExit, match="differ"):
        merge([run("m:3", 2, {}), run("m:2", 5, {}, none_accuracy=0.51)])
