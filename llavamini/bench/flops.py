"""FLOPs per component, counted from the config alone (no weights are allocated).

Counting rules (one multiply-add is 2 FLOPs):

* every weight matmul (Linear, and CLIP's patch convolution) costs `2 * M * N * K`;
* attention costs `2 * q_len * k_len * head_dim` per head for the scores and as much again for the
  weighted sum, over the full `q_len x k_len` square (what eager attention and the SDPA math and
  CPU kernels compute; a causal flash kernel skips about half of it in prefill);
* element-wise work (norms, activations, softmax, RoPE, residuals) is not counted: below 1% here.

Two conventions:

* `executed`: what `LlavaMiniForCausalLM` runs: the LM head on the last prompt position only
  (`logits_to_keep=1`, as `generate` does), attention products included. The test suite checks it
  against `torch.utils.flop_counter.FlopCounterMode` on a real forward.
* `paper`: what the paper's calflops run evidently counted: weight matmuls only (calflops does not
  see `scaled_dot_product_attention`) and the LM head on every prompt position (a plain forward).
  With 43 text tokens this reproduces Table 14 (see `compare_with_paper`).

Shape notation: L text tokens of the prompt besides the one image placeholder; P = grid**2
patches per picture (576 for CLIP-L/336); parts = 1, or N*N crops + the global view; Q = C*C
compressed tokens; V vision tokens the LLM receives per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from llavamini.bench.configs import build_config, image_parts
from llavamini.model import LlavaMiniConfig
from llavamini.model.configuration_llavamini import head_dim
from llavamini.model.modules import COMPONENTS as MODULE_COMPONENTS

CONVENTIONS = ("executed", "paper")
COMPONENTS = (*MODULE_COMPONENTS, "llm_prefill")
"""Per-image components of time to first token, in pipeline order."""


@dataclass(frozen=True)
class Flops:
    """FLOPs split into weight matmuls and attention products (QK^T and the weighted sum)."""

    matmul: int = 0
    attention: int = 0

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.matmul + other.matmul, self.attention + other.attention)

    def __mul__(self, factor: int) -> Flops:
        return Flops(self.matmul * factor, self.attention * factor)

    def total(self, convention: str = "executed") -> int:
        """FLOPs under `convention` (`paper` leaves the attention products out)."""
        return self.matmul + (self.attention if convention == "executed" else 0)


def linear(tokens: int, in_features: int, out_features: int) -> Flops:
    """`(tokens, in_features) @ (in_features, out_features)`."""
    return Flops(matmul=2 * tokens * in_features * out_features)


def attention(q_len: int, k_len: int, heads: int, head_dim: int) -> Flops:
    """Scores `(q_len, head_dim) @ (head_dim, k_len)` and weighted sum, for each of `heads`."""
    return Flops(attention=2 * 2 * heads * q_len * k_len * head_dim)


def patches_per_picture(config: LlavaMiniConfig) -> int:
    """P: patch tokens of one 336 px picture (576 for CLIP-L/14)."""
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return grid * grid


def vision_tower(config: LlavaMiniConfig, pictures: int) -> Flops:
    """CLIP on `pictures` images: patch convolution, then the encoder layers over P + 1 tokens
    up to `mm_vision_select_layer` (the tower stops there: 23 of CLIP-L's 24 layers at -2)."""
    vision = config.vision_config
    width, patch = vision.hidden_size, vision.patch_size
    tokens = patches_per_picture(config) + 1  # + the class token
    layer = linear(tokens, width, width) * 4  # q, k, v, out
    layer += linear(tokens, width, vision.intermediate_size)
    layer += linear(tokens, vision.intermediate_size, width)
    heads = vision.num_attention_heads
    layer += attention(tokens, tokens, heads, width // heads)
    embed = linear(patches_per_picture(config), 3 * patch * patch, width)
    layers_run = config.mm_vision_select_layer % (vision.num_hidden_layers + 1)
    return (embed + layer * layers_run) * pictures


def projector(config: LlavaMiniConfig, tokens: int) -> Flops:
    """`mm_projector` on `tokens` vision features ('linear', 'identity' or 'mlp{N}x_gelu')."""
    kind = config.mm_projector_type
    if kind == "identity":
        return Flops()
    flops = linear(tokens, config.mm_hidden_size, config.hidden_size)
    if kind.startswith("mlp"):
        depth = int(kind.removeprefix("mlp").split("x")[0])
        flops += linear(tokens, config.hidden_size, config.hidden_size) * (depth - 1)
    return flops


def compressor(config: LlavaMiniConfig, grid_tokens: int) -> Flops:
    """The query compressor over `grid_tokens` features of one image: Q queries cross-attend
    (q, k, v and output projections at the vision width). Average pooling has no matmul."""
    if config.compressor_type != "query":
        return Flops()
    width = config.mm_hidden_size
    queries = config.compressor_size**2
    heads = config.compressor_num_heads
    flops = linear(queries, width, width) * 2  # query and output projections
    flops += linear(grid_tokens, width, width) * 2  # key and value projections
    return flops + attention(queries, grid_tokens, heads, width // heads)


def attention_block(config: LlavaMiniConfig, q_len: int, k_len: int) -> Flops:
    """The self-attention of one decoder layer: `q_len` new tokens attending to `k_len` keys
    (GQA: K and V have `num_key_value_heads` heads)."""
    width, dim = config.hidden_size, head_dim(config)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    flops = linear(q_len, width, heads * dim) + linear(q_len, heads * dim, width)  # q, o
    flops += linear(q_len, width, kv_heads * dim) * 2  # k, v
    return flops + attention(q_len, k_len, heads, dim)


def decoder_layer(config: LlavaMiniConfig, q_len: int, k_len: int) -> Flops:
    """One `LlamaDecoderLayer` (pre-fusion or LLM): attention block and gated MLP."""
    width = config.hidden_size
    flops = linear(q_len, width, config.intermediate_size) * 2  # gate, up
    flops += linear(q_len, config.intermediate_size, width)  # down
    return attention_block(config, q_len, k_len) + flops


def prefusion_flops(config: LlavaMiniConfig, lengths: Lengths, convention: str) -> Flops:
    """The pre-fusion layers over `lengths.prefusion` positions. As executed, with compressed
    tokens, the last layer gives the context rows their attention block only (their output is
    never read; `PreFusionLayers`) and runs whole on the other rows; the paper's reference runs
    every layer on every row."""
    layers = config.prefusion_layer_num
    full = decoder_layer(config, lengths.prefusion, lengths.prefusion)
    if convention == "paper" or not lengths.compressed:
        return full * layers
    read = lengths.prefusion - lengths.context
    last = attention_block(config, lengths.context, lengths.context)
    last += decoder_layer(config, read, lengths.prefusion)
    return full * (layers - 1) + last


def lm_head(config: LlavaMiniConfig, positions: int) -> Flops:
    return linear(positions, config.hidden_size, config.vocab_size)


@dataclass(frozen=True)
class Lengths:
    """Sequence lengths of one single-image prompt (see the module docstring for the letters)."""

    text_tokens: int
    parts: int
    patches: int
    compressed: int
    vision_tokens: int

    @property
    def context(self) -> int:
        """Projected tokens pre-fusion reads before the compressed ones: parts * P."""
        return self.parts * self.patches

    @property
    def compressor_input(self) -> int:
        """Features the compressor reads: P, or the N*N crops stitched (N*N * P)."""
        return self.patches * (self.parts - 1 if self.parts > 1 else 1)

    @property
    def prefusion(self) -> int:
        """Pre-fusion sequence: context + Q + L + the placeholder's row (computed, masked out)."""
        return self.context + self.compressed + self.text_tokens + 1

    @property
    def llm(self) -> int:
        """LLM prompt: L text tokens + V vision tokens."""
        return self.text_tokens + self.vision_tokens


def prompt_lengths(config: LlavaMiniConfig, text_tokens: int) -> Lengths:
    """Lengths for one image at the config's resolution and a prompt of `text_tokens` tokens."""
    parts = image_parts(config)
    compressed = config.compressor_size**2 if config.compressor_type != "none" else 0
    return Lengths(
        text_tokens=text_tokens,
        parts=parts,
        patches=patches_per_picture(config),
        compressed=compressed,
        vision_tokens=config.vision_token_count(parts),
    )


def component_flops(
    config: LlavaMiniConfig, text_tokens: int, convention: str = "executed"
) -> dict[str, Flops]:
    """FLOPs of each component of time to first token for one image, `COMPONENTS` order, plus
    `decode_token`: the first decoded token (it attends to the prompt and itself)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown convention {convention!r}: expected one of {CONVENTIONS}.")
    lengths = prompt_lengths(config, text_tokens)
    select_cls = config.mm_vision_select_feature == "cls_patch"
    projected = lengths.context + lengths.parts * select_cls + lengths.compressed
    prefusion = Flops()
    if config.prefusion_layer_num:
        prefusion = prefusion_flops(config, lengths, convention)
    llm_layer = decoder_layer(config, lengths.llm, lengths.llm)
    head_positions = lengths.llm if convention == "paper" else 1
    decode_layer = decoder_layer(config, 1, lengths.llm + 1)
    return {
        "vision_tower": vision_tower(config, lengths.parts),
        "projector": projector(config, projected),
        "compressor": compressor(config, lengths.compressor_input),
        "prefusion": prefusion,
        "llm_prefill": llm_layer * config.num_hidden_layers + lm_head(config, head_positions),
        "decode_token": decode_layer * config.num_hidden_layers + lm_head(config, 1),
    }


def count_flops(
    config: LlavaMiniConfig, text_tokens: int, convention: str = "executed"
) -> dict[str, int]:
    """`component_flops` as plain FLOP counts, with `prefill_total` (the sum of `COMPONENTS`)."""
    flops = component_flops(config, text_tokens, convention)
    counts = {name: value.total(convention) for name, value in flops.items()}
    counts["prefill_total"] = sum(counts[name] for name in COMPONENTS)
    return counts


def kv_cache_bytes(config: LlavaMiniConfig, tokens: int, bytes_per_value: int = 2) -> int:
    """KV-cache bytes of `tokens` positions: 2 (K, V) * layers * kv_heads * head_dim * bytes."""
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim(config)
    return per_token * bytes_per_value * tokens


PAPER_TEXT_TOKENS = 43
"""Text tokens at which our `paper`-convention counts reproduce Table 14 (the paper states none):
Vicuna-7B's LLM costs 13.214 GFLOPs per position with the LM head, and 8.177 T / 13.214 G = 619 =
576 + 43; the 672 px row gives 38.623 T / 13.214 G = 2923 = 2880 + 43."""

PAPER_TABLE_14 = {
    "llava-1.5": {"vision_tower": 0.349, "projector": 0.024, "llm_prefill": 8.177, "total": 8.55},
    "mini-1": {
        "vision_tower": 0.349,
        "projector": 0.024,
        "compressor": 0.001,
        "prefusion": 0.125,
        "llm_prefill": 1.460,
        "total": 1.96,
    },
    "llava-1.5-hd": {
        "vision_tower": 1.745,
        "projector": 0.121,
        "llm_prefill": 38.623,
        "total": 40.49,
    },
    "mini-hd-1": {
        "vision_tower": 1.745,
        "projector": 0.121,
        "compressor": 0.009,
        "prefusion": 1.183,
        "llm_prefill": 4.131,
        "total": 7.19,
    },
}
"""Paper Table 14 (TFLOPs, LLaVA-v1.5 / LLaVA-Mini, Vicuna-7B, 336 and 672 px). The 672 px
LLaVA-Mini row is the 1-token model: only C = 1 reproduces its sum (see `compare_with_paper`)."""

PAPER_TOTALS = {"mini-4": 2.01, "mini-16": 2.19, "mini-64": 2.90, "mini-hd-64": 8.13}
"""Other totals the paper states (TFLOPs): 4/16/64 tokens (§5.3) and LLaVA-Mini-HD (§5.2 text)."""

PAPER_COMPRESSOR_GFLOPS = {"mini-1": 2.42, "mini-4": 2.44}
"""Table 8: the query-based compressor's cost (GFLOPs) with 1 and 4 tokens."""

TOLERANCE = 0.05
"""Relative difference counted as a match with the paper."""


def relative_difference(ours: float, paper: float) -> float:
    return (ours - paper) / paper


def compare_with_paper(llm: str = "vicuna-7b", text_tokens: int = PAPER_TEXT_TOKENS) -> list[dict]:
    """Our counts next to the paper's, one row per (variant, component), in TFLOPs.

    Each row has `ours_paper` (the `paper` convention), `ours_executed`, their relative
    differences from the paper and `match` (within `TOLERANCE` under the `paper` convention).
    Beside the components, rows `prefusion+llm` (the two added, whose split the paper draws
    differently), `prefusion (one layer)` (one of the pre-fusion layers against the paper's
    pre-fusion entry) and `total`; compressor rows also against Table 8.
    """
    rows = []
    variants = list(PAPER_TABLE_14) + list(PAPER_TOTALS)
    for variant in variants:
        config = build_config("8b" if llm == "llama-3.1-8b" else "7b", variant, llm=llm)
        ours = {c: count_flops(config, text_tokens, c) for c in CONVENTIONS}
        for conv in CONVENTIONS:
            ours[conv]["prefusion+llm"] = ours[conv]["prefusion"] + ours[conv]["llm_prefill"]
            ours[conv]["total"] = ours[conv]["prefill_total"]
        paper = dict(PAPER_TABLE_14.get(variant, {"total": PAPER_TOTALS.get(variant)}))
        if "prefusion" in paper:
            paper["prefusion+llm"] = round(paper["prefusion"] + paper["llm_prefill"], 3)
            paper["prefusion (one layer)"] = paper["prefusion"]
            for conv in CONVENTIONS:
                ours[conv]["prefusion (one layer)"] = ours[conv]["prefusion"] // (
                    config.prefusion_layer_num
                )
        if variant in PAPER_COMPRESSOR_GFLOPS:
            paper["compressor (Table 8)"] = PAPER_COMPRESSOR_GFLOPS[variant] / 1000
            for conv in CONVENTIONS:
                ours[conv]["compressor (Table 8)"] = ours[conv]["compressor"]
        for component, value in paper.items():
            if value is None:
                continue
            row = {"variant": variant, "component": component, "paper": value}
            for conv in CONVENTIONS:
                tflops = ours[conv][component] / 1e12
                row[f"ours_{conv}"] = tflops
                row[f"diff_{conv}"] = relative_difference(tflops, value)
            row["match"] = abs(row["diff_paper"]) <= TOLERANCE
            rows.append(row)
    return rows
