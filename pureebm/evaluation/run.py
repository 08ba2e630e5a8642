"""`pureebm eval`: attack, defend, train, measure; write JSON, a Markdown table and PNGs."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from pureebm.evaluation import attacks, defences
from pureebm.evaluation.classifier import predict, train_classifier
from pureebm.evaluation.config import ATTACKS, SURROGATE_EPOCHS, EvalConfig
from pureebm.evaluation.data import load_labelled, stratified_split
from pureebm.evaluation.defences import is_spec
from pureebm.filtering import selected_positions
from pureebm.purifiers import FAMILIES
from pureebm.purifiers.langevin import LangevinSpec
from pureebm.registry import Registry
from pureebm.results import psnr
from pureebm.statistics import mean_interval

NARCISSUS: dict[str, dict] = {  # attack -> how its trigger is built (attacks.narcissus)
    "narcissus": {},
    "narcissus-x3": {"amplify": 3.0},
    "narcissus-grid": {"augment": False},
    "narcissus-adaptive": {"evades_energy": True},
}


SURROGATE_ATTACKS = (*NARCISSUS, "narcissus-pgd", "gradient-matching")  # need a surrogate


def make_attack(
    config: EvalConfig,
    images: np.ndarray,
    labels: np.ndarray,
    target: int,
    eps: float,
    seed: int,
    surrogate: nn.Module,
    energy: nn.Module | None = None,
    test_x: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
) -> attacks.Poisoned:
    """``energy``: the defender's EBM, which a defence-aware attack evades; the test
    set: where a targeted attack chooses its victims."""
    seed = seed * 1000 + target
    crafted_on_surrogate = (images, labels, target, eps, config.poison_fraction, seed, surrogate)
    if config.attack in NARCISSUS:
        options = dict(NARCISSUS[config.attack])
        if options.pop("evades_energy", False):
            if energy is None:
                raise ValueError("narcissus-adaptive needs the defender's EBM, in-process")
            options["energy"] = energy
        return attacks.narcissus(*crafted_on_surrogate, steps=config.trigger_steps, **options)
    if config.attack == "narcissus-pgd":
        return attacks.narcissus_pgd(
            *crafted_on_surrogate,
            steps=config.trigger_steps,
            one_offset=config.classifier.one_offset,
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
    if config.attack == "gradient-matching":
        if test_x is None or test_y is None:
            raise ValueError("gradient matching chooses its victims among test images")
        return attacks.gradient_matching(
            *crafted_on_surrogate, test_x, test_y, restarts=config.restarts
        )
    if config.attack == "blend":
        return attacks.blend(images, labels, target, config.poison_fraction, seed)
    raise ValueError(f"unknown attack {config.attack!r} (known: {', '.join(ATTACKS)})")


def chain_steps(spec: str, default: int) -> int | None:
    """The Langevin steps a defence runs: 'pureebm:150' -> 150, 'pureebm' -> the
    model's default T, 'filt:0.5:20' -> 20, 'filt:auto' -> the default T; None
    for defences without a chain (and for purifiers joined by '>')."""
    name, _, rest = spec.partition(":")
    if ">" in spec:
        return None
    if name == "pureebm":
        return int(rest or default)
    if name == "filt":
        parts = rest.split(":")
        return int(parts[1]) if len(parts) > 1 and parts[1] else default
    return None


def rest_steps(spec: str) -> int:
    """'filt:K:T:R' -> R: the steps of the light chain the images a filter does not
    choose get, instead of passing through raw; 0 for every other defence."""
    name, _, rest = spec.partition(":")
    parts = rest.split(":")
    return int(parts[2]) if name == "filt" and len(parts) > 2 else 0


def short_spec(spec: str, ddpm_model: str | None) -> str:
    """The earlier short names of spec-grammar defences: 'jpeg:75' -> 'jpeg:quality=75',
    'pureddpm:75' -> 'ddpm:model=<--ddpm-model>,steps=75'."""
    name, _, arg = spec.partition(":")
    if name == "jpeg" and arg and "=" not in arg:
        return f"jpeg:quality={arg}"
    if name == "pureddpm":
        if ddpm_model is None:
            raise ValueError("pureddpm rows need --ddpm-model")
        return f"ddpm:model={ddpm_model}" + (f",steps={arg}" if arg else "")
    return spec


def filter_rule(spec: str) -> float | str | None:
    """'filt:0.5[:T[:R]]' -> 0.5, 'filt:auto[:T[:R]]' -> 'auto'; None for other defences."""
    name, _, rest = spec.partition(":")
    if name != "filt" or ">" in spec:
        return None
    rule = rest.partition(":")[0]
    return rule if rule == "auto" else float(rule)


class Defender:
    """Applies each defence to a training set.

    The defender does not know which images are poisoned, so a defence runs on
    the whole set. Defences act on each image alone, except the filters, which
    rank the whole set by energy: so the clean training images' results and
    energies are computed once, only the poisoned images are defended again
    for each attack, and a filter then ranks the whole poisoned set. The same
    distribution of outputs as defending every set in full, at a fraction of
    the cost. PureEBM runs through ``pureebm.pipeline`` (or a running
    service), the path the product runs.
    """

    def __init__(self, config: EvalConfig, clean_train: np.ndarray) -> None:
        self.config = config
        registry = Registry(config.registry)
        device = config.classifier.device
        ref = config.model or registry.default_ref()
        self.model = None if config.url else registry.load(ref)
        manifest = self.model.manifest if self.model else registry.manifest(ref)
        self.model_ref = manifest.ref
        if not isinstance(manifest.purifier, LangevinSpec):
            raise ValueError(f"{manifest.ref} is not an EBM: --model names the EBM")
        self.params = manifest.purifier
        self.threshold = manifest.energy_threshold
        self.specs = list(
            dict.fromkeys([*config.defences, *(f"pureebm:{t}" for t in config.sweep)])
        )
        if config.url and any(filter_rule(spec) is not None for spec in self.specs):
            raise ValueError("filters rank a whole set: they run in-process, without --url")
        self.chains = {
            spec: steps
            for spec in self.specs
            if (steps := chain_steps(spec, self.params.steps)) is not None
        }
        for spec in self.specs:
            if spec in self.chains or spec == "none":
                continue
            if not all(is_spec(short_spec(step, config.ddpm_model)) for step in spec.split(">")):
                raise ValueError(
                    f"unknown defence {spec!r} (FAMILY[:FIELD=VALUE,...] with FAMILY one of "
                    f"{', '.join(FAMILIES)}, or several joined by '>'; or none, jpeg:Q, "
                    "pureebm[:T], filt:K|auto[:T[:R]], pureddpm[:T])"
                )
        self.purifiers = {
            spec: [
                defences.spec_purifier(
                    short_spec(step, config.ddpm_model), registry, config.model, device
                )
                for step in spec.split(">")
            ]
            for spec in self.specs
            if spec not in self.chains and spec != "none"
        }
        if config.url and self.purifiers:
            raise ValueError("only PureEBM chains run through a service (--url)")
        self.clean_train = clean_train
        self.clean, self.clean_energy = self.transform(clean_train)
        self.clean_defended = self.finish_all(self.clean, clean_train, self.clean_energy)

    def transform(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every per-image defence of ``images`` (PureEBM keyed 'T=t' for each chain
        length), and each image's energy (NaN without an in-process model). The
        chains share one sweep in-process, or go one by one through a service."""
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            if spec == "none" or self.chains.get(spec) == 0:
                out[spec] = images
            elif spec in self.purifiers:
                purify = partial(self.purify, spec, images)
                name = f"{spec} seed {self.config.purify_seed}"
                out[spec] = defences.cached(self.config.cache, images, name, purify)["images"]
        rests = {rest_steps(spec) for spec in self.chains} - {0}
        lengths = sorted(set(self.chains.values()) | rests)
        energy = np.full(len(images), np.nan)
        if self.config.url:
            for steps in lengths:
                model = self.config.model
                out[f"T={steps}"] = purify_through_service(self.config.url, images, steps, model)
        elif lengths:
            key = f"{self.model_ref} T={lengths} seed {self.config.purify_seed}"
            sweep = partial(self.sweep, images, lengths)
            swept = defences.cached(self.config.cache, images, key, sweep)
            energy = swept.pop("energy")
            out |= swept
        return out, energy

    def purify(self, spec: str, images: np.ndarray) -> dict[str, np.ndarray]:
        """``images`` through the defence's purifiers, one after the other."""
        c = self.config
        for purifier in self.purifiers[spec]:
            images = defences.purified(purifier, images, spec, c.purify_batch, c.purify_seed)
        return {"images": images}

    def sweep(self, images: np.ndarray, lengths: list[int]) -> dict[str, np.ndarray]:
        """Psi_T of ``images`` for each chain length, keyed 'T=t', and their energy."""
        c = self.config
        swept, energy = defences.pureebm(
            self.model, images, self.params, lengths, c.classifier.device, c.purify_batch,
            c.purify_seed,
        )  # fmt: skip
        return {f"T={steps}": swept[steps] for steps in lengths} | {"energy": energy}

    def finish(
        self, spec: str, out: dict[str, np.ndarray], images: np.ndarray, energy: np.ndarray
    ) -> np.ndarray:
        """One defence's result for the set ``images`` from ``transform``'s output."""
        if spec not in self.chains or self.chains[spec] == 0:
            return out[spec]
        purified = out[f"T={self.chains[spec]}"]
        rule = filter_rule(spec)
        if rule is None:
            return purified
        chosen = selected_positions(energy, rule, self.threshold)
        rest = rest_steps(spec)
        result = (images if rest == 0 else out[f"T={rest}"]).copy()
        result[chosen] = purified[chosen]
        return result

    def finish_all(
        self, out: dict[str, np.ndarray], images: np.ndarray, energy: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {spec: self.finish(spec, out, images, energy) for spec in self.specs}

    def apply_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every defence applied to ``images`` as one set (filters rank within it),
        such as test images purified before the classifier sees them."""
        out, energy = self.transform(images)
        return self.finish_all(out, images, energy)

    def defend_all(self, poisoned: attacks.Poisoned) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Every defence of the poisoned training set, and its energies: the clean
        images' results are reused, only the poisoned ones are defended again."""
        changed = poisoned.poisoned
        fresh, fresh_energy = self.transform(poisoned.images[changed])
        merged = {}
        for key, clean in self.clean.items():
            merged[key] = clean.copy()
            merged[key][changed] = fresh[key]
        energy = self.clean_energy.copy()
        energy[changed] = fresh_energy
        return self.finish_all(merged, poisoned.images, energy), energy


def purify_through_service(url: str, images: np.ndarray, steps: int, model: str) -> np.ndarray:
    from pureebm.client import PureEBMClient

    with tempfile.TemporaryDirectory() as tmp, PureEBMClient(url) as client:
        src, dst = Path(tmp) / "train.npz", Path(tmp) / "purified.npz"
        np.savez(src, images=images)
        client.purify(src, dst, steps=steps, model=model, seed=0)
        with np.load(dst, allow_pickle=False) as npz:
            return npz["images"]


def measure(
    net: nn.Module, test_x, test_y, triggered, target: int, victims: np.ndarray | None = None
) -> dict[str, float]:
    """``victims``: a targeted attack's chosen test images, whose share classified as
    the target is its success."""
    clean_predictions = predict(net, test_x)
    attacked = predict(net, triggered)
    if victims is None:
        success = attacks.poison_success(attacked, test_y, target)
    else:
        success = float((attacked[victims] == target).mean())
    return {
        "natural_accuracy": float((clean_predictions == test_y).mean()),
        "poison_success": success,
        # the same share without the trigger: what success means by chance
        "base_rate": attacks.poison_success(clean_predictions, test_y, target),
    }


SURROGATE_SEED = 1000  # the surrogate's seed is the victims' seed plus this


def trigger_left(defended_clean: np.ndarray, defended_poisoned: np.ndarray, trigger) -> float:
    """|D(x + delta) - D(x)| / |delta| over the poisoned images (L2, same noise): the
    share of the trigger a defence lets through (1 for no defence)."""
    moved = np.linalg.norm((defended_poisoned.astype(np.float64) - defended_clean).ravel())
    return float(moved / max(np.linalg.norm(trigger.astype(np.float64).ravel()), 1e-12))


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney)."""
    scores = np.concatenate([positive, negative])
    if np.isnan(scores).any():  # no energies (no in-process EBM row): no ranking
        return float("nan")
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(positive), len(negative)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def evaluate(config: EvalConfig) -> dict:
    """Attack, defend, train and measure every (strength, seed, target).

    Each defence gets two rows: its classifier on clean test images ('spec'),
    and the same classifier on test images defended the same way ('spec +test',
    a deployment that also purifies at inference). Rows also carry the fast
    proxies: the trigger share a defence lets through and the PSNR it keeps on
    clean training images (``proxy_agreement`` ranks them against the rows).
    """
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
    kept = {spec: psnr(defender.clean_defended[spec], train_x) for spec in defender.specs}
    defended_test = defender.apply_all(test_x) if config.defend_test else {}
    # the classifier trained on clean data: the "clean" row
    clean_nets = {
        seed: train_classifier(train_x, train_y, replace(config.classifier, seed=seed))
        for seed in config.seeds
    }
    # Narcissus's surrogate: trained on the clean set too, but not the clean row's
    # classifier, else the trigger is a white-box adversarial example against that
    # row and its "floor" is the attack's success, not what a clean victim suffers.
    surrogates = clean_nets  # only Narcissus and gradient matching use one
    if config.attack in SURROGATE_ATTACKS and config.recipe in SURROGATE_EPOCHS:
        # the recipe's one surrogate (the outside construction: 8 epochs, seed 0)
        settings = replace(config.classifier, epochs=SURROGATE_EPOCHS[config.recipe], seed=0)
        surrogates = dict.fromkeys(config.seeds, train_classifier(train_x, train_y, settings))
    elif config.attack in SURROGATE_ATTACKS:
        surrogates = {
            seed: train_classifier(
                train_x, train_y, replace(config.classifier, seed=seed + SURROGATE_SEED)
            )
            for seed in config.seeds
        }
    rows, attack_rows = [], []
    runs = [(e, s, t) for s in config.seeds for e in config.strengths() for t in config.targets]
    for eps, seed, target in tqdm(runs, desc="attacks", unit="attack"):
        ebm = defender.model.net if defender.model else None
        poisoned = make_attack(
            config, train_x, train_y, target, eps, seed, surrogates[seed], ebm, test_x, test_y
        )
        changed, victims = poisoned.poisoned, poisoned.victims
        triggered = poisoned.trigger(test_x)
        common = {"eps": eps, "seed": seed, "target": target}
        rows.append(
            {
                **common,
                "defence": "clean",
                **measure(clean_nets[seed], test_x, test_y, triggered, target, victims),
            }
        )
        defended, energy = defender.defend_all(poisoned)
        others = np.setdiff1d(np.arange(len(train_x)), changed)
        attack_rows.append({**common, "energy_auroc": auroc(energy[changed], energy[others])})
        defended_triggered = defender.apply_all(triggered) if config.defend_test else {}
        trigger = poisoned.images[changed].astype(np.int16) - train_x[changed]
        for spec, training_set in defended.items():
            settings = replace(config.classifier, seed=seed)
            net = train_classifier(training_set, poisoned.labels, settings)
            proxies = {
                "trigger_left": trigger_left(
                    defender.clean_defended[spec][changed], training_set[changed], trigger
                ),
                "psnr": kept[spec],
            }
            rows.append(
                {
                    **common,
                    "defence": spec,
                    **measure(net, test_x, test_y, triggered, target, victims),
                    **proxies,
                }
            )
            tested = spec != "none" and config.defend_test
            if tested:
                rows.append(
                    {
                        **common,
                        "defence": f"{spec} +test",
                        **measure(
                            net,
                            defended_test[spec],
                            test_y,
                            defended_triggered[spec],
                            target,
                            victims,
                        ),
                    }
                )
            for row in rows[-2 if tested else -1 :]:  # the defence's row and its '+test'
                tqdm.write(
                    f"eps {eps * 255:.0f}/255 seed {seed} target {target} "
                    f"{row['defence']:<20} accuracy {row['natural_accuracy']:.3f} "
                    f"poison success {row['poison_success']:.3f}"
                )
        # written after every attack, so an interrupted run keeps what it measured
        result = {
            "config": asdict(config),
            "train_images": len(train_x),
            "test_images": len(test_x),
            "poisoned_images": len(changed),
            "model": defender.model_ref,
            "purifier": defender.params.model_dump(),
            "rows": rows,
            "attacks": attack_rows,
            "summary": summarise(rows),
            "complete": len(attack_rows) == len(runs),
            "seconds": time.perf_counter() - started,
        }
        result["worst_case"] = worst_case(result["summary"])  # each defence's worst strength
        result["proxy"] = proxy_agreement(result["summary"])
        write_outputs(config, result)
    return result


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected among the settings compared)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def proxy_agreement(summary: dict) -> dict[str, dict[str, float]]:
    """How well the fast proxies rank the trained defences, per strength: Spearman's
    rho of the trigger share let through against poison success, and of the PSNR
    kept against natural accuracy, over every defence trained on (none included)."""
    agreement = {}
    for label, by_defence in summary.items():
        trained = [s for spec, s in by_defence.items() if "trigger_left" in s]
        agreement[label] = {
            "settings": len(trained),
            "trigger_left_vs_poison_success": spearman(
                [s["trigger_left"] for s in trained], [s["poison_success"] for s in trained]
            ),
            "psnr_vs_natural_accuracy": spearman(
                [s["psnr"] for s in trained], [s["natural_accuracy"] for s in trained]
            ),
        }
    return agreement


PROXIES = ("trigger_left", "psnr")


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
            for key in ("natural_accuracy", "poison_success", "base_rate", *PROXIES):
                if all(key in r for r in runs):
                    entry[key], entry[key + "_ci"] = mean_interval([r[key] for r in runs])
            for key in ("natural_accuracy", "poison_success"):
                paired = [
                    r[key] - undefended[r["seed"], r["target"]][key]
                    for r in runs
                    if (r["seed"], r["target"]) in undefended and spec != "none"
                ]
                if paired:
                    entry[key + "_vs_none"], entry[key + "_vs_none_ci"] = mean_interval(paired)
            ders = [
                der(undefended[r["seed"], r["target"]], r)
                for r in runs
                if (r["seed"], r["target"]) in undefended and spec != "none"
            ]
            if ders:
                entry["der"], entry["der_ci"] = mean_interval(ders)
            entry["runs"] = len(runs)
            summary[label][spec] = entry
    return summary


def der(undefended: dict, defended: dict) -> float:
    """BackdoorBench's defence effectiveness rate of one run against the same run
    undefended: (max(0, ASR drop) - max(0, accuracy drop) + 1) / 2, in [0, 1]; 0.5
    is no change, 1 removes the whole attack at no accuracy."""
    asr_drop = undefended["poison_success"] - defended["poison_success"]
    accuracy_drop = undefended["natural_accuracy"] - defended["natural_accuracy"]
    return (max(0.0, asr_drop) - max(0.0, accuracy_drop) + 1) / 2


def worst_case(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    """Each defence at the strength where the attack succeeded most against it (a
    universal defence is judged on its worst case, never on the mean)."""
    worst: dict[str, dict] = {}
    for label, by_defence in summary.items():
        for spec, entry in by_defence.items():
            if spec not in worst or entry["poison_success"] > worst[spec]["poison_success"]:
                worst[spec] = {"strength": label, **entry}
    return worst


def markdown_table(result: dict) -> str:
    lines = [
        "| strength | defence | natural accuracy | poison success | accuracy vs none "
        "(paired) | poison success vs none (paired) | DER | no-trigger rate | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def paired(s: dict, key: str) -> str:
        if key + "_vs_none" not in s:
            return "-"
        return f"{s[key + '_vs_none'] * 100:+.1f} +- {s[key + '_vs_none_ci'] * 100:.1f} pts"

    def der_cell(s: dict) -> str:
        return f"{s['der']:.2f} +- {s['der_ci']:.2f}" if "der" in s else "-"

    worst = {
        spec: ("worst: " + s["strength"], spec, s)
        for spec, s in worst_case(result["summary"]).items()
    }
    rows = [
        (label, spec, s)
        for label, by_defence in result["summary"].items()
        for spec, s in by_defence.items()
    ]
    for label, spec, s in [*rows, *worst.values()]:
        lines.append(
            f"| {label} | {spec} | {s['natural_accuracy']:.1%} +- "
            f"{s['natural_accuracy_ci']:.1%} | {s['poison_success']:.1%} +- "
            f"{s['poison_success_ci']:.1%} | {paired(s, 'natural_accuracy')} "
            f"| {paired(s, 'poison_success')} | {der_cell(s)} | {s['base_rate']:.1%} "
            f"| {s['runs']} |"
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
