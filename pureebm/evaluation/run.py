"""`pureebm eval`: attack, defend, train, measure; write JSON, a Markdown table and PNGs."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pureebm.evaluation import attacks, defences
from pureebm.evaluation.classifier import TrainSettings, predict, train_classifier
from pureebm.evaluation.data import load_labelled, stratified_split
from pureebm.plots import bar_chart, line_chart
from pureebm.registry import DEFAULT_MODEL, DEFAULT_ROOT, Registry

ATTACKS = ("narcissus", "patch", "patch-clean", "blend")


@dataclass
class EvalConfig:
    train: str
    test: str | None = None  # None: a stratified split of `train`
    test_fraction: float = 0.2
    limit: int | None = None  # use only the first N training images
    attack: str = "narcissus"
    eps: float = 8 / 255
    poison_fraction: float = 0.01  # of the whole training set
    targets: list[int] = field(default_factory=lambda: [0])
    defences: list[str] = field(default_factory=lambda: ["none", "jpeg:75", "pureebm:150"])
    sweep: list[int] = field(default_factory=list)  # PureEBM steps to sweep, e.g. 0 50 150
    classifier: TrainSettings = field(default_factory=TrainSettings)
    model: str = DEFAULT_MODEL
    registry: str = str(DEFAULT_ROOT)
    url: str | None = None  # purify through a running service instead of in-process
    out: str = "runs/eval"
    seed: int = 0


def make_attack(config: EvalConfig, images: np.ndarray, labels: np.ndarray, target: int):
    seed = config.seed + target
    if config.attack == "narcissus":
        return attacks.narcissus(
            images, labels, target, config.eps, config.poison_fraction, seed, config.classifier
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


def pureebm_steps(spec: str) -> int | None:
    """'pureebm:150' -> 150; other defences -> None."""
    name, _, steps = spec.partition(":")
    return int(steps or 150) if name == "pureebm" else None


def purify_through_service(
    url: str, images: np.ndarray, steps: list[int], model: str, seed: int
) -> dict[int, np.ndarray]:
    from service.client import PureEBMClient

    out = {}
    with tempfile.TemporaryDirectory() as tmp, PureEBMClient(url) as client:
        src = Path(tmp) / "train.npz"
        np.savez(src, images=images)
        for t in steps:
            dst = Path(tmp) / f"purified-{t}.npz"
            client.purify(src, dst, steps=t, model=model, seed=seed)
            with np.load(dst, allow_pickle=False) as npz:
                out[t] = npz["images"]
    return out


def defended_sets(config: EvalConfig, poisoned: np.ndarray) -> dict[str, np.ndarray]:
    """Every defence's version of the (poisoned) training set, keyed by its spec."""
    specs = list(dict.fromkeys([*config.defences, *(f"pureebm:{t}" for t in config.sweep)]))
    steps = sorted({s for spec in specs if (s := pureebm_steps(spec))})
    if not steps:
        purified = {}
    elif config.url:
        purified = purify_through_service(config.url, poisoned, steps, config.model, config.seed)
    else:
        model = Registry(config.registry).load(config.model)
        purified = defences.pureebm_sweep(
            model, poisoned, steps, config.seed, device=config.classifier.device
        )
    sets = {}
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name == "none" or spec == "pureebm:0":
            sets[spec] = poisoned
        elif name == "jpeg":
            sets[spec] = defences.jpeg(poisoned, int(arg or 75))
        elif name == "pureebm":
            sets[spec] = purified[pureebm_steps(spec)]
        else:
            raise ValueError(f"unknown defence {spec!r} (none, jpeg:Q, pureebm:T)")
    return sets


