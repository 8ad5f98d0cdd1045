"""Independent FLOP counts: `torch.utils.flop_counter.FlopCounterMode` on a real forward.

Two uses:

* `counted_flops(model, input_ids, images)` runs the model's own path (`embed_multimodal`, the
  prefill forward with `logits_to_keep=1`, one decode step) on real tensors and attributes the
  FLOPs to components with forward hooks; the tests compare it with the analytic counter.
* `meta_flops(config, text_tokens)` builds the model on the meta device (no memory) and runs each
  component on meta tensors, which cross-checks the analytic counter at the real 7B/8B shapes.
  `embed_multimodal` cannot run on meta (it reads tensor values to find placeholders and padding),
  so this path calls the components directly, and pre-fusion without its mask (the mask does not
  change the FLOPs: every kernel counted here computes the full square).

FlopCounterMode counts matmuls, convolutions and SDPA kernels; its table lacks the CPU flash
kernel, which `COUNTED_KERNELS` adds with the same formula as the CUDA ones, and MKL's packed
linear (`llavamini.model.packed_linear`), counted as the matmul it is.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from llavamini.bench.flops import prompt_lengths
from llavamini.model import LlavaMiniConfig, LlavaMiniForCausalLM
from llavamini.model.modules import COMPONENTS
from llavamini.model.packed_linear import mkl_packing_available


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of `_scaled_dot_product_flash_attention_for_cpu` (scores + weighted sum)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _mkl_linear_flops(input_shape, packed_shape, weight_shape, *args, **kwargs) -> int:
    """FLOPs of `mkl._mkl_linear` (the vision tower's packed linears on a CPU), as a matmul's."""
    rows = math.prod(input_shape[:-1])
    return 2 * rows * weight_shape[0] * weight_shape[1]


COUNTED_KERNELS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
"""Kernels added to FlopCounterMode's table (`new_counter` adds MKL's packed linear where this
torch has it)."""


@contextmanager
def attribute_flops(counter: FlopCounterMode, modules: dict[str, nn.Module]) -> Iterator[dict]:
    """Add to `totals[name]` the FLOPs counted while `modules[name]` runs (summed over calls).

    Yields the `totals` dict (filled as the modules run)."""
    totals: dict[str, int] = defaultdict(int)
    handles = []
    for name, module in modules.items():
        if module is None:
            continue

        def before(_module, _args, name=name):
            totals[name] -= counter.get_total_flops()

        def after(_module, _args, _output, name=name):
            totals[name] += counter.get_total_flops()

        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    try:
        yield totals
    finally:
        for handle in handles:
            handle.remove()


def new_counter() -> FlopCounterMode:
    kernels = dict(COUNTED_KERNELS)
    if mkl_packing_available():
        kernels[torch.ops.mkl._mkl_linear] = _mkl_linear_flops
    return FlopCounterMode(display=False, custom_mapping=kernels)


@torch.no_grad()
def counted_flops(
    model: LlavaMiniForCausalLM, input_ids: torch.Tensor, images: torch.Tensor
) -> dict[str, int]:
    """FLOPs of the model's own prefill path and first decode step, by component.

    Args:
        model: any LlavaMiniForCausalLM (real tensors).
        input_ids: `(1, L + 1)` with one `IMAGE_TOKEN_INDEX`.
        images: `(1, parts, 3, H, W)`.

    Returns:
        the keys of `flops.count_flops` (`executed` convention).
    """
    inner = model.model
    counter = new_counter()
    modules = {name: getattr(inner, attr) for name, attr in COMPONENTS.items()}
    with counter, attribute_flops(counter, modules) as totals:
        embeds, mask, _, positions = inner.embed_multimodal(input_ids, None, None, images)
        out = model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
    counts = {name: totals.get(name, 0) for name in COMPONENTS}
    counts["llm_prefill"] = counter.get_total_flops() - sum(counts.values())
    counts["prefill_total"] = counter.get_total_flops()
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
    decode_counter = new_counter()
    with decode_counter:
        model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values)
    counts["decode_token"] = decode_counter.get_total_flops()
    return counts


@torch.no_grad()
def meta_flops(config: LlavaMiniConfig, text_tokens: int) -> dict[str, int]:
    """FlopCounterMode counts of each component on a meta-device model (no weights allocated).

    Same keys as `flops.count_flops` (`executed` convention)."""
    lengths = prompt_lengths(config, text_tokens)
    counts: dict[str, int] = defaultdict(int)
    with torch.device("meta"):
        model = LlavaMiniForCausalLM(config).eval()
        inner = model.model
        size = config.vision_config.image_size
        select_cls = config.mm_vision_select_feature == "cls_patch"
        counter = new_counter()
        with counter:

            def count(name: str, module: nn.Module, *args) -> torch.Tensor:
                before = counter.get_total_flops()
                output = module(*args)
                counts[name] += counter.get_total_flops() - before
                return output

            count("vision_tower", inner.vision_tower, torch.empty(lengths.parts, 3, size, size))
            context_tokens = lengths.context + lengths.parts * select_cls
            count(
                "projector",
                inner.mm_projector,
                torch.empty(1, context_tokens, config.mm_hidden_size),
            )
            if inner.compressor is not None:
                grid = torch.empty(1, lengths.compressor_input, config.mm_hidden_size)
                compressed = count("compressor", inner.compressor, grid)
                count("projector", inner.mm_projector, compressed)
            if len(inner.prefusion_layers):
                before = counter.get_total_flops()
                unread = lengths.context if inner.compressor is not None else 0
                run_prefusion(inner, lengths.prefusion, unread)
                counts["prefusion"] += counter.get_total_flops() - before
            embeds = torch.empty(1, lengths.llm, config.hidden_size)
            before = counter.get_total_flops()
            out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
            counts["llm_prefill"] = counter.get_total_flops() - before
        decode_counter = new_counter()
        with decode_counter:
            token = torch.zeros(1, 1, dtype=torch.long)
            model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    result = {name: counts[name] for name in (*COMPONENTS, "llm_prefill")}
    result["prefill_total"] = counter.get_total_flops()
    result["decode_token"] = decode_counter.get_total_flops()
    return result


def run_prefusion(inner: nn.Module, length: int, unread: int) -> torch.Tensor:
    """Pre-fusion over `length` positions, all kept, the first `unread` not read. No padding
    mask (`keep=None`): building one reads tensor values, which the meta device has not."""
    hidden = torch.empty(1, length, inner.config.hidden_size)
    return inner.prefusion_layers(hidden, None, inner.rotary_emb, unread=unread)
