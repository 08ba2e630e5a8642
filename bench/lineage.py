"""A registry entry's lineage: every training run (visit) that led to it, and whether
the card still improves, which decides whether the next GPU visit resumes it or
starts a new architecture.

    python -m bench.lineage NAME[:VERSION] [--registry models]
    # exit 0: resume it; exit 3: its card stopped improving (start another architecture)
"""

from __future__ import annotations

import argparse
import sys

from pureebm.registry import DEFAULT_ROOT, Registry
from pureebm.registry.records import TrainingRecord

STALLED_DB = 0.2  # a visit that gains less PSNR at t* than this has stopped improving


def stalled(training: TrainingRecord) -> bool:
    """The last visit gained less than ``STALLED_DB`` of PSNR at t* over the one before
    (both with a card); a lineage with fewer than two cards is still improving."""
    psnrs = [
        value
        for visit in training.visits
        for key, value in visit.quality.items()
        if key.startswith("psnr_db")
    ]
    return len(psnrs) >= 2 and psnrs[-1] - psnrs[-2] < STALLED_DB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref")
    parser.add_argument("--registry", default=str(DEFAULT_ROOT))
    args = parser.parse_args()
    manifest = Registry(args.registry).manifest(args.ref)
    training = manifest.weights.training  # type: ignore[union-attr]
    print(
        f"{manifest.ref}: {training.total_iterations:,} updates, "
        f"{training.accelerator_seconds:,.0f} GPU-seconds over {len(training.lineage)} visits"
    )
    for number, visit in enumerate(training.lineage, 1):
        quality = ", ".join(f"{k} {v:.3g}" for k, v in visit.quality.items())
        tflops = "" if visit.tflops is None else f", {visit.tflops:.1f} TFLOP/s"
        print(f"  {number}. {visit.iterations:,} updates in {visit.wall_time_s:,.0f} s on "
              f"{visit.hardware}{tflops}{'; ' + quality if quality else ''}")  # fmt: skip
    if stalled(training):
        print(f"  stopped improving (last gain under {STALLED_DB} dB): start a new architecture")
        sys.exit(3)


if __name__ == "__main__":
    main()
