"""What each attack of `pureebm eval`'s suite costs to craft on this machine.

    python -m bench.attack_cost [--data ../shared/datasets/cifar10-part-train.npz]
        [--attacks narcissus narcissus-adaptive ...] [--eps 16] [--fraction 0.02]

The evaluation's own split and surrogate (the CNN victim's settings, trained once
on the clean training split: its time is printed too), then each attack crafted
once for target 0, seed 0, through `pureebm.evaluation.run.make_attack`, as an
evaluation run crafts it. An evaluation run adds a classifier per defence and the
defences' own cost. Writes bench/out/attack_cost.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pureebm.evaluation.classifier import train_classifier
from pureebm.evaluation.config import ATTACKS, EvalConfig
from pureebm.evaluation.data import load_labelled, stratified_split
from pureebm.evaluation.run import SURROGATE_SEED, make_attack
from pureebm.registry import Registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"
# narcissus-x3 crafts as narcissus does (it amplifies at test only)
SUITE = [a for a in ATTACKS if a not in ("narcissus-x3", "narcissus-grid", "patch-clean")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--attacks", nargs="+", default=SUITE, choices=ATTACKS)
    parser.add_argument("--eps", type=float, default=16, help="L-inf bound, in 1/255")
    parser.add_argument("--fraction", type=float, default=0.02, help="poisons, share of the set")
    parser.add_argument("--out", type=Path, default=Path("bench/out/attack_cost.json"))
    args = parser.parse_args()

    config = EvalConfig(train=str(args.data), poison_fraction=args.fraction)
    images, labels = load_labelled(args.data)
    train_x, train_y, test_x, test_y = stratified_split(
        images, labels, config.test_fraction, config.split_seed
    )
    started = time.perf_counter()
    settings = replace(config.classifier, seed=SURROGATE_SEED)
    surrogate = train_classifier(train_x, train_y, settings)
    costs = {"surrogate": time.perf_counter() - started}
    print(f"{'surrogate (as one victim trains)':<34} {costs['surrogate']:7.1f} s")
    energy = Registry().load(Registry().default_ref()).net  # what the adaptive attack evades
    for attack in args.attacks:
        started = time.perf_counter()
        poisoned = make_attack(
            replace(config, attack=attack), train_x, train_y, 0, args.eps / 255, 0,
            surrogate, energy, test_x, test_y,
        )  # fmt: skip
        costs[attack] = time.perf_counter() - started
        print(f"{attack:<34} {costs[attack]:7.1f} s  ({len(poisoned.poisoned)} poisons)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setup = {
        "train_images": len(train_x), "eps": args.eps, "fraction": args.fraction,
        "threads": torch.get_num_threads(), "seconds": costs,
    }  # fmt: skip
    args.out.write_text(json.dumps(setup, indent=2))


if __name__ == "__main__":
    main()
