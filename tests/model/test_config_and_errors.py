"""LlavaMiniConfig: reference fields, offline vision-config resolution, and every clear error."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel

from llavamini import LlavaMiniConfig, LlavaMiniForCausalLM
from llavamini.constants import IMAGE_TOKEN_INDEX as IMG
from tests.conftest import make_config, make_model, random_images

RELEASE_CONFIG = (
    Path(__file__).resolve().parents[1] / "fixtures" / "llava-mini-llama-3.1-8b.config.json"
)


def test_release_config_fields_are_accepted_and_saved_back(tmp_path):
    original = json.loads(RELEASE_CONFIG.read_text())
    config = LlavaMiniConfig.from_dict(original)
    assert config.vision_config.hidden_size == 1024  # built-in CLIP-L/336, no download
    assert config.vision_config.num_hidden_layers == 24
    assert config.num_compressed_tokens == 1
    assert config.rope_parameters["rope_type"] == "llama3"
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for field in (
        "compressor_size",
        "prefusion_layer_num",
        "mm_vision_tower",
        "image_aspect_ratio",
        "tokenizer_model_max_length",
        "mm_projector_type",
        "mm_vision_select_layer",
    ):
        assert saved[field] == original[field], field
    assert saved["vision_config"]["hidden_size"] == 1024  # the checkpoint becomes self-contained


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"compressor_type": "conv"}, "compressor_type='conv'"),
        ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature='cls'"),
        ({"mm_projector_type": "mlp2x_relu"}, "mm_projector_type='mlp2x_relu'"),
        ({"compressor_size": 0}, "compressor_size=0"),
        ({"prefusion_layer_num": "4"}, "prefusion_layer_num='4'"),
        ({"image_aspect_ratio": "anyres"}, "image_aspect_ratio='anyres'"),
        (
            {"mm_hidden_size": 1024},
            "mm_hidden_size=1024 disagrees with vision_config.hidden_size=64",
        ),
        ({"compressor_num_heads": 5}, "compressor_num_heads=5 does not divide"),
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end=True"),
    ],
)
def test_invalid_fields_are_named(fields, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(")):
        make_config(**fields)


def write_clip_folder(folder: Path) -> CLIPVisionModel:
    torch.manual_seed(7)
    clip = CLIPVisionModel(make_config().vision_config)
    folder.mkdir(parents=True)
    clip.config.save_pretrained(folder)
    state = {"vision_model." + k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    return clip


def checkpoint_without_tower(folder: Path, mm_vision_tower: str) -> None:
    """Like the reference's own saves: the tower lives elsewhere, named by mm_vision_tower."""
    make_model(mm_vision_tower=mm_vision_tower).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    kept = {k: v for k, v in weights.items() if "vision_tower" not in k}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    del config["vision_config"]
    (folder / "config.json").write_text(json.dumps(config))


def assert_tower_equals(model, clip):
    for key, value in clip.state_dict().items():
        assert torch.equal(model.model.vision_tower.encoder.state_dict()[key], value), key


def test_tower_from_folder_relative_to_checkpoint(tmp_path):
    clip = write_clip_folder(tmp_path / "ckpt" / "clip")
    checkpoint_without_tower(tmp_path / "ckpt", "clip")
    model = LlavaMiniForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert model.config.vision_config.hidden_size == 64
    assert_tower_equals(model, clip)


def test_tower_from_absolute_folder(tmp_path):
    clip = write_clip_folder(tmp_path / "elsewhere" / "clip")
    checkpoint_without_tower(tmp_path / "ckpt", str(tmp_path / "elsewhere" / "clip"))
    assert_tower_equals(LlavaMiniForCausalLM.from_pretrained(tmp_path / "ckpt"), clip)