def evaluate(config: EvalConfig) -> dict:
    started = time.perf_counter()
    images, labels = load_labelled(config.train)
    if config.test:
        train_x, train_y = images, labels
        test_x, test_y = load_labelled(config.test)
    else:
        train_x, train_y, test_x, test_y = stratified_split(
            images, labels, config.test_fraction, config.seed
        )
    if config.limit:
        train_x, train_y = train_x[: config.limit], train_y[: config.limit]
    rows = []
    for target in config.targets:
        tqdm.write(f"target class {target}: {config.attack} attack")
        poisoned = make_attack(config, train_x, train_y, target)
        triggered = poisoned.trigger(test_x)
        # measured once per training set ('none' and 'pureebm:0' are the same set)
        measured: dict[int, tuple[float, float, float]] = {}
        for spec, defended in defended_sets(config, poisoned.images).items():
            if id(defended) not in measured:
                net = train_classifier(defended, poisoned.labels, config.classifier)
                clean_predictions = predict(net, test_x)
                measured[id(defended)] = (
                    float((clean_predictions == test_y).mean()),
                    attacks.poison_success(predict(net, triggered), test_y, target),
                    # the same share without the trigger: what success means by chance
                    attacks.poison_success(clean_predictions, test_y, target),
                )
            accuracy, success, base_rate = measured[id(defended)]
            rows.append(
                {
                    "target": target,
                    "defence": spec,
                    "natural_accuracy": accuracy,
                    "poison_success": success,
                    "base_rate": base_rate,
                    "poisoned_images": len(poisoned.poisoned),
                }
            )
            tqdm.write(f"  {spec:<14} accuracy {accuracy:.3f}  poison success {success:.3f}")
    summary = {}
    for spec in dict.fromkeys(r["defence"] for r in rows):
        mine = [r for r in rows if r["defence"] == spec]
        summary[spec] = {
            "natural_accuracy": float(np.mean([r["natural_accuracy"] for r in mine])),
            "poison_success_mean": float(np.mean([r["poison_success"] for r in mine])),
            "poison_success_worst": float(np.max([r["poison_success"] for r in mine])),
            "base_rate": float(np.mean([r["base_rate"] for r in mine])),
        }
    result = {
        "config": asdict(config),
        "train_images": len(train_x),
        "test_images": len(test_x),
        "rows": rows,
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }
    write_outputs(config, result)
    return result


def markdown_table(result: dict) -> str:
    targets = result["config"]["targets"]
    success = {(r["defence"], r["target"]): r["poison_success"] for r in result["rows"]}
    per_target = "".join(f" target {t} |" for t in targets)
    lines = [
        "| defence | natural accuracy | poison success (mean) | poison success (worst) |"
        + per_target
        + " no trigger (mean) |",
        "|---|---|---|---|" + "---|" * (len(targets) + 1),
    ]
    for spec, s in result["summary"].items():
        lines.append(
            f"| {spec} | {s['natural_accuracy']:.1%} | {s['poison_success_mean']:.1%} "
            f"| {s['poison_success_worst']:.1%} |"
            + "".join(f" {success[spec, t]:.1%} |" for t in targets)
            + f" {s['base_rate']:.1%} |"
        )
    return "\n".join(lines)


def write_outputs(config: EvalConfig, result: dict) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    c = result["config"]
    header = (
        f"{c['attack']} attack, eps {c['eps'] * 255:.0f}/255, {c['poison_fraction']:.1%} "
        f"poisons, targets {c['targets']}, {c['classifier']['architecture']} classifier, "
        f"{result['train_images']} train / {result['test_images']} test images\n\n"
    )
    (out / "results.md").write_text(header + markdown_table(result) + "\n")
    summary = result["summary"]
    shown = [s for s in config.defences if s in summary]
    bar_chart(
        {
            spec: {
                "natural accuracy": summary[spec]["natural_accuracy"],
                "poison success": summary[spec]["poison_success_mean"],
            }
            for spec in shown
        },
        out / "results.png",
        title=header.strip(),
    )
    if config.sweep:
        steps = sorted(set(config.sweep))
        keys = [f"pureebm:{t}" for t in steps]
        line_chart(
            {
                "natural accuracy": [summary[k]["natural_accuracy"] for k in keys],
                "poison success": [summary[k]["poison_success_mean"] for k in keys],
            },
            out / "sweep.png",
            x=steps,
            title="PureEBM: accuracy and poison success vs steps T",
        )
