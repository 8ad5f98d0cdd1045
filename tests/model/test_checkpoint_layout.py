"""Checkpoint keys are public API: the release's names, shapes and parameter counts.

The expected layout is the release's (docs/compatibility.md K1: Llama-3.1-8B, C = 1, 4 pre-fusion
layers), checked on a model built on the meta device (no memory), and the reference's own key list
of its tiny checkpoint when ../shared is present.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llavamini import LlavaMiniConfig, LlavaMiniForCausalLM
from tests.conftest import make_model, shared_path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASE_CONFIG = FIXTURES / "llava-mini-llama-3.1-8b.config.json"

LLAMA_LAYER = {
    "self_attn.q_proj.weight": (4096, 4096),
    "self_attn.k_proj.weight": (1024, 4096),
    "self_attn.v_proj.weight": (1024, 4096),
    "self_attn.o_proj.weight": (4096, 4096),
    "mlp.gate_proj.weight": (14336, 4096),
    "mlp.up_proj.weight": (14336, 4096),
    "mlp.down_proj.weight": (4096, 14336),
    "input_layernorm.weight": (4096,),
    "post_attention_layernorm.weight": (4096,),
}
MULTIMODAL = {
    "model.compressor.query": (1, 1024),
    "model.compressor.pos_embed": (1, 1024),
    "model.compressor.attn.in_proj_weight": (3072, 1024),
    "model.compressor.attn.in_proj_bias": (3072,),
    "model.compressor.attn.out_proj.weight": (1024, 1024),
    "model.compressor.attn.out_proj.bias": (1024,),
    "model.compressor.ln_q.weight": (1024,),
    "model.compressor.ln_q.bias": (1024,),
    "model.compressor.ln_kv.weight": (1024,),
    "model.compressor.ln_kv.bias": (1024,),
    "model.mm_projector.0.weight": (4096, 1024),
    "model.mm_projector.0.bias": (4096,),
    "model.mm_projector.2.weight": (4096, 4096),
    "model.mm_projector.2.bias": (4096,),
    "model.embed_tokens.weight": (128256, 4096),
    "model.norm.weight": (4096,),
    "lm_head.weight": (128256, 4096),
}
CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."


def release_model() -> LlavaMiniForCausalLM:
    config = LlavaMiniConfig.from_dict(json.loads(RELEASE_CONFIG.read_text()))
    with torch.device("meta"):
        return LlavaMiniForCausalLM(config)


def test_release_layout_names_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in release_model().state_dict().items()}
    expected = dict(MULTIMODAL)
    for prefix, count in (("model.layers", 32), ("model.prefusion_layers", 4)):
        for i in range(count):
            expected.update({f"{prefix}.{i}.{k}": s for k, s in LLAMA_LAYER.items()})
    non_clip = {k: s for k, s in shapes.items() if not k.startswith(CLIP_PREFIX)}
    assert non_clip == expected
    clip = {k.removeprefix(CLIP_PREFIX): s for k, s in shapes.items() if k.startswith(CLIP_PREFIX)}
    assert clip["embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert clip["embeddings.position_embedding.weight"] == (577, 1024)
    assert clip["pre_layrnorm.weight"] == (1024,)  # sic: HF's spelling is part of the key
    assert clip["encoder.layers.23.mlp.fc1.weight"] == (4096, 1024)
    assert "encoder.layers.24.mlp.fc1.weight" not in clip


def test_release_parameter_counts():
    """The release's parameter counts, computed from the module tree."""
    inner = release_model().model

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(inner.prefusion_layers) == 872_448_000
    assert count(inner.mm_projector) == 20_979_712
    assert count(inner.compressor) == 4_204_544
    assert count(inner.vision_tower) == 303_507_456
    total = count(release_model())
    assert total - 872_448_000 - 20_979_712 - 4_204_544 - 303_507_456 == 8_030_261_248


def test_saved_keys_match_reference_key_list(tmp_path):
    """A model built from the reference's tiny config saves exactly the reference's keys."""
    root = shared_path("fixtures", "parity", "c1")
    rows = [
        line.split("\t")
        for line in (root / "state_dict_keys.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    reference = {row[0]: tuple(json.loads(row[1])) for row in rows}
    config = LlavaMiniConfig.from_pretrained(root / "checkpoint")
    config.resolve_vision_config(str(root / "checkpoint"))
    LlavaMiniForCausalLM(config).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert saved == reference


def test_save_load_round_trip_is_exact(tmp_path):
    model = make_model(seed=3)
    model.save_pretrained(tmp_path)
    loaded, info = LlavaMiniForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (tmp_path / "model.safetensors").exists()
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key


def test_a_loaded_model_saves_the_same_keys(tmp_path):
    """transformers 5 renames CLIP weights on load and back on save; the layout must survive a
    load-save cycle unchanged (it once came back as `vision_model.vision_model.`)."""
    make_model().save_pretrained(tmp_path / "a")
    LlavaMiniForCausalLM.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    keys = {}
    for name in ("a", "b"):
        with safe_open(tmp_path / name / "model.safetensors", "pt") as f:
            keys[name] = set(f.keys())
    assert keys["a"] == keys["b"]
    assert any(k.startswith(CLIP_PREFIX + "embeddings.") for k in keys["b"])


def test_reading_per_tensor_loads_what_mapping_loads(tmp_path):
    """`file_reads="per_tensor"` (what a quantized CPU load uses) gives the same weights, loading
    info and generation config as the default memory-mapped read, from sharded files too."""
    model = make_model(seed=4)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    mapped, mapped_info = LlavaMiniForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    read, read_info = LlavaMiniForCausalLM.from_pretrained(
        tmp_path, file_reads="per_tensor", output_loading_info=True
    )
    assert read_info["missing_keys"] == mapped_info["missing_keys"] == set()
    assert read_info["unexpected_keys"] == mapped_info["unexpected_keys"] == set()
    expected, got = mapped.state_dict(), read.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert read.generation_config.max_new_tokens == 7


def test_an_unknown_way_of_reading_files_is_refused(tmp_path):
    make_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="file_reads='pread'; expected one of"):
        LlavaMiniForCausalLM.from_pretrained(tmp_path, file_reads="pread")


def test_a_tensor_read_keeps_its_file_mapped_only_while_it_lives(tmp_path):
    """A large tensor read per tensor is a view of a mapping of its own that ends when it is
    freed (what lets a quantized load drop each weight's pages); a small one is copied."""
    import gc
    import os

    from safetensors.torch import save_file

    from llavamini.model.checkpoint import COPY_BELOW_BYTES, per_tensor_state_dict

    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs Linux's /proc/self/maps")
    large = torch.arange(COPY_BELOW_BYTES // 2, dtype=torch.bfloat16)
    save_file({"large": large, "small": large[:16].clone()}, tmp_path / "model.safetensors")
    state_dict = per_tensor_state_dict(str(tmp_path))

    def mapped() -> bool:
        gc.collect()
        with open("/proc/self/maps") as f:
            return str(tmp_path) in f.read()

    small = state_dict["small"][...]
    assert torch.equal(small, large[:16]) and not mapped()
    view = state_dict["large"][...]
    assert torch.equal(view, large) and mapped()
    del view
    assert not mapped()
