"""One table from several `pureebm eval` runs of the same attacks.

    python -m bench.eval_table runs/eval-a runs/eval-b [...] --out docs/eval

`pureebm eval` is deterministic on the CPU (seeded attacks, defences and
classifiers), so runs with the same data, attack, strengths, targets, seeds
and classifier train the same undefended and clean classifiers. This checks
that those shared rows are identical, then puts every run's defences side by
side, each PureEBM row named after its run's model, and writes results.json,
results.md and results.png as `pureebm eval` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pureebm.evaluation.defences import is_spec
from pureebm.evaluation.run import draw_results, markdown_table, proxy_agreement, summarise
from pureebm.purifiers import FAMILIES

SHARED = ("none", "clean")


def model_label(spec: str, result: dict) -> str:
    """'pureebm:4' -> 'pureebm:4 cifar10-conv:2'; 'pureebm' gets its run's default T;
    'filt:0.5:3' -> 'filt:0.5:3 cifar10-conv:2'; 'pureddpm:75' -> 'pureddpm:75
    cifar10-ddpm'; 'langevin:steps=5' (the spec grammar, no model=) -> 'langevin:steps=5
    cifar10-conv:2' for a family that runs a model; a ' +test' suffix stays last."""
    defence, plus, test = spec.partition(" +")
    family, _, fields = defence.partition(":")
    if defence.startswith("pureebm"):
        steps = defence.partition(":")[2] or result["purifier"]["steps"]
        defence = f"pureebm:{steps} {result['model']}"
    elif defence.startswith("filt"):
        defence = f"{defence} {result['model']}"
    elif defence.startswith("pureddpm"):
        defence = f"{defence} {result['config']['ddpm_model']}"
    elif is_spec(defence) and FAMILIES[family].needs_model:
        named = any(item.partition("=")[0] == "model" for item in fields.split(","))
        defence = defence if named else f"{defence} {result['model']}"
    return f"{defence}{plus}{test}"


def merge(results: list[dict]) -> dict:
    shared: dict[tuple, dict] = {}
    rows: list[dict] = []
    for result in results:
        for row in result["rows"]:
            key = (row["eps"], row["seed"], row["target"], row["defence"])
            if row["defence"] in SHARED:
                if shared.setdefault(key, row) != row:
                    raise SystemExit(f"runs differ on {key}: not the same attacks")
                if shared[key] is not row:
                    continue  # kept from an earlier run
            rows.append({**row, "defence": model_label(row["defence"], result)})
    names = list(dict.fromkeys(r["defence"] for r in rows))
    rows.sort(key=lambda r: (r["eps"], names.index(r["defence"]), r["seed"], r["target"]))
    summary = summarise(rows)
    return {
        "runs": [r["config"] for r in results],
        "purifiers": {r["model"]: r["purifier"] for r in results},
        "rows": rows,
        "attacks": [a for r in results for a in r.get("attacks", [])],
        "summary": summary,
        "proxy": proxy_agreement(summary),
        "seconds": sum(r["seconds"] for r in results),
    }


def draw_tradeoff(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6.5 * len(summary), 5), squeeze=False)
    for ax, (label, by_defence) in zip(axes[0], summary.items(), strict=True):
        floor = by_defence["clean"]["poison_success_vs_none"]
        for spec, s in by_defence.items():
            if spec == "none":
                x, y, xerr, yerr = 0.0, -floor, 0.0, 0.0
            else:
                x, xerr = s["natural_accuracy_vs_none"], s["natural_accuracy_vs_none_ci"]
                y = s["poison_success_vs_none"] - floor
                yerr = s["poison_success_vs_none_ci"]
            marker = "s" if spec.endswith("+test") else "o"  # squares: test images defended too
            ax.errorbar(100 * x, 100 * y, xerr=100 * xerr, yerr=100 * yerr, fmt=marker, capsize=3)
            ax.annotate(
                spec, (100 * x, 100 * y), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set(
            xlabel="natural accuracy vs no defence (points, paired)",
            ylabel="poison success above the clean floor (points)",
            title=f"eps {label}: better is right and low",
        )
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="`pureebm eval --out` folders")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = [json.loads((run / "results.json").read_text()) for run in args.runs]
    merged = merge(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(merged, indent=2))
    table = markdown_table(merged)
    (args.out / "results.md").write_text(table + "\n")
    c = results[0]["config"]
    strengths = sorted(
        {(eps, r["config"]["poison_fraction"]) for r in results for eps in r["config"]["eps"]}
    )
    poisons = ", ".join(f"{eps * 255:.0f}/255 at {share:.0%} poisons" for eps, share in strengths)
    title = (
        f"{c['attack']} attack ({poisons}), targets {c['targets']}, seeds {c['seeds']}, "
        f"{c['classifier']['architecture']} classifier ({c['classifier']['epochs']} epochs); "
        "mean +- 95% interval; squares: test images defended too"
    )
    draw_results(merged, args.out / "results.png", title)
    draw_tradeoff(merged["summary"], args.out / "tradeoff.png", title)
    print(table)


if __name__ == "__main__":
    main()
