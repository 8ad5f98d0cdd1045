"""The vision-to-LLM projector: `(..., D_v)` -> `(..., D)`."""

from __future__ import annotations

import re

from torch import nn


def build_projector(projector_type: str, vision_width: int, hidden_size: int) -> nn.Module:
    """'linear', 'identity' or 'mlp{N}x_gelu' (N Linear layers, exact GELU between them).

    'mlp2x_gelu' gives the checkpoint keys `mm_projector.0.*` and `mm_projector.2.*`.
    """
    if projector_type == "linear":
        return nn.Linear(vision_width, hidden_size)
    if projector_type == "identity":
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match is None:
        raise ValueError(f"Unknown mm_projector_type {projector_type!r}.")
    layers: list[nn.Module] = [nn.Linear(vision_width, hidden_size)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
    return nn.Sequential(*layers)
