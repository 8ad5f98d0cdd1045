"""The LLM and the pre-fusion layers through llama.cpp on a quantized CPU load
(`llavamini.model.llama_cpp`): the GGUF exports compute what the torch layers compute,
`ModelSpec` builds the torch side without those layers and hands them to llama.cpp, the logits
stay close to bfloat16's, generation (batched, left-padded) runs through transformers'
`generate`, and a GGUF file is written once, whole."""

import os

import pytest
import torch
import torch.nn.functional as F

from llavamini import LlavaMiniForCausalLM
from llavamini.apps.tiny import build_tiny_checkpoint
from llavamini.model import llama_cpp, loading
from llavamini.model.loading import ModelSpec
from tests.conftest import (
    QUANTIZATION_WIDTH,
    TEST_IMAGE_SIZE,
    bfloat16_logits,
    build_quantization_checkpoint,
    needs_llama_cpp,
    needs_torchao,
    quantization_inputs,
    random_images,
)

needs_llama_cpp()
needs_torchao()  # a quantized CPU load asks for it (a backbone llama.cpp cannot run uses it)

ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Llama-3.1 has 8192; 16 puts most of the test's frequencies in the scaled and blended bands,
    # so positions 0-30 tell a wrong `rope_freqs` tensor from the right one.
    "original_max_position_embeddings": 16,
}

ERROR_BOUNDS = {"8bit": (0.995, 0.85), "4bit": (0.75, 0.2)}
"""Quantization -> (least mean cosine of the logits, least top-1 agreement) against bfloat16,
as `test_quantization.py` asks of torchao. Measured on this checkpoint (random weights, 2 LLM
layers and 1 pre-fusion layer of width 256), both in llama.cpp: Q8_0 0.998 / 0.96, Q4_0 0.862 /
0.29 (torchao: 0.998 / 0.94, 0.823 / 0.19)."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The quantization tests' checkpoint, with llama3 rope scaling."""
    folder = str(tmp_path_factory.mktemp("llama_cpp") / "tiny")
    return build_quantization_checkpoint(folder, rope_parameters=ROPE)


@pytest.fixture(autouse=True)
def gguf_cache(tmp_path, monkeypatch):
    """`cached_gguf` writes under a cache of each test's own."""
    monkeypatch.setenv("LLAVAMINI_GGUF_DIR", str(tmp_path / "gguf"))


@pytest.fixture(scope="module")
def case(checkpoint):
    """Prompts with images, and the bfloat16 model's logits for them."""
    inputs = quantization_inputs()
    return inputs, bfloat16_logits(checkpoint, inputs)


def test_gguf_export_computes_the_torch_llm(checkpoint, tmp_path):
    """Unquantized (F32), llama.cpp's logits are the torch LLM's, from the same input embeddings:
    the key mapping, the q/k row order and the llama3 rope factors all hold."""
    model = LlavaMiniForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids, images = quantization_inputs()
    with torch.inference_mode():
        embeds, mask, _, _ = model.model.embed_multimodal(ids, torch.ones_like(ids), None, images)
        expected = model(inputs_embeds=embeds, attention_mask=mask).logits
    path = llama_cpp.export_gguf(checkpoint, str(tmp_path / "llm.gguf"), "F32")
    logits = llama_cpp.LlamaCppLanguageModel(path, threads=2)(embeds, mask, None)
    assert logits.shape == expected.shape
    cosine = F.cosine_similarity(logits, expected, dim=-1)
    assert cosine.min() > 0.99999, cosine.min()
    assert (logits - expected).abs().max() < 1e-3 * expected.abs().max()


@pytest.fixture(scope="module")
def two_prefusion_layers(tmp_path_factory) -> str:
    """A checkpoint with 2 pre-fusion layers: the first runs on every row, the last one's output
    is read from llama.cpp's graph."""
    folder = str(tmp_path_factory.mktemp("llama_cpp") / "prefusion2")
    return build_quantization_checkpoint(folder, rope_parameters=ROPE, prefusion_layer_num=2)


