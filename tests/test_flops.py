"""The FLOP counter against the closed forms of a matmul and a convolution."""

from __future__ import annotations

import torch
from torch import nn

from pureebm.training.flops import bf16_peak_tflops, counted_flops


def test_a_linear_layer_costs_two_flops_per_multiply_add_forward_and_three_times_with_backward():
    n, a, b = 8, 16, 32
    layer = nn.Linear(a, b, bias=False)
    x = torch.randn(n, a, requires_grad=True)
    assert counted_flops(lambda: layer(x)) == 2 * n * a * b
    assert counted_flops(lambda: layer(x).sum().backward()) == 3 * 2 * n * a * b


def test_a_convolution_costs_its_multiply_adds_at_every_output_pixel():
    n, c_in, c_out, k, side = 2, 3, 5, 3, 8
    conv = nn.Conv2d(c_in, c_out, k, padding=1, bias=False)
    x = torch.randn(n, c_in, side, side)
    assert counted_flops(lambda: conv(x)) == 2 * n * c_out * side * side * c_in * k * k


def test_the_peak_is_the_cards_and_none_for_a_cpu():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("CPU x86_64") is None


def test_a_gradient_taken_with_autograd_grad_is_counted():
    n, a = 4, 8
    layer = nn.Linear(a, 1, bias=False)
    x = torch.randn(n, a, requires_grad=True)

    def input_gradient() -> None:
        torch.autograd.grad(layer(x).sum(), x)

    assert counted_flops(input_gradient) == 2 * 2 * n * a  # forward, then d/dx only
