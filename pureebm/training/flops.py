"""What a training update costs in floating-point operations, and what the card could
do. The counter applies PyTorch's FLOP formulas (those of ``FlopCounterMode``: the
matmuls and convolutions, forward and backward; elementwise work is left out, as MFU
figures do) to every operation a piece of work runs. It watches operations, not
modules, so it also counts a gradient taken with ``torch.autograd.grad``, which
``FlopCounterMode``'s module tracking refuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets,
# matched against torch.cuda.get_device_name in this order.
BF16_DENSE_PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
}


class FlopCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if (formula := flop_registry.get(func._overloadpacket)) is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def counted_flops(work: Callable[[], object]) -> int:
    """The FLOPs of one call of ``work`` (run for real, once)."""
    with FlopCounter() as counter:
        work()
    return counter.flops


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card (or a CPU) not in the table."""
    for card, peak in BF16_DENSE_PEAK_TFLOPS.items():
        if card in device_name:
            return peak
    return None
