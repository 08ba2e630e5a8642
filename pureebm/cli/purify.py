"""`pureebm purify`: purify an image, folder or archive in-process."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pureebm.cli.options import add_purifier_options, purifier_overrides
from pureebm.purifiers import Overrides
from pureebm.registry import DEFAULT_ROOT

if TYPE_CHECKING:
    from pureebm.containers import Kind


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("purify", help="purify an image, folder, zip, tar(.gz) or npz")
    p.add_argument("input", type=Path, help="what to purify")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the purified copy: a file, or a folder to write it into (default: beside the "
        "input, named NAME.purified.EXT); its extension must name the input's container",
    )
    p.add_argument(
        "--model", help="NAME or NAME:VERSION (default: the one the registry's DEFAULT names)"
    )
    p.add_argument("--registry", type=Path, default=DEFAULT_ROOT, help="model registry folder")
    add_purifier_options(p)
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--report", type=Path, help="write per-image energies as JSON here")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output or report file"
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC layout (GPU option)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU option)")
    p.add_argument("--compile", action="store_true", help="torch.compile the net (GPU option)")
    p.set_defaults(run=run_purify)


def output_path(kind: Kind, source: Path, output: Path | None, overwrite: bool = False) -> Path:
    """Where the purified copy of ``source`` goes: ``output``, or into it when it is a
    folder (beside the input when None) under the input's name with '.purified'. A
    name whose extension names another container, a folder that exists, the input
    itself, or (without ``overwrite``) a file that exists is refused (FormatError)."""
    from PIL import Image

    from pureebm.containers import check_output_name, purified_name
    from pureebm.images import UnsupportedInput

    if output is None or output.is_dir():
        mode = "RGB"
        if kind == "image":
            with Image.open(source) as image:
                mode = image.mode
        output = (output or source.parent) / purified_name(kind, source.name, mode)
    if kind == "folder" and output.exists():
        raise UnsupportedInput(f"{output} exists: name a new folder, or one to write into")
    if output.exists() and output.resolve() == source.resolve():
        raise UnsupportedInput(f"{output} is the input: name another file for the result")
    if output.exists() and not overwrite:
        raise UnsupportedInput(f"{output} exists: pass --overwrite to replace it")
    check_output_name(kind, output, source)
    return output


def run_purify(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from pureebm.atomic import atomic_path
    from pureebm.containers import open_container
    from pureebm.images import FormatError
    from pureebm.langevin import Speedups, resolve_device
    from pureebm.pipeline import purifier_for, purify_container, scorer_for
    from pureebm.registry import Registry
    from pureebm.requests import resolve_request
    from pureebm.results import PurifiedImage

    device = resolve_device(args.device)
    registry = Registry(args.registry)
    try:  # refused before any work
        resolved = resolve_request(Overrides(**purifier_overrides(args)), args.model, registry)
    except ValueError as e:  # pydantic's ValidationError and FilterError included
        sys.exit(f"pureebm: {e}")
    speedups = Speedups(channels_last=args.channels_last, bf16=args.bf16, compile=args.compile)
    model = None if resolved.model is None else registry.load(resolved.model, device)
    purifier = purifier_for(
        resolved.purifier, model, lambda ref: registry.load(ref, device), device, speedups
    )
    scorer = scorer_for(model, device, speedups) if resolved.filter is not None else None
    try:
        if not args.input.exists():
            sys.exit(f"pureebm: {args.input}: no such file or folder")
        container = open_container(args.input)
        output = output_path(container.kind, args.input, args.output, args.overwrite)
        if args.report and args.report.exists() and not args.overwrite:
            sys.exit(f"pureebm: {args.report} exists: pass --overwrite to replace it")
    except (OSError, FormatError) as e:
        sys.exit(f"pureebm: {e}")
    total = len(container.image_names())
    print(
        f"{args.input}: {container.kind}, {total} images; {purifier.name} on {device}"
        + (f", filter={resolved.filter}" if resolved.filter is not None else ""),
        file=sys.stderr,
    )
    started = time.perf_counter()
    with tqdm(total=total, unit="img", desc="purify") as bar:

        def advance(_: PurifiedImage) -> None:
            bar.update(1)

        def selected(count: int) -> None:  # the filter passes the others through
            bar.total = count
            bar.refresh()

        energies = purify_container(
            container,
            output,
            purifier,
            args.batch_size,
            args.seed,
            advance,
            filter=resolved.filter,
            scorer=scorer,
            threshold=model.manifest.energy_threshold if model else None,
            on_selected=selected,
        )
    seconds = time.perf_counter() - started
    purified = sum(row.purified for row in energies)
    if args.report:
        with atomic_path(args.report) as partial:
            partial.write_text(json.dumps([row._asdict() for row in energies], indent=1))
    print(
        f"purified {purified} of {total} images in {seconds:.1f} s "
        f"({total / seconds:.2f} images/s) -> {output}"
    )
