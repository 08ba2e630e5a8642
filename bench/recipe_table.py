"""The recipe study's table, from the calibration that `pureebm train` records.

    python -m bench.recipe_table [--registry models] [REF ...]

For each EBM preset with a calibration.json: how it was trained, its
recommended (eps, tau, T) with the PSNR and mean residual r there, and the
trade-off it offers: the smallest mean r (over pixel signs, 2x2 and 4x4 blocks
and smooth waves at 8/255) among the calibration's settings that keep the clean
PSNR above 30, 28 and 25 dB. Lower is better at each floor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pureebm.registry import DEFAULT_ROOT, Registry

FLOORS = (30.0, 28.0, 25.0)


def best_below(table: list[dict], floor: float) -> str:
    rows = [row for row in table if row["psnr_db"] >= floor and row["steps"] > 0]
    return f"{min(row['residual'] for row in rows):.2f}" if rows else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="*", help="NAME:VERSION entries (default: all)")
    parser.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    args = parser.parse_args()
    registry = Registry(args.registry)
    manifests = [registry.manifest(r) for r in args.refs] if args.refs else registry.list()
    print(
        "| model | training | minutes | hardware | recommended eps, tau, T | PSNR dB | mean r |"
        + "".join(f" best r, PSNR >= {f:.0f} |" for f in FLOORS)
    )
    print("|---" * (7 + len(FLOORS)) + "|")
    for m in manifests:
        path = registry.entry_path(m.ref) / "calibration.json"
        if m.purifier.family != "langevin" or not path.exists():
            continue  # a DDPM's calibration is a card over t*, not a table over (eps, tau, T)
        record = json.loads(path.read_text())
        rec = record["recommended"]
        print(
            f"| {m.ref} | {m.weights.description} | {m.weights.training.wall_time_s / 60:.1f} "
            f"| {m.weights.training.hardware.split(' (')[0]} "
            f"| {rec['eps']:g}, {rec['tau']:g}, {rec['steps']} | {record['psnr_db']:.1f} "
            f"| {record['residual']:.2f} |"
            + "".join(f" {best_below(record['table'], f)} |" for f in FLOORS)
        )


if __name__ == "__main__":
    main()
