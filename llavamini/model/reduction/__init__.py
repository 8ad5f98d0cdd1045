"""Training-free vision-token reduction at inference (issue 29; docs/token_reduction.md).

`TokenReduction(method, tokens)` names a method of `METHODS` and a budget of vision tokens per
image; `model.set_token_reduction(...)` (or `ModelSpec.reduction`) applies it to a checkpoint
without a compressor (LLaVA-1.5 mode), so the trained compressors and these methods run in the
same harness.
"""

from llavamini.model.reduction.base import (
    Reduced,
    TokenReduction,
    TokenReductionError,
    VisionEvidence,
)
from llavamini.model.reduction.registry import (
    METHODS,
    Method,
    check_applicable,
    method_of,
    reduce_images,
)

__all__ = [
    "METHODS",
    "Method",
    "Reduced",
    "TokenReduction",
    "TokenReductionError",
    "VisionEvidence",
    "check_applicable",
    "method_of",
    "reduce_images",
]