@pytest.mark.parametrize("unread", [0, 30])
def test_prefusion_gguf_computes_the_torch_prefusion(two_prefusion_layers, tmp_path, unread):
    """Unquantized (F32), llama.cpp's pre-fusion gives the torch layers' outputs, before any
    norm, for the rows from `unread` on, with positions left out of `keep` (padding) neither
    attending nor attended; those rows come back as they went in."""
    checkpoint = two_prefusion_layers
    inner = LlavaMiniForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval().model
    path = llama_cpp.export_gguf(checkpoint, str(tmp_path / "prefusion.gguf"), "F32", "prefusion")
    runner = llama_cpp.LlamaCppPreFusion(path, threads=2)
    assert len(runner) == len(inner.prefusion_layers) == 2
    hidden = torch.randn(3, 50, QUANTIZATION_WIDTH, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(3, 50, dtype=torch.bool)
    keep[1, 40:45] = keep[2, -4:] = False
    with torch.inference_mode():
        expected = inner.prefusion_layers(hidden, keep, inner.rotary_emb, unread=unread)
        fused = runner(hidden, keep, inner.rotary_emb, unread=unread)
    assert fused.shape == expected.shape == (3, 50 - unread, QUANTIZATION_WIDTH)
    kept = keep[:, unread:]
    cosine = F.cosine_similarity(fused[kept], expected[kept], dim=-1)
    # llama.cpp keeps its KV cache in float16.
    assert cosine.min() > 0.99999, cosine.min()
    assert (fused[kept] - expected[kept]).abs().max() < 5e-3 * expected.abs().max()
    assert torch.equal(fused[~kept], hidden[:, unread:][~kept])


def test_export_names_a_part_it_cannot_write(tmp_path):
    folder = build_tiny_checkpoint(
        str(tmp_path / "tiny"), image_size=TEST_IMAGE_SIZE, prefusion_layer_num=0
    )
    with pytest.raises(ValueError, match="has no prefusion layers"):
        llama_cpp.export_gguf(folder, str(tmp_path / "p.gguf"), "F32", "prefusion")
    with pytest.raises(ValueError, match="part must be one of"):
        llama_cpp.export_gguf(folder, str(tmp_path / "p.gguf"), "F32", "vision")
    assert not (tmp_path / "p.gguf").exists()


def test_llama3_rope_factors_are_transformers_scaling(checkpoint):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llavamini.model.configuration_llavamini import LlavaMiniConfig

    config = LlavaMiniConfig.from_pretrained(checkpoint)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = QUANTIZATION_WIDTH // 4
    plain = 1.0 / ROPE["rope_theta"] ** (torch.arange(0, head_dim, 2).double() / head_dim)
    factors = torch.from_numpy(llama_cpp.llama3_rope_factors(config)).double()
    assert factors.max() == ROPE["factor"] and ((1 < factors) & (factors < 8)).any()  # blended
    torch.testing.assert_close(plain / factors, scaled.double(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_cpu_load_runs_the_llm_in_llama_cpp(checkpoint, case, quantization):
    (ids, images), reference_logits = case
    model = ModelSpec(checkpoint, device="cpu", quantization=quantization).load().model
    assert isinstance(model.language_model_runner, llama_cpp.LlamaCppLanguageModel)
    assert len(model.model.layers) == 0  # no second copy of the LLM in torch
    assert model.config.num_hidden_layers == model.language_model_runner.num_layers == 2
    assert isinstance(model.model.prefusion_layers, llama_cpp.LlamaCppPreFusion)
    assert model.config.prefusion_layer_num == len(model.model.prefusion_layers) == 1
    with torch.inference_mode():
        logits = model(input_ids=ids, images=images).logits.float()
    assert logits.shape == reference_logits.shape
    cosine = F.cosine_similarity(logits, reference_logits, dim=-1).mean().item()
    top1 = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    least_cosine, least_top1 = ERROR_BOUNDS[quantization]
    assert cosine >= least_cosine and top1 >= least_top1, (cosine, top1)
    with pytest.raises(ValueError, match="no loss"):
        model(input_ids=ids, images=images, labels=ids)


def test_prefusion_stays_in_torch_without_ggmls_library(checkpoint, case, monkeypatch):
    """Where llama-cpp-python ships no ggml library to read the graph with, pre-fusion runs in
    torch (torchao) and the LLM still in llama.cpp."""
    from llavamini.model.prefusion import PreFusionLayers

    def no_library():
        raise OSError("ggml's library (ggml-base) is not in /nowhere.")

    monkeypatch.setattr(llama_cpp, "ggml_library", no_library)
    monkeypatch.setattr(loading, "ggml_library", no_library)
    model = ModelSpec(checkpoint, device="cpu", quantization="8bit").load().model
    assert isinstance(model.model.prefusion_layers, PreFusionLayers)
    assert len(model.model.prefusion_layers) == model.config.prefusion_layer_num == 1
    assert isinstance(model.language_model_runner, llama_cpp.LlamaCppLanguageModel)
    written = os.listdir(llama_cpp.gguf_cache_dir())
    assert not [name for name in written if "prefusion" in name], written  # nothing unused
    (ids, images), reference_logits = case
    with torch.inference_mode():
        logits = model(input_ids=ids, images=images).logits.float()
    cosine = F.cosine_similarity(logits, reference_logits, dim=-1).mean().item()
    assert cosine >= ERROR_BOUNDS["8bit"][0], cosine


def test_video_runs_each_frames_prefusion_in_llama_cpp(checkpoint):
    """A video (one compressed token per frame, the text fused with each frame and averaged)
    through llama.cpp's pre-fusion and LLM gives the bfloat16 model's logits, within 8-bit's
    error."""
    ids, _ = quantization_inputs()
    video = random_images(4, seed=5)  # (T=4, parts=1, 3, H, W)
    with torch.inference_mode():
        reference = ModelSpec(checkpoint, device="cpu", dtype="bfloat16").load().model
        expected = reference(input_ids=ids[:1], images=[video]).logits.float()
        model = ModelSpec(checkpoint, device="cpu", quantization="8bit").load().model
        assert isinstance(model.model.prefusion_layers, llama_cpp.LlamaCppPreFusion)
        logits = model(input_ids=ids[:1], images=[video]).logits.float()
    assert logits.shape == expected.shape == (1, 24 - 1 + 4, expected.shape[-1])
    cosine = F.cosine_similarity(logits, expected, dim=-1).mean().item()
    assert cosine >= ERROR_BOUNDS["8bit"][0], cosine


def test_left_padded_batch_generates_what_each_row_does(checkpoint):
    """Rows of different lengths in one left-padded batch get the tokens each gets alone
    (llama.cpp never sees the padding), through transformers' `generate`."""
    model = ModelSpec(checkpoint, device="cpu", quantization="8bit").load().model
    generator = torch.Generator().manual_seed(3)
    long, short = (
        torch.randint(6, 400, (1, 20), generator=generator),
        torch.randint(6, 400, (1, 12), generator=generator),
    )
    long[0, 2] = short[0, 2] = -200
    images = random_images(2, seed=3)
    batch = torch.zeros(2, 20, dtype=torch.long)
    batch[0], batch[1, 8:] = long[0], short[0]
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :8] = 0
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    together = model.generate(batch, images=images, attention_mask=mask, **settings)
    alone = [
        model.generate(long, images=images[:1], **settings),
        model.generate(short, images=images[1:], **settings),
    ]
    assert together.shape == (2, 6)
    assert torch.equal(together, torch.cat(alone))
    # The steps continue llama.cpp's sequence: one forward over a text prompt and the tokens
    # generated (no cache) predicts each of them greedily. (With an image, generated tokens
    # skip the pre-fusion a prompt's text goes through, in the reference as here.)
    text = short[:, 3:]
    new = model.generate(text, **settings)
    with torch.inference_mode():
        logits = model(input_ids=torch.cat([text, new[:, :-1]], 1)).logits
    assert torch.equal(logits[0, -6:].argmax(-1), new[0])


def test_gguf_is_written_once_and_whole(checkpoint, monkeypatch):
    """The first load writes the GGUF file and later ones reuse it; an export that fails midway
    leaves nothing behind, under the final name or any other."""
    import gguf.quants

    real_quantize, calls = gguf.quants.quantize, []

    def quantize_then_fail(*args, **kwargs):
        calls.append(args[0].shape)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_quantize(*args, **kwargs)

    monkeypatch.setattr(gguf.quants, "quantize", quantize_then_fail)
    with pytest.raises(OSError, match="No space"):
        llama_cpp.cached_gguf(checkpoint, "4bit")
    assert os.listdir(llama_cpp.gguf_cache_dir()) == []

    monkeypatch.setattr(gguf.quants, "quantize", real_quantize)
    exports, real_export = [], llama_cpp.export_gguf
    monkeypatch.setattr(
        llama_cpp, "export_gguf", lambda *args: exports.append(args[1]) or real_export(*args)
    )
    path = llama_cpp.cached_gguf(checkpoint, "4bit")
    assert exports == [path] and os.listdir(llama_cpp.gguf_cache_dir()) == [os.path.basename(path)]
    assert llama_cpp.cached_gguf(checkpoint, "4bit") == path and exports == [path]


def test_what_llama_cpp_cannot_run_is_named(tmp_path):
    from llavamini.model.configuration_llavamini import LlavaMiniConfig

    config = LlavaMiniConfig.from_pretrained(
        build_tiny_checkpoint(str(tmp_path / "tiny"), image_size=TEST_IMAGE_SIZE)
    )
    config.attention_bias = True
    config.intermediate_size = 100
    with pytest.raises(ValueError, match=r"biases.*intermediate_size=100 \(a multiple of 32"):
        llama_cpp.check_exportable(config)


def test_context_grows_for_a_prompt_and_refuses_past_its_end(checkpoint, tmp_path):
    path = llama_cpp.export_gguf(checkpoint, str(tmp_path / "llm.gguf"), "Q8_0")
    runner = llama_cpp.LlamaCppLanguageModel(path, threads=1, context_tokens=32)
    cache = object()
    prompt = torch.randn(1, 40, QUANTIZATION_WIDTH)
    assert runner(prompt, None, cache, logits_to_keep=1).shape == (1, 1, runner.vocab_size)
    assert runner.llama.context_tokens == 40 + llama_cpp.STEPS_PER_ROW
    step = torch.randn(1, 1, QUANTIZATION_WIDTH)
    for _ in range(llama_cpp.STEPS_PER_ROW):
        runner(step, None, cache)
    with pytest.raises(ValueError, match=r"context holds 1064 tokens; this call needs 1065"):
        runner(step, None, cache)


def test_a_damaged_gguf_file_is_named_with_what_to_do(checkpoint):
    from llavamini.model.loading import ModelLoadError

    path = llama_cpp.cached_gguf(checkpoint, "8bit")
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelLoadError, match=r"could not load .*q8_0\.gguf.*Delete it"):
        ModelSpec(checkpoint, device="cpu", quantization="8bit").load()
