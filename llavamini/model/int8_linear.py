"""8-bit weight-only linears on a CPU through ATen's int8 matmul.

A quantized 8-bit CPU load stores each LLM weight as torchao's `Int8Tensor`: int8 `qdata`
[out, in] and a `scale` per output channel. In eager mode torchao multiplies by widening the
whole int8 weight to the activation dtype on every call; ATen's `_weight_int8pack_mm` reads the
int8 weight as it is. For one Llama-3.1-8B MLP weight (4096 -> 14336, bfloat16 activations, 2
threads on this project's AVX2 machine) that is 3.9 ms instead of 55 ms for one decoded row, and
1.0 s instead of 3.4 s for 617 rows (docs/benchmarks.md, "Quantized inference on a CPU").

`Int8KernelLinear` takes that kernel where it applies (`int8_kernel_applies`): a CPU input with
no gradient to track, a per-output-channel int8 weight, and an ATen that still has the operator,
which is private (underscore-named) and therefore looked up, never assumed. Anything else is
torchao's own `F.linear`, the same numbers up to bfloat16 rounding. Parameters, state-dict keys
and `save_pretrained` stay torchao's: only `forward` differs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from llavamini.model.packed_linear import replace_linears


@functools.cache
def int8_kernel_available() -> bool:
    """Whether this torch has ATen's weight-only int8 matmul."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def int8_channels(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`weight`'s int8 values [out, in] and scales [out] when it is quantized to int8 with one
    scale per output channel (torchao's `Int8Tensor` as `Int8WeightOnlyConfig` makes it), else
    None."""
    qdata, scale = getattr(weight, "qdata", None), getattr(weight, "scale", None)
    if not isinstance(qdata, torch.Tensor) or not isinstance(scale, torch.Tensor):
        return None
    if qdata.dtype != torch.int8 or qdata.dim() != 2 or scale.numel() != qdata.shape[0]:
        return None
    return qdata, scale.reshape(-1)


def int8_kernel_applies(x: torch.Tensor, linear: nn.Linear) -> bool:
    """Whether `x` may go through ATen's int8 kernel for `linear`, whose weight is int8 per
    output channel (see the module docstring)."""
    if x.device.type != "cpu" or not x.is_floating_point() or not int8_kernel_available():
        return False
    return not (torch.is_grad_enabled() and x.requires_grad)  # the kernel has no backward


class Int8KernelLinear(nn.Linear):
    """An `nn.Linear` with a torchao int8 weight whose CPU forward runs ATen's int8 kernel."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8KernelLinear:
        """An `Int8KernelLinear` sharing `linear`'s parameters."""
        kernel_linear = cls(linear.in_features, linear.out_features, False, device="meta")
        kernel_linear.weight, kernel_linear.bias = linear.weight, linear.bias
        return kernel_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = int8_channels(self.weight)
        if channels is None or not int8_kernel_applies(x, self):
            return F.linear(x, self.weight, self.bias)
        qdata, scale = channels
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), qdata, scale.to(x.dtype))
        out = out.reshape(*x.shape[:-1], qdata.shape[0])
        return out if self.bias is None else out + self.bias.to(out.dtype)


def use_int8_kernel(module: nn.Module) -> int:
    """Replace every plain `nn.Linear` inside `module` whose weight is int8 per output channel
    by an `Int8KernelLinear` sharing its parameters. Returns how many were replaced: 0 when this
    torch lacks the kernel, leaving torchao's path."""
    if not int8_kernel_available():
        return 0
    return replace_linears(
        module,
        lambda linear: (
            None if int8_channels(linear.weight) is None else Int8KernelLinear.from_linear(linear)
        ),
    )
