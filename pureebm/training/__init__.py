"""Training: one loop (pureebm.training.loop) and a recipe's objective, chosen by name.

"ml", "dsm", "dsm+ml"   an EBM (pureebm.training.ebm)
"ddpm"                  a DDPM U-Net (pureebm.training.ddpm)
"""

from __future__ import annotations

from tqdm import tqdm

from pureebm.params import TrainConfig
from pureebm.registry.records import Manifest
from pureebm.training.ddpm import DDPMObjective
from pureebm.training.ebm import EBMObjective
from pureebm.training.loop import TrainingRun

RECIPES = {"ml": EBMObjective, "dsm": EBMObjective, "dsm+ml": EBMObjective, "ddpm": DDPMObjective}


def training_run(config: TrainConfig) -> TrainingRun:
    if config.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {config.recipe!r} (known: {', '.join(RECIPES)})")
    return TrainingRun(config, RECIPES[config.recipe](config))


def train(config: TrainConfig, resume: bool = False) -> Manifest:
    run = training_run(config)
    if resume and run.load_checkpoint():
        tqdm.write(f"resumed {config.out_dir} at step {run.step}")
    return run.run()
