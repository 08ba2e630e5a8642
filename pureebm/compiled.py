"""Compiled graphs for the chains (``Speedups.compile``): built once per model and
setting, and always run at one batch shape.

torch.compile specialises a graph to its input shapes and to the objects its code
closes over. A graph rebuilt for every batch, or a last batch of another size,
compiles again (and after a few recompilations torch falls back to eager), which is
how compiling once made purification slower than eager. So each compiled function
is kept per model (``once``), and ``FixedBatch`` pads a smaller batch to the largest
one it has run, repeating its last row, makes every input contiguous (a graph is
specialised to strides too), and drops the padding from the result.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

_BUILT: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


def once(model: nn.Module, key: Hashable, build: Callable[[], Any]) -> Any:
    """``build()`` the first time (model, key) is asked for; the same object after."""
    built = _BUILT.setdefault(model, {})
    if key not in built:
        built[key] = build()
    return built[key]


def padded_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with its last row repeated up to ``rows`` rows."""
    if len(x) >= rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


class FixedBatch:
    """``function(*tensors)`` compiled for static shapes; every call runs at the
    largest batch seen so far (the first batch of a job, as a rule)."""

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        self.function = torch.compile(function, dynamic=False)
        self.rows = 0

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        n = len(tensors[0])
        self.rows = max(self.rows, n)
        # one layout too: a graph is specialised to its inputs' strides
        return self.function(*(padded_rows(t, self.rows).contiguous() for t in tensors))[:n]
