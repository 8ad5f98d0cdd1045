"""Budget checks shared by the methods."""

from __future__ import annotations

from llavamini.model.reduction.base import TokenReductionError


def check_budget(method: str, tokens: int | None, available: int) -> int:
    """`tokens`, checked to be given and within 1..available (`TokenReductionError` if not)."""
    if tokens is None:
        raise TokenReductionError(f"{method} needs a budget: vision tokens per image (>= 1).")
    if not 1 <= tokens <= available:
        raise TokenReductionError(
            f"{method}: a budget of {tokens} vision tokens per image is outside 1..{available} "
            f"(the tokens this vision encoder gives)."
        )
    return tokens
