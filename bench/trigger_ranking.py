"""How well the default filter's energy ranks Narcissus poisons, per trigger
construction: the proxy behind the filter's lever, without training a victim.

    python -m bench.trigger_ranking [--data ../shared/datasets/cifar10-part-train.npz]
        [--attacks narcissus-grid narcissus narcissus-adaptive] [--targets 0 1 2]
        [--eps 16] [--fraction 0.01] [--epochs 10] [--model cifar10-conv:5]
        [--trigger-steps 30 300]

For each construction, crafting budget and target: the surrogate (trained once on the clean set)
gives the trigger, the poisons go into the set, and the model's energy E(x) of
every image is ranked. Printed: AUROC of poisons against clean images, against the
target class's clean images, and the share of poisons a filter of k = 0.5 would
purify (the rest pass through raw); mean and 95% interval over targets. Writes
bench/out/trigger_ranking.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from pureebm.evaluation import attacks
from pureebm.evaluation.classifier import train_classifier
from pureebm.evaluation.config import EvalConfig, TrainSettings
from pureebm.evaluation.defences import as_pictures
from pureebm.evaluation.run import NARCISSUS, auroc
from pureebm.filtering import selected_positions
from pureebm.pipeline import energies_of, scorer_for
from pureebm.registry import Registry
from pureebm.statistics import mean_interval

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--attacks", nargs="+", default=["narcissus-grid", "narcissus", "narcissus-adaptive"]
    )
    parser.add_argument("--targets", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eps", type=float, default=16, help="L-inf bound, in 1/255")
    parser.add_argument("--fraction", type=float, default=0.01, help="poisons, share of the set")
    parser.add_argument("--epochs", type=int, default=10, help="surrogate training epochs")
    parser.add_argument("--model", help="the filter's model (default: the registry's)")
    parser.add_argument(
        "--trigger-steps", type=int, nargs="+", default=[EvalConfig.trigger_steps],
        help="the trigger's optimisation steps, each a construction of its own",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/out/trigger_ranking.json"))
    args = parser.parse_args()

    with np.load(args.data) as npz:
        images, labels = npz["images"], npz["labels"]
    registry = Registry()
    model = registry.load(args.model or registry.default_ref())
    scorer = scorer_for(model, "cpu")
    clean = np.array([e for e, _ in energies_of(scorer, as_pictures(images), 256)])
    surrogate = train_classifier(images, labels, replace(TrainSettings(), epochs=args.epochs))
    rows = []
    constructions = [(name, steps) for name in args.attacks for steps in args.trigger_steps]
    for name, steps in constructions:
        options = dict(NARCISSUS[name])
        if options.pop("evades_energy", False):
            options["energy"] = model.net
        for target in args.targets:
            poisoned = attacks.narcissus(
                images, labels, target, args.eps / 255, args.fraction, 1000 + target,
                surrogate, steps, **options,
            )  # fmt: skip
            chosen = poisoned.poisoned
            energy = clean.copy()
            fresh = energies_of(scorer, as_pictures(poisoned.images[chosen]), 256)
            energy[chosen] = [e for e, _ in fresh]
            others = np.setdiff1d(np.arange(len(images)), chosen)
            same_class = np.setdiff1d(np.flatnonzero(labels == target), chosen)
            purified = set(selected_positions(energy, 0.5))
            rows.append({
                "attack": name, "steps": steps, "target": target, "poisons": len(chosen),
                "auroc": auroc(energy[chosen], energy[others]),
                "auroc_in_class": auroc(energy[chosen], energy[same_class]),
                "purified_share": float(np.mean([i in purified for i in chosen])),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print("\n| construction | steps | AUROC | AUROC within the class | purified at k = 0.5 |")
    print("|---|---|---|---|---|")
    for name, steps in constructions:
        mine = [r for r in rows if r["attack"] == name and r["steps"] == steps]
        cells = [
            mean_interval([r[k] for r in mine])
            for k in ("auroc", "auroc_in_class", "purified_share")
        ]
        print(f"| {name} | {steps} | " + " | ".join(f"{m:.2f} +- {h:.2f}" for m, h in cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
