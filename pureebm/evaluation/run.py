"""`pureebm eval`: attack, defend, train, measure; write JSON, a Markdown table and PNGs."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from pureebm.evaluation import attacks, defences
from pureebm.evaluation.classifier import predict, train_classifier
from pureebm.evaluation.config import ATTACKS, EvalConfig
from pureebm.evaluation.data import load_labelled, stratified_split
from pureebm.registry import Registry


def make_attack(
    config: EvalConfig,
    images: np.ndarray,
    labels: np.ndarray,
    target: int,
    eps: float,
    seed: int,
    surrogate: nn.Module,
) -> attacks.Poisoned:
    seed = seed * 1000 + target
    if config.attack == "narcissus":
        return attacks.narcissus(
            images, labels, target, eps, config.poison_fraction, seed, surrogate
        )
    if config.attack in ("patch", "patch-clean"):
        return attacks.patch(
            images,
            labels,
            target,
            config.poison_fraction,
            seed,
            clean_label=config.attack == "patch-clean",
        )
    if config.attack == "blend":
        return attacks.blend(images, labels, target, config.poison_fraction, seed)
    raise ValueError(f"unknown attack {config.attack!r} (known: {', '.join(ATTACKS)})")


def pureebm_steps(spec: str, default: int) -> int | None:
    """'pureebm:150' -> 150; 'pureebm' -> the model's default T; others -> None."""
    name, _, steps = spec.partition(":")
    return int(steps or default) if name == "pureebm" else None


def t_quantile(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    table = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    return table.get(dof, 2.23 if dof < 15 else 2.09 if dof < 30 else 1.96)


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for a single value)."""
    if len(values) < 2:
        return float(np.mean(values)), 0.0
    half = t_quantile(len(values) - 1) * np.std(values, ddof=1) / len(values) ** 0.5
    return float(np.mean(values)), float(half)


class Defender:
    """Applies each defence to a training set.

    The defender does not know which images are poisoned, so a defence runs on
    the whole set. Defences act on each image alone, so the clean training
    images' results are computed once and only the poisoned images are defended
    again for each attack: the same distribution of outputs as defending every
    set in full, at a fraction of the cost. PureEBM runs through
    ``pureebm.pipeline`` (or a running service), the path the product runs.
    """

    def __init__(self, config: EvalConfig, clean_train: np.ndarray) -> None:
        self.config = config
        self.model = None if config.url else Registry(config.registry).load(config.model)
        manifest = (
            self.model.manifest if self.model else Registry(config.registry).manifest(config.model)
        )
        self.model_ref = f"{manifest.name}:{manifest.version}"
        self.default_steps = manifest.langevin.steps
        self.params = manifest.langevin
        self.specs = list(
            dict.fromkeys([*config.defences, *(f"pureebm:{t}" for t in config.sweep)])
        )
        self.clean = self.apply_all(clean_train)

    def apply_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every defence applied to ``images``; the PureEBM step counts share one
        chain in-process (a sweep), or go one by one through a service."""
        out: dict[str, np.ndarray] = {}
        chains: dict[int, str] = {}
        for spec in self.specs:
            name, _, arg = spec.partition(":")
            steps = pureebm_steps(spec, self.default_steps)
            if name == "none" or steps == 0:
                out[spec] = images
            elif name == "jpeg":
                out[spec] = defences.jpeg(images, int(arg or 75))
            elif steps is None:
                raise ValueError(f"unknown defence {spec!r} (none, jpeg:Q, pureebm[:T])")
            elif self.config.url:
                model = self.config.model
                out[spec] = purify_through_service(self.config.url, images, steps, model)
            else:
                chains[steps] = spec
        if chains:
            device = self.config.classifier.device
            swept = defences.pureebm(self.model, images, self.params, list(chains), device)
            out |= {spec: swept[steps] for steps, spec in chains.items()}
        return {spec: out[spec] for spec in self.specs}

    def defend_all(self, poisoned: attacks.Poisoned) -> dict[str, np.ndarray]:
        """Every defence of the poisoned training set: the clean images' results are
        reused, only the poisoned ones are defended again."""
        changed = poisoned.poisoned
        fresh = self.apply_all(poisoned.images[changed])
        defended = {}
        for spec in self.specs:
            defended[spec] = self.clean[spec].copy()
            defended[spec][changed] = fresh[spec]
        return defended


def purify_through_service(url: str, images: np.ndarray, steps: int, model: str) -> np.ndarray:
    from pureebm.client import PureEBMClient

    with tempfile.TemporaryDirectory() as tmp, PureEBMClient(url) as client:
        src, dst = Path(tmp) / "train.npz", Path(tmp) / "purified.npz"
        np.savez(src, images=images)
        client.purify(src, dst, steps=steps, model=model, seed=0)
        with np.load(dst, allow_pickle=False) as npz:
            return npz["images"]


def measure(net: nn.Module, test_x, test_y, triggered, target: int) -> dict[str, float]:
    clean_predictions = predict(net, test_x)
    return {
        "natural_accuracy": float((clean_predictions == test_y).mean()),
        "poison_success": attacks.poison_success(predict(net, triggered), test_y, target),
        # the same share without the trigger: what success means by chance
        "base_rate": attacks.poison_success(clean_predictions, test_y, target),
    }


