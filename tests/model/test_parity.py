"""Parity with the reference implementation on its own tiny checkpoint (../shared/fixtures/parity).

The fixture was saved by ictnlp/LLaVA-Mini (transformers 4.43) with its inputs, logits and
intermediates; loading it with `AutoModelForCausalLM` must reproduce them within 1e-5 in float32.
"""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import llavamini  # noqa: F401  (registers the Auto classes)
from llavamini.model.packing import prefusion_text_keep
from tests.conftest import shared_path

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def case():
    root = shared_path("fixtures", "parity", "c1")
    model, info = AutoModelForCausalLM.from_pretrained(
        root / "checkpoint", dtype=torch.float32, output_loading_info=True
    )
    inputs = load_file(root / "inputs.safetensors")
    expected = load_file(root / "expected.safetensors")
    return model, info, inputs, expected


def test_loads_with_no_missing_or_unexpected_keys(case):
    model, info, _, _ = case
    assert type(model).__name__ == "LlavaMiniForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_logits_match_reference(case):
    model, _, inputs, expected = case
    with torch.no_grad():
        out = model(
            inputs["image.input_ids"],
            attention_mask=inputs["image.attention_mask"],
            images=inputs["image.images"].float(),
        )
    real = expected["image.llm_attention_mask"].bool()
    assert out.logits.shape == expected["image.logits"].shape
    diff = (out.logits - expected["image.logits"]).abs()[real].max().item()
    assert diff < TOLERANCE, f"max |logits - reference| = {diff}"


def test_intermediates_match_reference(case):
    model, _, inputs, expected = case
    ids, mask = inputs["image.input_ids"], inputs["image.attention_mask"]
    images = inputs["image.images"].float()
    inner = model.model
    with torch.no_grad():
        clip = inner.vision_tower(images[:, 0])
        compressed = inner.compressor(clip)
        text = inner.embed_tokens(ids.clamp(min=0))
        vision, fused = inner.encode_images(images, text, prefusion_text_keep(ids, mask, None))
        embeds, llm_mask, _, _ = inner.embed_multimodal(ids, mask, None, images)
    checks = {
        "image.clip_features_first16": clip[:, :16],
        "image.compressor_out": compressed,
        "image.vision_tokens": vision,
        "image.llm_inputs_embeds": embeds,
    }
    for name, actual in checks.items():
        diff = (actual - expected[name]).abs().max().item()
        assert diff < TOLERANCE, f"{name}: max diff {diff}"
    assert torch.equal(llm_mask, expected["image.llm_attention_mask"])
    # The reference returns raw embeddings where pre-fusion did not read the text.
    real = mask.bool() & (ids > 0)
    diff = (fused - expected["image.fused_text"]).abs()[real].max().item()
    assert diff < TOLERANCE, f"fused text: max diff {diff}"
