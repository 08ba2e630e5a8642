"""How well training dynamics find the poisons a purifier cannot clean: on the outside
evaluation's construction (narcissus-pgd, the outside victim recipe), the AUROC of
candidate per-image scores against clean images and within the target class.

    python -m bench.dynamics_ranking [--targets 0 1 2] [--seeds 1] [--epochs 6]
        [--architecture cnn] [--fraction 0.0094] [--out bench/out/dynamics_ranking.json]

A classifier is trained on the poisoned set as sent (labels included), and after
each epoch every image's cross-entropy loss (no augmentation) and penultimate
features are read. Scores, higher meaning more suspicious:

- ``loss@k``: minus the loss after epoch k, standardised within the image's class:
  poisons carry a shortcut, so they are learnt first (Anti-Backdoor Learning);
- ``mean-loss``: the same over the epochs' mean;
- ``spectral@k``: the spectral signature (Tran et al., 2018), the squared projection
  of an image's centred penultimate features on the top singular vector of its class's;
- ``energy``: the default model's energy, what the filter ranks by today; and the
  share of poisons, of the target class's clean images and of the other classes'
  images that the default's filter (k = 0.5) purifies.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pureebm.evaluation import attacks
from pureebm.evaluation.classifier import to_tensor, train_classifier
from pureebm.evaluation.config import RECIPES, SURROGATE_EPOCHS, TrainSettings
from pureebm.evaluation.data import load_labelled, stratified_split
from pureebm.evaluation.defences import as_pictures
from pureebm.evaluation.run import auroc
from pureebm.filtering import selected_positions
from pureebm.pipeline import energies_of, scorer_for
from pureebm.registry import Registry
from pureebm.statistics import mean_interval

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-part-train.npz"


@torch.no_grad()
def losses_and_features(net: nn.Module, images: np.ndarray, labels: np.ndarray):
    """Each image's loss and its penultimate features (the input of the last layer)."""
    device = next(net.parameters()).device
    features: list[torch.Tensor] = []
    hook = net[-1].register_forward_hook(lambda m, args, out: features.append(args[0].cpu()))
    losses = []
    for start in range(0, len(images), 512):
        x = to_tensor(images[start : start + 512]).to(device)
        y = torch.from_numpy(labels[start : start + 512]).to(device)
        losses.append(F.cross_entropy(net(x), y, reduction="none").cpu())
    hook.remove()
    return torch.cat(losses).numpy(), torch.cat(features).numpy()


def within_class(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``values`` standardised within each class."""
    out = np.empty_like(values, dtype=np.float64)
    for c in np.unique(labels):
        members = labels == c
        v = values[members]
        out[members] = (v - v.mean()) / max(v.std(), 1e-12)
    return out


def spectral(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Squared projection on the top singular vector of the class's centred features."""
    out = np.empty(len(features))
    for c in np.unique(labels):
        members = labels == c
        centred = features[members] - features[members].mean(0)
        top = np.linalg.svd(centred, full_matrices=False)[2][0]
        out[members] = (centred @ top) ** 2
    return within_class(out, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--targets", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--epochs", type=int, default=6, help="the dynamics classifier's")
    parser.add_argument("--architecture", default="cnn", help="the dynamics classifier")
    parser.add_argument("--fraction", type=float, default=0.0094, help="poisons, of the set")
    parser.add_argument("--eps", type=float, default=16, help="L-inf bound, in 1/255")
    parser.add_argument("--out", type=Path, default=Path("bench/out/dynamics_ranking.json"))
    args = parser.parse_args()

    images, labels = load_labelled(args.data)
    train_x, train_y, _, _ = stratified_split(images, labels, 0.2, 0)  # as pureebm eval
    outside = TrainSettings(**RECIPES["outside"])  # type: ignore[arg-type]
    surrogate = train_classifier(
        train_x, train_y, replace(outside, epochs=SURROGATE_EPOCHS["outside"], seed=0)
    )
    registry = Registry()
    scorer = scorer_for(registry.load(registry.default_ref()), "cpu")
    clean_energy = np.array([e for e, _ in energies_of(scorer, as_pictures(train_x), 256)])
    rows = []
    for seed in args.seeds:
        for target in args.targets:
            poisoned = attacks.narcissus_pgd(
                train_x, train_y, target, args.eps / 255, args.fraction, seed * 1000 + target,
                surrogate, 300,
            )  # fmt: skip
            x, y, chosen = poisoned.images, poisoned.labels, poisoned.poisoned
            scores: dict[str, np.ndarray] = {}
            energy = clean_energy.copy()
            fresh = energies_of(scorer, as_pictures(x[chosen]), 256)
            energy[chosen] = [e for e, _ in fresh]
            scores["energy"] = energy
            filtered = np.zeros(len(x), bool)
            filtered[selected_positions(energy, 0.5)] = True  # the default's filter
            target_clean = np.setdiff1d(np.flatnonzero(y == target), chosen)
            others_clean = np.flatnonzero(y != target)
            shares = {
                "poisons": float(filtered[chosen].mean()),
                "target_clean": float(filtered[target_clean].mean()),
                "other_classes": float(filtered[others_clean].mean()),
            }
            rows.append({"seed": seed, "target": target, "filter_0.5_purifies": shares})
            print(f"seed {seed} target {target} filter 0.5 purifies: " + ", ".join(
                f"{k} {v:.0%}" for k, v in shares.items()), flush=True)  # fmt: skip
            per_epoch: list[np.ndarray] = []

            def record(
                net: nn.Module, epoch: int, x=x, y=y, per_epoch=per_epoch, scores=scores
            ) -> None:
                loss, features = losses_and_features(net, x, y)
                per_epoch.append(loss)
                scores[f"loss@{epoch}"] = within_class(-loss, y)
                scores[f"spectral@{epoch}"] = spectral(features, y)

            settings = TrainSettings(architecture=args.architecture, epochs=args.epochs, seed=seed)
            train_classifier(x, y, settings, on_epoch=record)
            scores["mean-loss"] = within_class(-np.mean(per_epoch, axis=0), y)
            clean = np.setdiff1d(np.arange(len(x)), chosen)
            same_class = np.setdiff1d(np.flatnonzero(y == target), chosen)
            for name, score in scores.items():
                row = {
                    "seed": seed, "target": target, "score": name, "poisons": len(chosen),
                    "auroc": auroc(score[chosen], score[clean]),
                    "auroc_in_class": auroc(score[chosen], score[same_class]),
                }  # fmt: skip
                rows.append(row)
                print(f"seed {seed} target {target} {name:<12} AUROC {row['auroc']:.3f}, "
                      f"in class {row['auroc_in_class']:.3f}", flush=True)  # fmt: skip
    print("\nscore          AUROC (mean, 95%)      in the target class")
    scored = [row for row in rows if "score" in row]
    for name in dict.fromkeys(row["score"] for row in scored):
        chosen_rows = [row for row in scored if row["score"] == name]
        a = mean_interval([row["auroc"] for row in chosen_rows])
        b = mean_interval([row["auroc_in_class"] for row in chosen_rows])
        print(f"{name:<14} {a[0]:.3f} +- {a[1]:.3f}        {b[0]:.3f} +- {b[1]:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
