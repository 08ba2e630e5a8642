"""The size of the tree that travels to a lent GPU: what git tracks, the untracked
files it does not ignore, and the ignored paths a visit carries (``.whl``). The
device tool takes 64 MiB in all; a visit keeps under 60 MiB.

    python -m bench.travel_size [CARRIED ...]   # exits 1 over the limit
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60


def travelling_files(root: Path = ROOT) -> list[Path]:
    """Tracked files and untracked ones that git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return [root / name for name in listed.decode().split("\0") if name]


def size_mib(root: Path = ROOT, carried: list[str] = ()) -> float:
    files = [p for p in travelling_files(root) if p.is_file()]
    for path in carried:
        folder = root / path
        files += [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return sum(p.stat().st_size for p in set(files)) / 2**20


def main() -> None:
    carried = sys.argv[1:]
    mib = size_mib(ROOT, carried)
    verdict = "fits" if mib <= LIMIT_MIB else "is over"
    print(f"the tree that travels (carrying {carried or 'nothing'}): {mib:.1f} MiB, "
          f"{verdict} the {LIMIT_MIB} MiB limit")  # fmt: skip
    sys.exit(0 if mib <= LIMIT_MIB else 1)


if __name__ == "__main__":
    main()