def test_tower_from_local_hf_cache(tmp_path):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someorg--tiny-clip" / "snapshots" / ("0" * 40)
    clip = write_clip_folder(snapshot)
    (cache / "models--someorg--tiny-clip" / "refs").mkdir()
    (cache / "models--someorg--tiny-clip" / "refs" / "main").write_text("0" * 40)
    checkpoint_without_tower(tmp_path / "ckpt", "someorg/tiny-clip")
    model = LlavaMiniForCausalLM.from_pretrained(tmp_path / "ckpt", cache_dir=str(cache))
    assert_tower_equals(model, clip)


def test_tower_not_found_offline_says_where_it_looked(tmp_path, monkeypatch):
    write_clip_folder(tmp_path / "ckpt" / "clip")
    checkpoint_without_tower(tmp_path / "ckpt", "clip")
    shutil.rmtree(tmp_path / "ckpt" / "clip")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mm_vision_tower='clip'.*Looked for .*ckpt"):
        LlavaMiniForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    make_model(prefusion_layer_num=2).save_pretrained(tmp_path)
    config = make_config(prefusion_layer_num=1)
    with pytest.raises(
        ValueError, match=r"1 missing keys \[\]|unexpected keys \['model\.prefusion_layers\.1\."
    ):
        LlavaMiniForCausalLM.from_pretrained(tmp_path, config=config)
    make_model(compressor_type="avg_pool").save_pretrained(tmp_path / "pool")
    with pytest.raises(ValueError, match=r"missing keys \['model\.compressor\.attn"):
        LlavaMiniForCausalLM.from_pretrained(tmp_path / "pool", config=make_config())
    model = LlavaMiniForCausalLM.from_pretrained(
        tmp_path / "pool", config=make_config(), strict=False
    )
    assert model.model.compressor is not None


def test_placeholder_count_must_match_images(tiny_model):
    image = random_images(1)[0]
    with pytest.raises(ValueError, match="Sample 0 has 2 image placeholders .* but 1 images"):
        tiny_model(torch.tensor([[1, IMG, 5, IMG]]), images=random_images(1))
    with pytest.raises(ValueError, match="Sample 1 has 0 image placeholders .* but 1 images"):
        tiny_model(torch.tensor([[1, IMG, 5], [1, 5, 6]]), images=random_images(2))
    with pytest.raises(ValueError, match="Sample 0 has 1 image placeholders .* but 0 images"):
        tiny_model(torch.tensor([[1, IMG, 5]]), images=[None])
    with pytest.raises(ValueError, match="Sample 0 has 1 image placeholders .* but 2 images"):
        tiny_model(torch.tensor([[1, IMG, 5]]), images=[[image, image]])
    with pytest.raises(ValueError, match="images for 1 samples but a batch of 2"):
        tiny_model(torch.tensor([[1, IMG], [1, IMG]]), images=[image])


def test_image_tensor_rank_and_size_are_checked(tiny_model):
    ids = torch.tensor([[1, IMG, 5]])
    with pytest.raises(
        ValueError, match=r"must be \(batch, parts, 3, H, W\), got shape \(1, 3, 56, 56\)"
    ):
        tiny_model(ids, images=random_images(1)[:, 0])
    with pytest.raises(ValueError, match=r"must be 56x56 .*got \(64, 64\)"):
        tiny_model(ids, images=torch.zeros(1, 1, 3, 64, 64))
    with pytest.raises(ValueError, match="3 parts per image"):
        tiny_model(ids, images=random_images(1, parts=3))
    with pytest.raises(ValueError, match=r"video \(T, parts, 3, H, W\), got shape \(3, 56, 56\)"):
        tiny_model(ids, images=[random_images(1)[0, 0]])


def test_unresolved_vision_config_is_reported():
    config = make_config()
    config.vision_config = None
    with pytest.raises(ValueError, match="vision_config is unresolved"):
        LlavaMiniForCausalLM(config)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("images", [1, 2])
def test_selecting_the_embeddings_is_refused(images):
    model = make_model(mm_vision_select_layer=0)
    with pytest.raises(ValueError, match="must select a block's output, not the embeddings"):
        model(torch.tensor([[1, IMG]] * images), images=random_images(images))
