"""Linear layers of the frozen vision tower with their weights packed once for MKL, on a CPU.

Every image puts the same number of rows through the tower's linears (577 for CLIP-L/336), and
on a CPU MKL re-packs a linear's weight on every call. `PackedLinear` packs it once for that row
count (MKL's `sgemm_pack`, through `torch.ops.mkl._mkl_linear`) and reuses it: one image's
prefill runs about 6% faster (docs/benchmarks.md). The packed copy costs as much memory again as
the weights packed (1.2 GB for CLIP-L in float32), made once before the first one-image forward
on a CPU, never on a GPU. Results agree with `nn.Linear` to float32 rounding (the same sums,
blocked differently).

The packed path is taken only where it applies (`packing_applies`): float32 on a CPU, torch built
with MKL, nothing that needs a gradient, not under DeepSpeed ZeRO-3 (whose parameters are
gathered anew for every forward), and exactly the row count it was packed for. Anything else is
a plain `F.linear` on the same parameters. Parameters and state-dict keys are `nn.Linear`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled


@functools.cache
def mkl_packing_available() -> bool:
    """Whether this torch has MKL's packed linear (x86 builds with MKL)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def packing_applies(x: torch.Tensor, parameters: list[torch.Tensor | None]) -> bool:
    """Whether `x` may go through packed weights among `parameters` (None for a missing bias):
    see the module docstring (the row count aside)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not mkl_packing_available():
        return False
    tensors = [x, *(p for p in parameters if p is not None)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not is_deepspeed_zero3_enabled()


class PackedLinear(nn.Linear):
    """An `nn.Linear` that keeps its weight packed by MKL for inputs of `rows` rows.

    The packing is made at the first call that can use it and made again when the weight
    changes (another tensor, or written in place); moving, casting, copying or pickling the
    module drops it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, rows: int, **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self.rows = rows
        self._packed: tuple[tuple[int, int], torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows: int) -> PackedLinear:
        """A `PackedLinear` sharing `linear`'s parameters."""
        packed = cls(linear.in_features, linear.out_features, False, rows, device="meta")
        packed.weight, packed.bias = linear.weight, linear.bias
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows != self.rows or not packing_applies(x, [self.weight, self.bias]):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkl._mkl_linear(x, self.packed_weight(), self.weight, self.bias, rows)

    def packed_weight(self) -> torch.Tensor:
        """The weight packed for `rows` rows (packed again if the weight changed)."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version)
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), self.rows)
            self._packed = (key, packed)
        return self._packed[1]

    def __getstate__(self):
        # Copies and pickles leave the packing out (an opaque tensor, rebuilt on first use).
        return dict(self.__dict__, _packed=None)

    def _apply(self, fn, recurse=True):
        self._packed = None
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rows={self.rows}"


def prepack(module: nn.Module, x: torch.Tensor, rows: int) -> None:
    """Make the packings that a forward of `x` through `module` with `rows` rows per linear
    will use, all at once, before that forward allocates anything.

    Made one by one in the middle of the first forward, the long-lived packed buffers would sit
    between that forward's activations in the heap; the next forward, without them, would then
    grow the heap by ~36 MiB (CLIP-L) once, as measured on a video's frames."""
    linears = [m for m in module.modules() if isinstance(m, PackedLinear) and m.rows == rows]
    if linears and packing_applies(x, [linears[0].weight]):
        for linear in linears:
            linear.packed_weight()


def replace_linears(module: nn.Module, replacement: Callable[[nn.Linear], nn.Module | None]) -> int:
    """Replace every plain `nn.Linear` inside `module` (subclasses, such as
    `nn.MultiheadAttention`'s projection, are left alone) by `replacement(linear)`, unless that
    is None. Returns how many were replaced. Shared with `llavamini.model.int8_linear`."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and (new := replacement(child)) is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced


def pack_linears(module: nn.Module, rows: int) -> int:
    """Replace every plain `nn.Linear` inside `module` by a `PackedLinear` for `rows` rows that
    shares its parameters (see `replace_linears`). Returns how many were replaced."""
    return replace_linears(module, lambda linear: PackedLinear.from_linear(linear, rows))
