"""Fast paths, each measured before and after on the same model and inputs (runs interleaved).

* attention kernel: transformers' SDPA against eager attention (CLIP, pre-fusion and the LLM);
* pre-fusion rows: the last pre-fusion layer's MLP on the read rows only (compressed tokens and
  text) against every row (`PreFusionLayers.skip_unread_rows`);
* dtype: bfloat16 against float32;
* compressor: attention weights not materialised at inference (`need_weights=False`, which lets
  `nn.MultiheadAttention` use the fused SDPA kernel) against returning them;
* decode: a static KV cache, then `torch.compile` of the decode step, against the dynamic cache
  (asked for with flags: compiling takes minutes on a CPU and pays on a GPU).

Batched video frames are measured in `video` (chunk 1 against a larger chunk).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace
from functools import partial

import torch

from llavamini.bench.timing import (
    GenerationCase,
    decode_step,
    median,
    time_calls,
    time_cases,
)
from llavamini.model import LlavaMiniForCausalLM
from llavamini.model.prefusion import PreFusionLayers

logger = logging.getLogger(__name__)


def speedup_row(
    path: str,
    variant: str,
    metric: str,
    before: tuple[str, float],
    after: tuple[str, float],
    higher_is_better: bool,
    same_output: bool | None,
) -> dict:
    """One before/after row; `speedup` > 1 means the fast path is faster."""
    (before_name, before_value), (after_name, after_value) = before, after
    ratio = after_value / before_value if higher_is_better else before_value / after_value
    return {
        "path": path,
        "variant": variant,
        "metric": metric,
        "before": before_name,
        "before_value": before_value,
        "after": after_name,
        "after_value": after_value,
        "speedup": ratio,
        "same_output": same_output,
    }


def generation_rows(path: str, variant: str, results: dict, before: str, after: str) -> list[dict]:
    """TTFT and decode rows for a before/after pair of `time_cases` results."""
    same = results[before].tokens == results[after].tokens
    return [
        speedup_row(
            path,
            variant,
            metric,
            (before, getattr(results[before], metric)),
            (after, getattr(results[after], metric)),
            higher_is_better,
            same,
        )
        for metric, higher_is_better in (("ttft_ms", False), ("decode_tokens_per_s", True))
    ]


def attention_kernel_rows(
    variant: str, case: GenerationCase, warmup: int, repeats: int
) -> list[dict]:
    """Eager against SDPA attention on one model (switched before each run; SDPA restored)."""
    model = case.model
    cases = {
        name: replace(case, prepare=partial(model.set_attn_implementation, name))
        for name in ("eager", "sdpa")
    }
    try:
        results = time_cases(cases, warmup, repeats)
    finally:
        model.set_attn_implementation("sdpa")
    return generation_rows("attention kernel", variant, results, "eager", "sdpa")


def prefusion_last_layer_rows(
    variant: str, case: GenerationCase, warmup: int, repeats: int
) -> list[dict]:
    """The last pre-fusion layer on every row against on the read rows only (time to first
    token; decoding does not run the pre-fusion). Nothing to compare without compressed tokens
    and pre-fusion in torch (llama.cpp's always runs the last layer on the read rows only)."""
    inner = case.model.model
    layers = inner.prefusion_layers
    if inner.compressor is None or not isinstance(layers, PreFusionLayers) or not len(layers):
        return []

    def setting(skip: bool) -> None:
        layers.skip_unread_rows = skip

    cases = {
        "every row": replace(case, prepare=partial(setting, False)),
        "read rows only": replace(case, prepare=partial(setting, True)),
    }
    try:
        results = time_cases(cases, warmup, repeats)
    finally:
        setting(True)
    rows = generation_rows("pre-fusion last layer", variant, results, "every row", "read rows only")
    return [row for row in rows if row["metric"] == "ttft_ms"]


def dtype_rows(variant: str, case: GenerationCase, warmup: int, repeats: int) -> list[dict]:
    """float32 against bfloat16: a bf16 copy of the model (and images) beside the fp32 one.

    bf16 rounds differently, so the greedy tokens of random weights may differ (`same_output`
    False is then expected, not a bug)."""
    model = case.model
    if model.dtype != torch.float32:
        raise ValueError(f"The dtype comparison starts from a float32 model, got {model.dtype}.")
    low = copy.deepcopy(model).to(torch.bfloat16)
    cases = {
        "float32": case,
        "bfloat16": replace(case, model=low, images=case.images.to(torch.bfloat16)),
    }
    results = time_cases(cases, warmup, repeats)
    del low
    return generation_rows("dtype", variant, results, "float32", "bfloat16")


@torch.no_grad()
def compressor_rows(
    variant: str, model: LlavaMiniForCausalLM, frames: int, warmup: int, repeats: int
) -> list[dict]:
    """The compressor on `frames` images' features, returning attention weights or not."""
    compressor = model.model.compressor
    if compressor is None or not hasattr(compressor, "attn"):
        return []
    grid = model.model.vision_tower.grid_size
    features = torch.randn(
        frames, grid * grid, model.config.mm_hidden_size, device=model.device, dtype=model.dtype
    )
    calls = {
        "need_weights=True": partial(compressor, features, return_attention=True),
        "need_weights=False": partial(compressor, features, return_attention=False),
    }
    runs = time_calls(calls, warmup, repeats, model.device)
    # The fused and the weight-returning kernels round differently: compare with a tolerance.
    same = torch.allclose(
        compressor(features, return_attention=True)[0],
        compressor(features, return_attention=False),
        rtol=1e-4,
        atol=1e-5,
    )
    return [
        speedup_row(
            "compressor attention weights",
            f"{variant}, {frames} images",
            "ms",
            ("need_weights=True", median(runs["need_weights=True"])),
            ("need_weights=False", median(runs["need_weights=False"])),
            False,
            same,
        )
    ]


def static_cache_rows(
    variant: str, case: GenerationCase, warmup: int, repeats: int, compile_decode: bool
) -> list[dict]:
    """Dynamic KV cache against a static one, and (with `compile_decode`) against a static cache
    with the decode step compiled by `torch.compile` (CUDA graphs on a GPU)."""
    cases = {
        "dynamic cache": case,
        "static cache": replace(case, static_cache=True, static_cache_object=None),
    }
    if compile_decode:
        mode = "reduce-overhead" if case.model.device.type == "cuda" else None
        compiled = torch.compile(decode_step, mode=mode)
        cases["static cache + compile"] = replace(
            case, static_cache=True, static_cache_object=None, step=compiled
        )
        # Compilation happens on the first calls: give them their own warm-up runs.
        logger.info("Compiling the decode step (mode=%s); this takes a while.", mode)
        warmup = max(warmup, 2)
    results = time_cases(cases, warmup, repeats)
    rows = []
    for after in list(cases)[1:]:
        rows += [
            row
            for row in generation_rows("decode cache", variant, results, "dynamic cache", after)
            if row["metric"] == "decode_tokens_per_s"
        ]
    return rows
