"""The analytic FLOP counter against hand counts, against FlopCounterMode, and against the paper."""

import pytest
import torch

from llavamini import LlavaMiniForCausalLM
from llavamini.bench.configs import build_config
from llavamini.bench.flopcount import counted_flops, meta_flops
from llavamini.bench.flops import (
    PAPER_TEXT_TOKENS,
    compare_with_paper,
    count_flops,
    kv_cache_bytes,
)
from llavamini.constants import IMAGE_TOKEN_INDEX
from tests.conftest import TEST_IMAGE_SIZE, VOCAB, make_config

TEXT_TOKENS = 9


def tiny_inputs(config, seed: int = 0):
    """`(1, 10)` ids with the placeholder at 3, and `(1, parts, 3, 56, 56)` images."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (1, TEXT_TOKENS + 1), generator=generator)
    ids[0, 3] = IMAGE_TOKEN_INDEX
    parts = 1 if config.resolution_ratio == 1 else config.resolution_ratio**2 + 1
    size = TEST_IMAGE_SIZE
    return ids, torch.randn(1, parts, 3, size, size, generator=generator)


def test_tiny_counts_equal_a_hand_count():
    """The test config (conftest): CLIP 56 px / patch 14 (P = 16 patches, 17 tokens), width 64,
    MLP 128, 2 layers of which the first runs (select layer -2), 4 heads; projector mlp2x
    64 -> 64; 1 query, 4 heads; Llama width 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads,
    vocab 96, 1 pre-fusion layer; 9 text tokens."""
    counts = count_flops(make_config(), TEXT_TOKENS)
    clip_layer = 4 * 2 * 17 * 64 * 64 + 2 * 2 * 17 * 64 * 128 + 2 * 2 * 17 * 17 * 64
    assert counts["vision_tower"] == 2 * 16 * (3 * 14 * 14) * 64 + clip_layer == 2_392_320
    # 16 context features + 1 compressed token through two 64x64 layers.
    assert counts["projector"] == (16 + 1) * 2 * (64 * 64 + 64 * 64) == 278_528
    # q and out projections of 1 query, k and v of 16 features, attention 1 x 16.
    assert counts["compressor"] == 2 * 2 * 64 * 64 + 2 * 2 * 16 * 64 * 64 + 2 * 2 * 16 * 64
    # Pre-fusion reads 16 context + 1 compressed + 9 text + the placeholder's row = 27 positions.
    # Its one (last) layer: the 16 context rows get the attention block only (q, k, v, o and
    # 16 x 16 attention); the 11 other rows the whole layer, attending to all 27.
    context_rows = 2 * 16 * (64 * 64 + 2 * 64 * 32 + 64 * 64) + 2 * 2 * 16 * 16 * 64
    read_rows = 2 * 11 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 2 * 2 * 11 * 27 * 64
    assert counts["prefusion"] == context_rows + read_rows == 1_345_792
    # The reference runs the whole layer on every row (the `paper` convention counts that).
    layer_27 = 2 * 27 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 2 * 2 * 27 * 27 * 64
    attention_products = 2 * 2 * 27 * 27 * 64
    assert count_flops(make_config(), TEXT_TOKENS, "paper")["prefusion"] == (
        layer_27 - attention_products
    )
    # The LLM reads 9 text + 1 vision token; the LM head runs on the last position only.
    layer_10 = 2 * 10 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 2 * 2 * 10 * 10 * 64
    assert counts["llm_prefill"] == 2 * layer_10 + 2 * 64 * VOCAB
    layer_decode = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 2 * 2 * 11 * 64
    assert counts["decode_token"] == 2 * layer_decode + 2 * 64 * VOCAB


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"compressor_type": "none", "prefusion_layer_num": 0},
        {"compressor_size": 2, "resolution_ratio": 2},
        {"compressor_type": "avg_pool", "compressor_size": 2},
        {"compressor_type": "none", "prefusion_layer_num": 2, "num_key_value_heads": 2},
    ],
    ids=["mini", "llava-1.5-mode", "hd", "avg-pool", "prefusion-without-compressor"],
)
def test_counter_equals_flop_counter_mode_on_a_real_forward(overrides):
    """Independent count: FlopCounterMode over the model's own embed + prefill + decode step."""
    config = make_config(**overrides)
    torch.manual_seed(0)
    model = LlavaMiniForCausalLM(config).eval()
    ids, images = tiny_inputs(config)
    assert counted_flops(model, ids, images) == count_flops(config, TEXT_TOKENS)


def test_counter_equals_flop_counter_mode_at_real_scale_on_meta():
    config = build_config("8b", "mini-hd-64")
    assert meta_flops(config, 64) == count_flops(config, 64)


def test_kv_cache_bytes_per_image():
    """2 (K, V) * layers * kv heads * head dim * 2 bytes (bf16) per position."""
    vicuna = build_config("7b", "llava-1.5")
    assert kv_cache_bytes(vicuna, 1) == 2 * 32 * 32 * 128 * 2 == 512 * 1024
    assert kv_cache_bytes(vicuna, 576) == 288 * 2**20
    llama = build_config("8b", "mini-1")
    assert kv_cache_bytes(llama, 1) == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert kv_cache_bytes(llama, 576, bytes_per_value=4) == 2 * 72 * 2**20
    tiny = make_config()
    assert kv_cache_bytes(tiny, 1, bytes_per_value=4) == 2 * 2 * 2 * 16 * 4


def test_stated_lengths_reproduce_the_paper_where_it_can_be():
    """With 43 text tokens: LLaVA-1.5's rows, every total and the pre-fusion + LLM sums match
    Table 14 within 5%; the split between pre-fusion and LLM and Table 14's compressor do not
    (Table 8's compressor does)."""
    rows = {(r["variant"], r["component"]): r for r in compare_with_paper("vicuna-7b")}
    assert PAPER_TEXT_TOKENS == 43
    matching = [
        ("llava-1.5", "vision_tower"),
        ("llava-1.5", "projector"),
        ("llava-1.5", "llm_prefill"),
        ("llava-1.5-hd", "llm_prefill"),
        ("mini-1", "prefusion+llm"),
        ("mini-hd-1", "prefusion+llm"),
        ("mini-hd-1", "prefusion (one layer)"),
        ("mini-1", "compressor (Table 8)"),
        ("mini-4", "compressor (Table 8)"),
    ]
    matching += [(v, "total") for v in ("llava-1.5", "mini-1", "mini-4", "mini-16", "mini-64")]
    matching += [(v, "total") for v in ("llava-1.5-hd", "mini-hd-1", "mini-hd-64")]
    for key in matching:
        assert rows[key]["match"], (key, rows[key])
    for key in [("mini-1", "prefusion"), ("mini-1", "llm_prefill"), ("mini-1", "compressor")]:
        assert not rows[key]["match"], (key, rows[key])
