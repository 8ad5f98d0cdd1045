"""Recomputed attention weights: equal to eager attention's, for every mask format, and the
hooks leave the model's outputs untouched."""

import pytest
import torch

from llavamini.analysis.attention import AttentionCollector
from llavamini.analysis.recorder import (
    AttentionRecorder,
    attention_modules,
    recompute_attention,
    row_chunks,
    visible_keys,
)
from llavamini.conversation import get_template
from tests.analysis.conftest import load, question_inputs


def _inputs(loaded, data, index=0):
    """A rendered synthetic question with its image: `(input_ids, attention_mask, images)`."""
    return question_inputs(loaded, data, index)


def _record_all_rows(model, input_ids, attention_mask, images, **forward):
    """Forward with every analysed module's full attention recomputed: `{name: (H, S, S)}`,
    `{name: AttentionInputs}` and the model output."""
    recorded, received = {}, {}

    def handler(name, module, inputs):
        rows = torch.arange(inputs.sequence_length)
        recorded[name] = recompute_attention(module, inputs, rows)[0][0]
        received[name] = inputs

    with AttentionRecorder(model, handler), torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, images=images, **forward)
    return recorded, received, output


def test_recomputed_attention_equals_eager_attention_weights(mini_checkpoint, data):
    loaded = load(mini_checkpoint)  # its own copy: the backend is switched below
    model = loaded.model
    inputs = _inputs(loaded, data)
    assert model.config._attn_implementation == "sdpa"
    recorded, _, _ = _record_all_rows(model, *inputs)
    assert sorted(recorded) == ["llm.0", "llm.1", "prefusion.0"]

    model.set_attn_implementation("eager")
    recorded_eager, received, eager = _record_all_rows(model, *inputs, output_attentions=True)
    for index, weights in enumerate(eager.attentions):
        assert weights[0].max() > 0.3  # attention is far from uniform: the comparison bites
        # From the same inputs, the recomputation is eager attention itself ...
        torch.testing.assert_close(recorded_eager[f"llm.{index}"], weights[0], rtol=0, atol=1e-6)
        # ... and from the SDPA run's inputs (which differ by rounding from layer 1 on), too.
        torch.testing.assert_close(recorded[f"llm.{index}"], weights[0], rtol=0, atol=1e-5)
        # A few rows alone are those rows (each with its own rotary angle).
        name = f"llm.{index}"
        rows = torch.tensor([3, 50, weights.shape[-1] - 1])
        module = attention_modules(model, ("llm",))[name]
        some, _ = recompute_attention(module, received[name], rows)
        torch.testing.assert_close(some[0], weights[0][:, rows], rtol=0, atol=1e-6)

    # Pre-fusion's weights are not returned by the model: call its eager attention module on
    # the inputs it received (with eager's additive mask).
    module = attention_modules(model, ("prefusion",))["prefusion.0"]
    prefusion = received["prefusion.0"]
    assert prefusion.attention_mask.dtype == torch.float32
    with torch.no_grad():
        _, weights = module(
            hidden_states=prefusion.hidden_states,
            attention_mask=prefusion.attention_mask,
            position_embeddings=prefusion.position_embeddings,
        )
    assert weights[0].max() > 0.3
    torch.testing.assert_close(recorded_eager["prefusion.0"], weights[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(recorded["prefusion.0"], weights[0], rtol=0, atol=1e-5)


def test_the_hooks_do_not_change_the_logits(mini, full, data):
    for loaded in (mini, full):
        input_ids, attention_mask, images = _inputs(loaded, data, index=1)
        with torch.no_grad():
            plain = loaded.model(input_ids=input_ids, attention_mask=attention_mask, images=images)
        recorded, _, hooked = _record_all_rows(loaded.model, input_ids, attention_mask, images)
        assert recorded
        assert torch.equal(plain.logits, hooked.logits)


def test_the_analysis_handler_does_not_change_the_logits(mini, data):
    from llavamini.analysis.tokens import llm_kinds, prefusion_kinds, prompt_tokens

    model, tokenizer = mini.model, mini.tokenizer
    input_ids, attention_mask, images = _inputs(mini, data, index=2)
    prompt = prompt_tokens(get_template("llava_llama_3_1"), tokenizer, "<image>\nWhat is here?")
    input_ids = torch.tensor([prompt.input_ids])
    spliced = model.model.embed_multimodal(
        input_ids, torch.ones_like(input_ids), None, images, return_vision_mask=True
    )
    collector = AttentionCollector()
    collector.layouts = {
        "llm": lambda length: llm_kinds(prompt, spliced.vision_mask[0], 0),
        "prefusion": lambda length: prefusion_kinds(prompt, length),
    }
    with torch.no_grad():
        plain = model(input_ids=input_ids, images=images).logits
        with AttentionRecorder(model, collector):
            hooked = model(input_ids=input_ids, images=images).logits
    assert torch.equal(plain, hooked)
    assert set(collector.totals) == {"llm.0", "llm.1", "prefusion.0"}


def test_visible_keys_reads_every_mask_format():
    rows = torch.tensor([0, 2, 3])
    causal = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool
    )  # rows 0, 2, 3 of a 4 x 4 causal mask
    visible, bias = visible_keys(None, rows, 4)
    assert torch.equal(visible[0], causal) and bias is None

    padding = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)  # key 0 is padding
    visible, _ = visible_keys(padding, rows, 4)
    assert torch.equal(visible[0], causal & padding)

    full = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    full[:, 1] = False
    visible, bias = visible_keys(full[None, None], rows, 4)
    assert torch.equal(visible[0], full[rows]) and bias is None

    additive = torch.where(full, 0.0, torch.finfo(torch.float32).min)[None, None]
    visible, bias = visible_keys(additive, rows, 4)
    assert torch.equal(visible[0], full[rows]) and torch.equal(bias[0], additive[0, 0, rows])

    with pytest.raises(ValueError, match="no KV cache"):
        visible_keys(torch.zeros(1, 1, 1, 5), rows, 4)


def test_row_chunks_bound_the_scores_held_at_once():
    rows = torch.arange(10)
    chunks = list(row_chunks(rows, num_heads=2, key_length=5, max_elements=30))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]  # 2 heads x 3 rows x 5 keys = 30
    assert torch.equal(torch.cat(chunks), rows)
    assert [len(c) for c in row_chunks(rows, 64, 4096, max_elements=1)] == [1] * 10
