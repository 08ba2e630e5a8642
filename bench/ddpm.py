"""Cost per image of PureDDPM and Reps through pureebm.pipeline (the path the CLI and
the workers run), on real 32 x 32 images.

    python -m bench.ddpm [--model cifar10-ddpm] [--ebm cifar10-conv] [--images 256]
                         [--steps 75] [--reps 10 50 5] [--device auto]

Prints seconds per image and images/s after one warm-up batch, with the minimum,
median and maximum over --repeats runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from pydantic import BaseModel

from pureebm.containers import load_image_array
from pureebm.images import Picture
from pureebm.langevin import resolve_device
from pureebm.pipeline import purifier_for, purify_pictures
from pureebm.purifiers import Overrides, Purifier
from pureebm.registry import LoadedModel, Registry
from pureebm.requests import resolve_request

DATA = "../shared/datasets/cifar10-part-train.npz"


def seconds_per_image(run, images: int, repeats: int) -> list[float]:
    run(min(images, 64))  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(images)
        times.append((time.perf_counter() - started) / images)
    return times


def built(overrides: BaseModel, ref: str, registry: Registry, device: torch.device) -> Purifier:
    """The purifier a request of ``overrides`` on ``ref`` runs (the CLI's and the
    API's resolution: the preset's values under the request's, checked)."""

    def load(name: str) -> LoadedModel:
        return registry.load(name, device)

    resolved = resolve_request(overrides, ref, registry)
    model = None if resolved.model is None else load(resolved.model)
    return purifier_for(resolved.purifier, model, load, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-ddpm")
    parser.add_argument("--ebm", default="cifar10-conv")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=75, help="PureDDPM's t*")
    parser.add_argument(
        "--reps",
        type=int,
        nargs=3,
        default=[10, 50, 5],
        metavar=("K", "L", "R"),
        help="Reps: K EBM steps, L DDPM steps, R rounds (0 0 0: skip)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    registry = Registry()
    images = load_image_array(args.data)
    pictures = [(str(i), Picture(rgb, None, "RGB", "PNG")) for i, rgb in enumerate(images)]

    ddpm = built(Overrides(purifier="ddpm", steps=args.steps), args.model, registry, device)

    def pureddpm(n: int) -> None:
        for _ in purify_pictures(ddpm, pictures[:n], args.batch_size, 0):
            pass

    rows = {f"PureDDPM t*={args.steps} ({args.model})": pureddpm}
    k, length, rounds = args.reps
    if rounds:
        overrides = Overrides(
            purifier="reps", steps=k, ddpm_model=args.model, rounds=rounds, ddpm_steps=length
        )
        reps = built(overrides, args.ebm, registry, device)

        def combined(n: int) -> None:
            for _ in purify_pictures(reps, pictures[:n], args.batch_size, 0):
                pass

        rows[f"Reps {rounds} x [{k} EBM, {length} DDPM] ({args.ebm} + {args.model})"] = combined
    size = f"{images.shape[1]}x{images.shape[2]}"
    print(f"{args.images} images of {size} on {device}, batch {args.batch_size}")
    for name, run in rows.items():
        times = seconds_per_image(run, args.images, args.repeats)
        low, mid, high = min(times), statistics.median(times), max(times)
        print(
            f"{name}: {mid * 1e3:.1f} ms/image (min {low * 1e3:.1f}, max {high * 1e3:.1f}); "
            f"{1 / mid:.1f} images/s"
        )


if __name__ == "__main__":
    main()
