"""`pureebm eval`: attack, defend, train victims, measure."""

from __future__ import annotations

import argparse

from pureebm.evaluation.config import ATTACKS, RECIPES, VICTIMS, EvalConfig, TrainSettings


def register(sub: argparse._SubParsersAction) -> None:
    defaults = EvalConfig(train="")
    p = sub.add_parser("eval", help="poison, defend, train classifiers, measure")
    p.add_argument("train", help="labelled training set: npz (images, labels) or class folders")
    p.add_argument("--test", help="labelled test set (default: a stratified split of TRAIN)")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="share of TRAIN held out as the test split (without --test)",
    )
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--attack", choices=ATTACKS, default=defaults.attack, help="the poisoning")
    p.add_argument(
        "--eps",
        type=fraction,
        nargs="+",
        default=defaults.eps,
        help="L-inf bounds of the perturbation, e.g. 8/255 16/255 (patch and blend: run once)",
    )
    p.add_argument(
        "--poison-fraction",
        type=float,
        default=defaults.poison_fraction,
        help="poisoned images as a share of the whole training set",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=defaults.restarts,
        help="gradient matching: brews per poison set, the best aligned kept (the paper: 8)",
    )
    p.add_argument(
        "--trigger-steps",
        type=int,
        default=defaults.trigger_steps,
        help="Narcissus: the trigger's optimisation steps (fewer: a less saturated trigger, "
        "which an energy ranks less easily)",
    )
    p.add_argument(
        "--targets", type=int, nargs="+", default=defaults.targets, help="attacked classes"
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=defaults.seeds,
        help="attack and classifier seeds (each target runs every seed)",
    )
    p.add_argument(
        "--defences",
        nargs="+",
        default=defaults.defences,
        help="a purifier as FAMILY[:FIELD=VALUE,...] (jpeg:quality=50, "
        "langevin:steps=3,init_noise=0.05, ddpm:model=NAME,steps=75, reps:ddpm_model=NAME), "
        "several joined by '>' to run one after the other (jpeg:quality=75>langevin:steps=3), "
        "or none, jpeg:QUALITY, pureebm (the model's T), pureebm:STEPS, filt:K[:STEPS[:REST]] "
        "/ filt:auto[:STEPS[:REST]] (purify the highest-energy images; the rest pass through "
        "raw, or get REST steps), or pureddpm[:T*] (with "
        "--ddpm-model); a 'clean' row (trained on unpoisoned data) is always added, and each "
        "defence gets a '+test' row",
    )
    p.add_argument("--sweep", type=int, nargs="*", default=[], help="PureEBM steps to sweep")
    p.add_argument(
        "--classifier",
        choices=VICTIMS,
        default=defaults.classifier.architecture,
        help="victim architecture",
    )
    p.add_argument(
        "--epochs", type=int, default=defaults.classifier.epochs, help="victim training epochs"
    )
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=defaults.recipe,
        help="victim recipe: standard (--classifier, lr 0.2, a crop offset per image) or "
        "outside (the outside evaluation's: cnn-bn4, lr 0.1, one crop offset per batch, "
        "one 8-epoch surrogate at seed 0; use it with --attack narcissus-pgd)",
    )
    p.add_argument(
        "--purify-seed", type=int, default=defaults.purify_seed, help="the purifiers' own seed"
    )
    p.add_argument("--model", default=defaults.model, help="the EBM of pureebm and filt rows")
    p.add_argument("--ddpm-model", help="the DDPM of pureddpm rows (NAME or NAME:VERSION)")
    p.add_argument("--registry", default=defaults.registry, help="model registry folder")
    p.add_argument("--url", help="purify through this running service instead of in-process")
    p.add_argument("--out", default=defaults.out, help="folder for results.json/.md/.png")
    p.add_argument(
        "--split-seed", type=int, default=defaults.split_seed, help="seed of the test split"
    )
    p.add_argument(
        "--no-test-defence",
        dest="defend_test",
        action="store_false",
        help="leave out the '+test' rows (test images purified too): a slow purifier's "
        "cost on the test set, once, and on its triggered copy, per attack",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--purify-batch",
        type=int,
        default=defaults.purify_batch,
        help="images per purifier batch (a GPU takes 512 or more)",
    )
    p.add_argument(
        "--cache",
        help="folder keeping defended sets, so evaluations run side by side (one per "
        "attack) defend the clean training set once",
    )
    p.set_defaults(run=run_eval)


def fraction(value: str) -> float:
    """'8/255' -> 0.0314; '0.03' -> 0.03."""
    numerator, _, denominator = value.partition("/")
    return float(numerator) / float(denominator or 1)


def run_eval(args: argparse.Namespace) -> None:
    from pureebm.evaluation.run import evaluate, markdown_table

    config = EvalConfig(
        train=args.train,
        test=args.test,
        test_fraction=args.test_fraction,
        limit=args.limit,
        attack=args.attack,
        eps=args.eps,
        poison_fraction=args.poison_fraction,
        restarts=args.restarts,
        trigger_steps=args.trigger_steps,
        targets=args.targets,
        seeds=args.seeds,
        defences=args.defences,
        sweep=args.sweep,
        classifier=TrainSettings(
            **{"architecture": args.classifier, **RECIPES[args.recipe]},  # type: ignore[arg-type]
            epochs=args.epochs,
            device=args.device,
        ),
        recipe=args.recipe,
        purify_seed=args.purify_seed,
        model=args.model,
        ddpm_model=args.ddpm_model,
        registry=args.registry,
        url=args.url,
        out=args.out,
        split_seed=args.split_seed,
        defend_test=args.defend_test,
        purify_batch=args.purify_batch,
        cache=args.cache,
    )
    result = evaluate(config)
    print(markdown_table(result))
    print(f"({result['seconds']:.0f} s; results.json, results.md, results.png in {config.out})")