def evaluate(config: EvalConfig) -> dict:
    started = time.perf_counter()
    images, labels = load_labelled(config.train)
    if config.test:
        train_x, train_y = images, labels
        test_x, test_y = load_labelled(config.test)
    else:
        train_x, train_y, test_x, test_y = stratified_split(
            images, labels, config.test_fraction, config.split_seed
        )
    if config.limit:
        train_x, train_y = train_x[: config.limit], train_y[: config.limit]
    defender = Defender(config, train_x)
    # the classifier trained on clean data: the "clean" row, and Narcissus's surrogate
    clean_nets = {
        seed: train_classifier(train_x, train_y, replace(config.classifier, seed=seed))
        for seed in config.seeds
    }
    rows = []
    runs = [(e, s, t) for s in config.seeds for e in config.eps for t in config.targets]
    for eps, seed, target in tqdm(runs, desc="attacks", unit="attack"):
        poisoned = make_attack(config, train_x, train_y, target, eps, seed, clean_nets[seed])
        triggered = poisoned.trigger(test_x)
        common = {"eps": eps, "seed": seed, "target": target}
        rows.append(
            {
                **common,
                "defence": "clean",
                **measure(clean_nets[seed], test_x, test_y, triggered, target),
            }
        )
        for spec, defended in defender.defend_all(poisoned).items():
            net = train_classifier(defended, poisoned.labels, replace(config.classifier, seed=seed))
            rows.append(
                {**common, "defence": spec, **measure(net, test_x, test_y, triggered, target)}
            )
            tqdm.write(
                f"eps {eps * 255:.0f}/255 seed {seed} target {target} {spec:<12} "
                f"accuracy {rows[-1]['natural_accuracy']:.3f} "
                f"poison success {rows[-1]['poison_success']:.3f}"
            )
        # written after every attack, so an interrupted run keeps what it measured
        result = {
            "config": asdict(config),
            "train_images": len(train_x),
            "test_images": len(test_x),
            "poisoned_images": len(poisoned.poisoned),
            "model": defender.model_ref,
            "purifier": defender.params.model_dump(),
            "rows": rows,
            "summary": summarise(rows),
            "complete": len(rows) == len(runs) * (1 + len(defender.specs)),
            "seconds": time.perf_counter() - started,
        }
        write_outputs(config, result)
    return result


def summarise(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{eps label: {defence: mean and 95% half-width of each measure}}.

    Targets differ far more from each other than defences do, so each defence is
    also compared with no defence run by run (same target and seed): the mean
    paired difference ("..._vs_none") and its interval tell defences apart where
    the plain means' intervals overlap.
    """
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for eps in dict.fromkeys(r["eps"] for r in rows):
        label = f"{eps * 255:.0f}/255"
        summary[label] = {}
        mine = [r for r in rows if r["eps"] == eps]
        undefended = {(r["seed"], r["target"]): r for r in mine if r["defence"] == "none"}
        for spec in dict.fromkeys(r["defence"] for r in mine):
            runs = [r for r in mine if r["defence"] == spec]
            entry = {}
            for key in ("natural_accuracy", "poison_success", "base_rate"):
                entry[key], entry[key + "_ci"] = mean_interval([r[key] for r in runs])
            for key in ("natural_accuracy", "poison_success"):
                paired = [
                    r[key] - undefended[r["seed"], r["target"]][key]
                    for r in runs
                    if (r["seed"], r["target"]) in undefended and spec != "none"
                ]
                if paired:
                    entry[key + "_vs_none"], entry[key + "_vs_none_ci"] = mean_interval(paired)
            entry["runs"] = len(runs)
            summary[label][spec] = entry
    return summary


def markdown_table(result: dict) -> str:
    lines = [
        "| strength | defence | natural accuracy | poison success | accuracy vs none "
        "(paired) | poison success vs none (paired) | no-trigger rate | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def paired(s: dict, key: str) -> str:
        if key + "_vs_none" not in s:
            return "-"
        return f"{s[key + '_vs_none'] * 100:+.1f} +- {s[key + '_vs_none_ci'] * 100:.1f} pts"

    for label, by_defence in result["summary"].items():
        for spec, s in by_defence.items():
            lines.append(
                f"| {label} | {spec} | {s['natural_accuracy']:.1%} +- "
                f"{s['natural_accuracy_ci']:.1%} | {s['poison_success']:.1%} +- "
                f"{s['poison_success_ci']:.1%} | {paired(s, 'natural_accuracy')} "
                f"| {paired(s, 'poison_success')} | {s['base_rate']:.1%} | {s['runs']} |"
            )
    return "\n".join(lines)


def write_outputs(config: EvalConfig, result: dict) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    c = result["config"]
    header = (
        f"{c['attack']} attack, {c['poison_fraction']:.1%} poisons "
        f"({result['poisoned_images']} images), targets {c['targets']}, seeds {c['seeds']}, "
        f"{c['classifier']['architecture']} classifier ({c['classifier']['epochs']} epochs), "
        f"{result['train_images']} train / {result['test_images']} test images; "
        f"mean +- 95% interval over targets and seeds\n\n"
    )
    (out / "results.md").write_text(header + markdown_table(result) + "\n")
    draw_results(result, out / "results.png", header.strip())


def draw_results(result: dict, path: Path, title: str) -> None:
    """Accuracy and poison success per defence and strength, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summary = result["summary"]
    labels = list(summary)
    specs = list(dict.fromkeys(spec for by_defence in summary.values() for spec in by_defence))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(labels)
    for ax, key, name in zip(
        axes,
        ("natural_accuracy", "poison_success"),
        ("natural accuracy", "poison success"),
        strict=True,
    ):
        for i, label in enumerate(labels):
            measured = summary[label]  # a defence may be missing at some strength
            values = [measured[s][key] if s in measured else np.nan for s in specs]
            errors = [measured[s][key + "_ci"] if s in measured else 0.0 for s in specs]
            positions = np.arange(len(specs)) + (i - (len(labels) - 1) / 2) * width
            ax.bar(positions, values, width, yerr=errors, capsize=3, label=f"eps {label}")
        ax.set_xticks(np.arange(len(specs)), [s.replace(" ", "\n") for s in specs], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
