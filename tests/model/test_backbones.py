"""Every vision encoder x language backbone pair, tiny and random, built in-process."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from llavamini.apps.tiny import tiny_config
from llavamini.constants import IGNORE_INDEX
from llavamini.constants import IMAGE_TOKEN_INDEX as IMG
from llavamini.model import FAMILIES, register_backbone
from llavamini.model.vision_tower import block_output, encoder_blocks
from tests.conftest import TEST_IMAGE_SIZE, VOCAB, random_images

register_backbone("mistral")  # any transformers causal LM with rotary decoder layers
BACKBONES = ("llama", "qwen2", "qwen3", "mistral")
ENCODERS = ("clip", "siglip")
PROMPT = [1, 10, 11, IMG, 12, 13, 14]


def build(backbone: str, encoder: str, **overrides):
    torch.manual_seed(0)
    config = tiny_config(VOCAB, TEST_IMAGE_SIZE, backbone=backbone, encoder=encoder, **overrides)
    return FAMILIES[backbone].causal_lm_class(config).eval()


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_pair_forward_backward_generate_and_round_trip(backbone, encoder, tmp_path):
    model = build(backbone, encoder)
    inner = model.model
    # Pre-fusion layers are the backbone's own decoder layers.
    assert type(inner.prefusion_layers[0]) is type(inner.layers[0])
    assert model.config.model_type == f"llava_mini_{backbone}"

    images = random_images(1)
    ids = torch.tensor([PROMPT])
    labels = torch.tensor([[IGNORE_INDEX] * 5 + [13, 14]])
    model.train()
    out = model(ids, images=images, labels=labels)
    assert out.logits.shape == (1, len(PROMPT), VOCAB) and torch.isfinite(out.loss)
    out.loss.backward()
    assert inner.compressor.query.grad.abs().sum() > 0
    assert inner.prefusion_layers[0].mlp.up_proj.weight.grad is not None
    model.eval()

    def greedy(use_cache):
        return model.generate(inputs=ids, images=images, do_sample=False, max_new_tokens=5,
                              min_new_tokens=5, use_cache=use_cache, pad_token_id=0)  # fmt: skip

    assert torch.equal(greedy(True), greedy(False))

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, images=images).logits, model(ids, images=images).logits
        )


def test_siglip_has_no_class_token_to_drop():
    """The CLIP -> SigLIP swap bug: 'patch' features must not drop a SigLIP token."""
    clip, siglip = build("llama", "clip"), build("llama", "siglip")
    images = random_images(2)
    grid = (TEST_IMAGE_SIZE // 14) ** 2
    assert clip.model.vision_tower(images[:, 0]).shape[1] == grid
    assert siglip.model.vision_tower(images[:, 0]).shape[1] == grid
    with pytest.raises(Exception, match="siglip_vision_model encoder has no class token"):
        tiny_config(VOCAB, TEST_IMAGE_SIZE, encoder="siglip", mm_vision_select_feature="cls_patch")


def test_widths_follow_the_encoder_and_backbone():
    vision = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
              "num_attention_heads": 4, "image_size": TEST_IMAGE_SIZE, "patch_size": 14,
              "model_type": "siglip_vision_model"}  # fmt: skip
    model = build("qwen2", "siglip", vision_config=vision, mm_hidden_size=48, hidden_size=96,
                  num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    assert model.model.compressor.query.shape == (1, 48)  # the encoder's width
    assert model.model.mm_projector[0].in_features == 48
    assert model.model.mm_projector[-1].out_features == 96  # the backbone's width


def test_unsupported_encoder_and_backbone_name_the_supported_ones():
    with pytest.raises(
        Exception,
        match=r"supported: \['clip_vision_model', 'open_clip_vision', 'siglip_vision_model'\]",
    ):
        tiny_config(
            VOCAB, TEST_IMAGE_SIZE, vision_config={"model_type": "dinov2", "hidden_size": 64}
        )
    with pytest.raises(ValueError, match=r"Unsupported language backbone 'bert'.*\['llama', "):
        register_backbone("bert")


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("layer", [-2, 1, -1])
def test_encoder_stops_at_the_selected_block(encoder, layer):
    """The blocks after the selected one do not run, the features equal the selected block's
    output in a full forward, and the encoder is whole again afterwards."""
    model = build("llama", encoder)
    encoder_module = model.model.vision_tower.encoder
    keys = list(encoder_module.state_dict())
    blocks = encoder_blocks(encoder_module)
    selected = layer % (len(blocks) + 1)
    ran, outputs = [], []

    def record(k):
        def hook(module, inputs, output):
            ran.append(k)
            outputs.append(output)

        return hook

    handles = [b.register_forward_hook(record(k)) for k, b in enumerate(blocks)]
    images = random_images(2, seed=3)[:, 0]
    with torch.no_grad():
        early = block_output(encoder_module, images, layer)
        assert ran == list(range(selected))
        ran.clear()
        outputs.clear()
        encoder_module(images)  # whole: every block
    for handle in handles:
        handle.remove()
    assert ran == list(range(len(blocks)))
    full = outputs[selected - 1]
    assert torch.equal(early, full[0] if isinstance(full, tuple) else full)
    assert list(encoder_module.state_dict()) == keys


def test_encoder_is_whole_again_after_a_failed_forward():
    """A forward that raises (here: images of the wrong size) leaves every block in place."""
    model = build("llama", "clip")
    encoder_module = model.model.vision_tower.encoder
    count = len(encoder_blocks(encoder_module))
    with pytest.raises(ValueError, match="doesn't match"):
        block_output(encoder_module, torch.zeros(1, 3, 7, 7), -2)
    assert len(encoder_blocks(encoder_module)) == count


@pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None,
    reason="open_clip_torch is not installed (it needs torchvision, which exists for torch 2.13 "
    "only as a CUDA build): pip install -c constraints.txt open_clip_torch on a GPU machine",
)
def test_open_clip_encoder():
    vision = {"model_type": "open_clip_vision", "model_name": "ViT-B-32"}
    model = build("llama", "clip", vision_config=vision, mm_hidden_size=768, compressor_num_heads=8)
    images = torch.randn(1, 1, 3, 224, 224)
    features = model.model.vision_tower(images[:, 0])
    assert features.shape == (1, 49, 768)  # 7 x 7 patches, class token dropped
    out = model(torch.tensor([PROMPT]), images=images)
    assert torch.isfinite(out.logits).all()
