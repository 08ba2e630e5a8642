"""Atomic writes: readers see the whole file (or folder) or nothing.

    with atomic_path(target) as partial:
        write(partial)          # a file, or a folder made there
    # target now holds what was written; after an error, nothing is left behind

The partial path is a hidden sibling of the target (same filesystem, so the
final rename is atomic). A folder target must not exist yet: two writers racing
for the same name cannot both win.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    partial = target.with_name(f".partial-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        yield partial
        if partial.is_dir():
            os.rename(partial, target)
        else:
            os.replace(partial, target)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise
