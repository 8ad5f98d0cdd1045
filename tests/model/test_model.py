"""Behaviour of LlavaMiniForCausalLM on tiny random models."""

import subprocess
import sys

import pytest
import torch

from llavamini.constants import IGNORE_INDEX
from llavamini.constants import IMAGE_TOKEN_INDEX as IMG
from llavamini.model import modeling_llavamini
from llavamini.model.packing import prefusion_text_keep
from tests.conftest import make_model, random_images

PROMPT_A = [1, 10, 11, IMG, 12, 13, 14]
PROMPT_B = [1, 20, IMG, 21]


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def greedy(model, ids, mask, images, use_cache=True, new=6):
    return model.generate(
        inputs=ids,
        attention_mask=mask,
        images=images,
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        use_cache=use_cache,
        pad_token_id=0,
    )


def test_one_vision_token_per_image(tiny_model):
    ids = torch.tensor([PROMPT_A])
    out = tiny_model(ids, images=random_images(1))
    assert out.logits.shape == (1, len(PROMPT_A), tiny_model.config.vocab_size)


def test_generate_with_and_without_cache_agree(tiny_model):
    ids, mask = left_pad([PROMPT_A])
    images = random_images(1)
    with_cache = greedy(tiny_model, ids, mask, images, use_cache=True)
    without = greedy(tiny_model, ids, mask, images, use_cache=False)
    assert with_cache.shape == (1, 6)  # only the new tokens come back
    assert torch.equal(with_cache, without)


class GradModeProbe:
    """A logits processor that records the autograd mode of every decode step."""

    def __init__(self):
        self.modes = []

    def __call__(self, input_ids, scores):
        self.modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return scores


@pytest.mark.parametrize("zero3", [False, True])
def test_generate_runs_in_inference_mode_except_under_zero3(tiny_model, monkeypatch, zero3):
    monkeypatch.setattr(modeling_llavamini, "is_deepspeed_zero3_enabled", lambda: zero3)
    probe = GradModeProbe()
    ids, mask = left_pad([PROMPT_A])
    tiny_model.generate(
        inputs=ids, attention_mask=mask, images=random_images(1), max_new_tokens=3,
        min_new_tokens=3, do_sample=False, pad_token_id=0, logits_processor=[probe],
    )  # fmt: skip
    assert probe.modes == [(not zero3, False)] * 3


def test_left_padded_batch_matches_each_sample_alone(tiny_model):
    images = random_images(2, seed=1)
    ids, mask = left_pad([PROMPT_A, PROMPT_B])
    batched = greedy(tiny_model, ids, mask, images)
    for i, prompt in enumerate([PROMPT_A, PROMPT_B]):
        alone_ids, alone_mask = left_pad([prompt])
        alone = greedy(tiny_model, alone_ids, alone_mask, images[i : i + 1])
        assert torch.equal(batched[i], alone[0]), f"sample {i}"


def test_right_padded_forward_matches_each_sample_alone(tiny_model):
    images = random_images(2, seed=2)
    ids = torch.tensor([PROMPT_A, PROMPT_B + [0, 0, 0]])
    mask = (torch.arange(7) < torch.tensor([[7], [4]])).long()
    batched = tiny_model(ids, attention_mask=mask, images=images).logits
    for i, prompt in enumerate([PROMPT_A, PROMPT_B]):
        alone = tiny_model(torch.tensor([prompt]), images=images[i : i + 1]).logits[0]
        torch.testing.assert_close(batched[i, : len(prompt)], alone, atol=1e-5, rtol=1e-5)


def test_batched_video_encoding_equals_per_frame():
    model = make_model(video_chunk_frames=4)
    frames = random_images(5, seed=4)  # (T=5, parts=1, 3, H, W)
    ids = torch.tensor(PROMPT_A)
    embeds = model.model.embed_tokens(ids.clamp(min=0))
    keep = prefusion_text_keep(ids[None], torch.ones(1, len(ids)), None)[0]
    with torch.no_grad():
        vision, text = model.model.encode_video(frames, embeds, keep)
        per_frame = [
            model.model.encode_images(frames[t : t + 1], embeds[None], keep[None])
            for t in range(frames.shape[0])
        ]
    expected_vision = torch.cat([v[0] for v, _ in per_frame])
    expected_text = torch.stack([f[0] for _, f in per_frame]).float().mean(0)
    assert vision.shape == (5, 64)  # one token per frame, in frame order
    torch.testing.assert_close(vision, expected_vision, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, expected_text, atol=1e-5, rtol=1e-5)


def test_video_sample_gets_one_token_per_frame_and_gradients():
    model = make_model().train()
    frames = random_images(3, seed=5)
    ids = torch.tensor([[1, 10, IMG, 11, 12, 13]])
    labels = torch.tensor([[IGNORE_INDEX] * 4 + [12, 13]])
    out = model(ids, images=[frames], labels=labels)
    assert out.logits.shape[1] == ids.shape[1] - 1 + 3
    out.loss.backward()
    for name in (
        "compressor.query",
        "mm_projector.0.weight",
        "prefusion_layers.0.mlp.up_proj.weight",
    ):
        grad = model.model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_training_step_gradients_reach_the_right_modules():
    model = make_model().train()
    ids = torch.tensor([PROMPT_A, PROMPT_B + [0, 0, 0]])
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX).masked_fill(ids == IMG, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX
    out = model(ids, attention_mask=mask, images=random_images(2), labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    inner = model.model
    for module in (inner.compressor, inner.mm_projector, inner.prefusion_layers, inner.layers):
        assert all(p.grad is not None for p in module.parameters())
    assert inner.embed_tokens.weight.grad.abs().sum() > 0  # docs/compatibility.md F4: never trained
    assert all(p.grad is None for p in inner.vision_tower.parameters())


def test_supervised_tokens_keep_raw_embeddings_and_prompt_is_fused():
    """Training excludes answer tokens from pre-fusion: the LLM gets their raw embeddings."""
    model = make_model()
    ids = torch.tensor([[1, 10, IMG, 11, 12, 30, 31]])
    labels = torch.tensor([[IGNORE_INDEX] * 5 + [30, 31]])
    with torch.no_grad():
        raw = model.model.embed_tokens(ids.clamp(min=0))[0]
        train, _, _, _ = model.model.embed_multimodal(ids, None, labels, random_images(1))
        infer, _, _, _ = model.model.embed_multimodal(ids, None, None, random_images(1))
    torch.testing.assert_close(train[0, 5:], raw[5:])  # answers: raw
    assert not torch.allclose(infer[0, 5:], raw[5:])  # the same tokens fused at inference
    assert not torch.allclose(train[0, 3:5], raw[3:5])  # the prompt is fused in both


def test_several_visuals_in_one_sample_fill_placeholders_in_order():
    model = make_model()
    first, second = random_images(2, seed=6)
    video = random_images(3, seed=7)
    ids = torch.tensor([[1, 10, IMG, 11, IMG, 12, 13]])
    with torch.no_grad():
        embeds, _, _, _ = model.model.embed_multimodal(ids, None, None, [[first, video]])
        one = model.model.embed_multimodal(ids[:, :4], None, None, [first])[0]
    assert embeds.shape[1] == 7 - 2 + 1 + 3  # one token for the image, three for the video
    # The first image's token is computed as for a sample with that image alone.
    torch.testing.assert_close(embeds[0, 2], one[0, 2])
    # The text is fused with each visual and averaged.
    assert not torch.allclose(embeds[0, :2], one[0, :2])


def test_bfloat16_model_takes_float32_images():
    model = make_model().to(torch.bfloat16)
    out = model(torch.tensor([PROMPT_A]), images=random_images(1))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    new = greedy(model, *left_pad([PROMPT_A]), random_images(1), new=3)
    assert new.shape == (1, 3)


def test_text_only_sample_in_a_list_batch():
    model = make_model()
    ids = torch.tensor([PROMPT_A, [1, 10, 11, 12, 13, 14, 15]])
    out = model(ids, images=[random_images(1)[0], None])
    alone = model(ids[1:]).logits  # no images: plain Llama, no pre-fusion
    torch.testing.assert_close(out.logits[1], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "vision_tokens"),
    [
        ({"compressor_type": "none", "prefusion_layer_num": 0}, 16),  # LLaVA-1.5 mode
        ({"compressor_type": "none", "prefusion_layer_num": 1}, 16),  # pre-fusion, no compression
        ({"prefusion_layer_num": 0}, 1),  # compression without pre-fusion
        ({"prefusion_layer_num": 3, "compressor_size": 2}, 4),  # deeper pre-fusion, 4 tokens
        ({"compressor_type": "avg_pool", "compressor_size": 2}, 4),  # pooling ablation
    ],
)
def test_variants(overrides, vision_tokens):
    model = make_model(**overrides)
    assert model.config.num_compressed_tokens == vision_tokens
    out = model(torch.tensor([PROMPT_A]), images=random_images(1))
    assert out.logits.shape[1] == len(PROMPT_A) - 1 + vision_tokens
    assert len(model.model.prefusion_layers) == overrides.get("prefusion_layer_num", 1)


def test_high_resolution_uses_crops_and_global_view():
    model = make_model(resolution_ratio=2, compressor_size=2)
    images = random_images(1, parts=5)
    out = model(torch.tensor([PROMPT_A]), images=images)
    assert out.logits.shape[1] == len(PROMPT_A) - 1 + 4
    # The global view (last part) reaches the answer through pre-fusion.
    changed = images.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(out.logits, model(torch.tensor([PROMPT_A]), images=changed).logits)


def test_prompt_longer_than_the_context_is_refused():
    model = make_model(max_position_embeddings=16)
    ids, mask = left_pad([PROMPT_A])
    with pytest.raises(ValueError, match="7 tokens long .* exceeds the model's context of 16"):
        greedy(model, ids, mask, random_images(1), new=10)


def test_vision_mask_marks_the_spliced_vision_tokens(tiny_model):
    ids, mask = left_pad([PROMPT_A, PROMPT_B])
    video = random_images(3, seed=8)
    with torch.no_grad():
        spliced = tiny_model.model.embed_multimodal(
            ids, mask, None, [random_images(1)[0], video], return_vision_mask=True
        )
    vision = spliced.vision_mask
    assert vision.sum(1).tolist() == [1, 3]
    # Sample 0 keeps its 7 positions: BOS, 10, 11, then its one token.
    assert vision[0].nonzero().flatten().tolist() == [3]
    # Sample 1 becomes 4 - 1 + 3 = 6 long, left-padded to 7: a pad, BOS, 20, three frame tokens.
    assert vision[1].nonzero().flatten().tolist() == [3, 4, 5]
    assert not (vision & (spliced.attention_mask == 0)).any()


def test_asking_for_hidden_states_does_not_change_later_vision_features():
    """transformers 5 re-attaches output recorders to the nested encoder when the whole model is
    asked for hidden states; the selected layer must stay the same (found by the analysis tool)."""
    model = make_model()
    ids, images = torch.tensor([PROMPT_A]), random_images(1)
    with torch.no_grad():
        before = model(ids, images=images).logits
        model(ids, images=images, output_hidden_states=True)
        model(ids, images=images, output_attentions=True)
        after = model(ids, images=images).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_selected_layer_is_the_second_to_last_block():
    model = make_model()
    encoder = model.model.vision_tower.encoder
    pixels = random_images(1)[:, 0]
    with torch.no_grad():
        reference = encoder(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(model.model.vision_tower(pixels), reference)


def test_video_chunk_is_one_frame_on_cpu_unless_set():
    model = make_model()
    frames = random_images(3, seed=6)
    assert model.config.video_chunk_frames is None
    assert model.model.video_chunk_size(frames) == 1
    model.config.video_chunk_frames = 2
    assert model.model.video_chunk_size(frames) == 2


VIDEO_PEAK_SCRIPT = """
import resource, sys, torch
from llavamini import LlavaMiniForCausalLM
from llavamini.model.packing import prefusion_text_keep
from llavamini.apps.tiny import tiny_config
# 257 tokens a frame: activations dominate the peak.
model = LlavaMiniForCausalLM(tiny_config(96, image_size=224, video_chunk_frames=CHUNK)).eval()
frames = torch.randn(int(sys.argv[1]), 1, 3, 224, 224)
ids = torch.tensor([1, 10, 11, -200, 12])
embeds = model.model.embed_tokens(ids.clamp(min=0)).detach()
keep = prefusion_text_keep(ids[None], torch.ones(1, 5), None)[0]
with torch.no_grad():
    model.model.encode_video(frames[:1], embeds, keep)  # warm the allocator
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.model.encode_video(frames, embeds, keep)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_video_peak_memory_does_not_grow_with_frames():
    """Peak RSS growth of one `encode_video` (KiB), measured in fresh processes: 32 frames cost
    what 4 do, within allocator noise (a chunk of 32 would hold 8x the activations)."""
    def growth(frames: int) -> int:
        run = subprocess.run(
            [sys.executable, "-c", VIDEO_PEAK_SCRIPT.replace("CHUNK", "None"), str(frames)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(run.stdout.split()[-1])

    assert growth(32) <= growth(4) + 2048


def test_a_new_model_initialises_its_compressor_like_a_standalone_one():
    """`QueryCompressor.init_queries` is the one initialisation of the queries and position
    table: a model built from a config gets the sin-cos table and N(0, 0.02) queries."""
    from llavamini.model.compressor import QueryCompressor, sincos_pos_embed_2d

    model = make_model(seed=3)
    compressor = model.model.compressor
    assert isinstance(compressor, QueryCompressor)
    width = compressor.query.shape[1]
    table = sincos_pos_embed_2d(width, compressor.size).to(compressor.pos_embed.dtype)
    torch.testing.assert_close(compressor.pos_embed.detach(), table, rtol=0, atol=0)
    assert 0.01 < compressor.query.std().item() < 0.03
    standalone = QueryCompressor(width, compressor.size, num_heads=1)
    torch.testing.assert_close(standalone.pos_embed.detach(), table, rtol=0, atol=0)
