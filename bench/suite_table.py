"""One table of the attack suite: every defence against every attack, and its worst case.

    python -m bench.suite_table runs/suite/* --out docs/eval/suite

Each folder is a `pureebm eval --out` of one attack (or its results.json) (any seeds, targets and
strengths); folders of the same attack and poison fraction are pooled. For each defence and attack,
poison success is taken above the clean floor run by run (the same attack, seed
and target, so the floor's own spread cancels), with its mean and 95% interval;
natural accuracy is paired with no defence the same way. A defence's worst case
is the attack it leaves the most above the floor: a defence meant to be
universal is judged on that row, never on a mean over attacks. The bar a default
must clear (issue 25): at most 3 points above the floor for every attack, at most
2 points of accuracy below no defence, and better than JPEG q75 on both.
Writes results.json, results.md, suite.png (a heat map of the same table) and
worst_case.png (each defence's worst case against its accuracy cost).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from pureebm.evaluation.config import UNBOUNDED_ATTACKS, EvalConfig, TrainSettings
from pureebm.statistics import mean_interval

FLOOR_BAR = 0.03  # poison success above the clean floor, every attack
ACCURACY_BAR = 0.02  # natural accuracy below no defence
BARS = ("within_floor_bar", "within_accuracy_bar", "beats_jpeg75")


def attack_label(config: dict, eps: float) -> str:
    """'narcissus 16/255, 2%': one attack at one strength and one poison fraction, then what
    differs from the defaults (the trigger's crafting budget, the victim)."""
    share = f"{100 * config['poison_fraction']:g}%"
    if config["attack"] in UNBOUNDED_ATTACKS:
        label = f"{config['attack']}, {share}"
    else:
        label = f"{config['attack']} {eps * 255:.0f}/255, {share}"
    steps = config.get("trigger_steps", EvalConfig.trigger_steps)
    if config["attack"].startswith("narcissus") and steps != EvalConfig.trigger_steps:
        label += f", {steps} steps"
    victim = config["classifier"]["architecture"]
    if victim != TrainSettings.architecture:
        label += f", {victim} victim"
    return label


def pooled_rows(results: list[dict]) -> dict[str, list[dict]]:
    """Rows by attack label, each run's rows once (a run kept by two folders is an error)."""
    by_attack: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for result in results:
        for row in result["rows"]:
            label = attack_label(result["config"], row["eps"])
            key = (row["seed"], row["target"], row["defence"])
            if key in by_attack[label] and by_attack[label][key] != row:
                raise SystemExit(f"{label}: two different runs of {key}")
            by_attack[label][key] = row
    return {label: list(rows.values()) for label, rows in by_attack.items()}


def paired(rows: list[dict], spec: str, reference: str, key: str) -> tuple[float, float, int]:
    """Mean and interval of ``spec``'s ``key`` minus ``reference``'s, run by run."""
    ref = {(r["seed"], r["target"]): r[key] for r in rows if r["defence"] == reference}
    differences = [
        r[key] - ref[r["seed"], r["target"]]
        for r in rows
        if r["defence"] == spec and (r["seed"], r["target"]) in ref
    ]
    if not differences:
        return float("nan"), float("nan"), 0
    return (*mean_interval(differences), len(differences))


def suite(results: list[dict]) -> dict:
    by_attack = pooled_rows(results)
    defences = list(dict.fromkeys(r["defence"] for rows in by_attack.values() for r in rows))
    defences.remove("clean")
    cells: dict[str, dict[str, dict]] = {}
    for spec in defences:
        cells[spec] = {}
        for label, rows in by_attack.items():
            above, above_ci, runs = paired(rows, spec, "clean", "poison_success")
            accuracy, accuracy_ci, _ = paired(rows, spec, "none", "natural_accuracy")
            if runs:
                cells[spec][label] = {
                    "above_floor": above,
                    "above_floor_ci": above_ci,
                    "accuracy_vs_none": accuracy,
                    "accuracy_vs_none_ci": accuracy_ci,
                    "runs": runs,
                }
    worst = {
        spec: max(by.items(), key=lambda item: item[1]["above_floor"]) for spec, by in cells.items()
    }
    jpeg = worst.get("jpeg:75")
    verdicts = {}
    for spec, (label, cell) in worst.items():
        accuracies = [c["accuracy_vs_none"] for c in cells[spec].values()]
        accuracy = min(accuracies)
        verdicts[spec] = {
            "worst_attack": label,
            "attacks_measured": len(cells[spec]),
            **cell,
            "lowest_accuracy_vs_none": accuracy,
            "mean_accuracy_vs_none": sum(accuracies) / len(accuracies),
            "within_floor_bar": cell["above_floor"] <= FLOOR_BAR,
            "within_accuracy_bar": accuracy >= -ACCURACY_BAR,
            "beats_jpeg75": jpeg is not None
            and spec != "jpeg:75"
            and cell["above_floor"] < jpeg[1]["above_floor"]
            and accuracy > min(c["accuracy_vs_none"] for c in cells["jpeg:75"].values()),
        }
        if len(cells[spec]) < len(by_attack):  # the bars are judged on the whole suite only
            verdicts[spec] |= dict.fromkeys(BARS)
    return {
        "attacks": list(by_attack),
        "cells": cells,
        "worst_case": verdicts,
        "runs": [r["config"] for r in results],
        "energy_auroc": {
            attack_label(r["config"], a["eps"]): a["energy_auroc"]
            for r in results
            for a in r.get("attacks", [])
        },
    }


def worst_label(verdict: dict, attacks: int) -> str:
    """The worst attack, saying when it is the worst of only some of the suite's attacks."""
    if verdict["attacks_measured"] == attacks:
        return verdict["worst_attack"]
    return (
        f"{verdict['worst_attack']} ({verdict['attacks_measured']} of {attacks} attacks measured)"
    )


def markdown(table: dict) -> str:
    attacks = table["attacks"]

    def pts(value: float, half: float, runs: int) -> str:
        if runs < 2:  # no interval from one run
            return f"{value * 100:+.1f} (1 run)"
        return f"{value * 100:+.1f} +- {half * 100:.1f}"

    lines = [
        "Poison success above the clean floor (points, paired run by run; mean +- 95% "
        "interval over targets and seeds), then natural accuracy against no defence.",
        "",
        "| defence | " + " | ".join(attacks) + " | worst attack | worst above floor "
        "| lowest accuracy vs none | bars (floor, accuracy, beats JPEG q75; on the whole suite) |",
        "|---" * (len(attacks) + 5) + "|",
    ]
    for spec, by in table["cells"].items():
        cells = [
            pts(by[a]["above_floor"], by[a]["above_floor_ci"], by[a]["runs"]) if a in by else "-"
            for a in attacks
        ]
        v = table["worst_case"][spec]
        bars = (
            "-"
            if spec == "none" or v["within_floor_bar"] is None
            else " ".join("yes" if v[k] else "no" for k in BARS)
        )
        lines.append(
            f"| {spec} | " + " | ".join(cells) + f" | {worst_label(v, len(attacks))} | "
            f"{pts(v['above_floor'], v['above_floor_ci'], v['runs'])} | "
            f"{v['lowest_accuracy_vs_none'] * 100:+.1f} | {bars} |"
        )
    lines += ["", "| defence | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
    for spec, by in table["cells"].items():
        cells = [
            pts(by[a]["accuracy_vs_none"], by[a]["accuracy_vs_none_ci"], by[a]["runs"])
            if a in by
            else "-"
            for a in attacks
        ]
        lines.append(f"| {spec} (accuracy vs none) | " + " | ".join(cells) + " |")
    runs = {
        a: max(c["runs"] for c in (by.get(a, {"runs": 0}) for by in table["cells"].values()))
        for a in attacks
    }
    lines += ["", "Runs per attack: " + ", ".join(f"{a} {n}" for a, n in runs.items()) + "."]
    return "\n".join(lines)


def draw(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    attacks, defences = table["attacks"], list(table["cells"])
    values = [
        [100 * table["cells"][d].get(a, {}).get("above_floor", float("nan")) for a in attacks]
        for d in defences
    ]
    fig, ax = plt.subplots(figsize=(1.6 * len(attacks) + 4, 0.6 * len(defences) + 2))
    image = ax.imshow(values, cmap="RdYlGn_r", vmin=-10, vmax=40, aspect="auto")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:+.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(defences)), defences, fontsize=8)
    fig.colorbar(image, label="poison success above the clean floor (points)")
    ax.set_title("attack suite: lower is better, 0 is the clean floor", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_worst_case(table: dict, path: Path) -> None:
    """Each defence's worst case against what it costs: the trade-off a user chooses on."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    for spec, v in table["worst_case"].items():
        if spec == "none":
            ax.axhline(100 * v["above_floor"], color="grey", ls=":", label="no defence")
            continue
        x, y = -100 * v["mean_accuracy_vs_none"], 100 * v["above_floor"]
        low = -100 * v["lowest_accuracy_vs_none"]
        label = f"{spec}\n  worst: {worst_label(v, len(table['attacks']))}"
        bar = ax.errorbar(x, y, yerr=100 * v["above_floor_ci"], fmt="o", capsize=3, label=label)
        ax.plot([x, low], [y, y], color=bar[0].get_color(), lw=0.8)  # to the costliest attack
    ax.axhline(100 * FLOOR_BAR, color="green", ls="--", lw=0.8, label="floor bar (+3)")
    ax.axvline(100 * ACCURACY_BAR, color="green", ls="-.", lw=0.8, label="accuracy bar (2)")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlim(left=0)
    ax.set_xlabel("natural accuracy lost against no defence (points; mean, line to the worst)")
    ax.set_ylabel("worst attack: points above the clean floor")
    ax.set_title("each defence's worst case over the attacks measured (95% interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), labelspacing=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="`pureebm eval --out` folders, or their results.json"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    files = [run if run.suffix == ".json" else run / "results.json" for run in args.runs]
    results = [json.loads(file.read_text()) for file in files]
    table = suite(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(table, indent=2))
    (args.out / "results.md").write_text(markdown(table) + "\n")
    draw(table, args.out / "suite.png")
    draw_worst_case(table, args.out / "worst_case.png")
    print(markdown(table))


if __name__ == "__main__":
    main()
