"""`LlavaMiniProcessor`: AutoProcessor, apply_chat_template, generate(**inputs), save/load.

"Today's path" below is what the project did before the processor existed, written out from
its primitives: the chat template, `tokenizer_image_token`, `process_images` / `process_video`
with the checkpoint's image processor, and `model.generate(inputs=..., images=[[...]])`.
"""

import base64
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, pipeline

from llavamini import LlavaMiniProcessor
from llavamini.apps.tiny import build_tiny_assets, build_tiny_checkpoint
from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.conversation import get_template, render
from llavamini.data import load_video, process_images, process_video, tokenizer_image_token
from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.model.image_processors import load_image_processor
from llavamini.train.train import train
from tests.conftest import TEST_IMAGE_SIZE, ramp_frames, write_video

REPO = Path(__file__).resolve().parents[2]
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint written by `llavamini train` (two steps), with its processor."""
    root = tmp_path_factory.mktemp("processing")
    assets = build_tiny_assets(str(root / "assets"), image_size=TEST_IMAGE_SIZE, num_train=8)
    output = root / "trained"
    train([str(REPO / "configs" / "train" / "tiny.yaml"), "--model_name_or_path", assets["llm"],
           "--vision_tower", assets["clip"], "--data_path", assets["instruct"],
           "--image_folder", os.path.dirname(assets["instruct"]), "--output_dir", str(output),
           "--max_steps", "2", "--disable_tqdm", "true"])  # fmt: skip
    return str(output)


@pytest.fixture(scope="module")
def release_like(tmp_path_factory):
    """A tiny checkpoint laid out like the release: no processor_config.json."""
    folder = tmp_path_factory.mktemp("processing") / "tiny"
    return build_tiny_checkpoint(str(folder), image_size=TEST_IMAGE_SIZE, initializer_range=0.2)


@pytest.fixture(scope="module")
def hd_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processing") / "tiny-hd"
    return build_tiny_checkpoint(
        str(folder), image_size=TEST_IMAGE_SIZE, resolution_ratio=2, initializer_range=0.2
    )


@pytest.fixture(scope="module")
def model(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def processor(checkpoint):
    return AutoProcessor.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processing-media")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 70)), ("b.png", (64, 48))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    write_video(folder / "clip.mp4", ramp_frames(12, 48, 64, step=20), fps=4)
    return folder


def user(*parts):
    content = []
    for part in parts:
        if isinstance(part, tuple):
            content.append({"type": part[0], "path": str(part[1])})
        else:
            content.append({"type": "text", "text": part})
    return {"role": "user", "content": content}


def todays_inputs(checkpoint_dir, config, prompt_text, sources):
    """Input ids and visuals as the project built them before the processor."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    image_processor = load_image_processor(checkpoint_dir, config)
    visuals = []
    for kind, path in sources:
        if kind == "image":
            visuals.append(process_images([Image.open(path)], image_processor, config)[0])
        else:
            visuals.append(process_video(load_video(str(path)), image_processor, config))
    prompt = render(get_template("llava_llama_3_1"), [("user", prompt_text)])
    return torch.tensor([tokenizer_image_token(prompt, tokenizer)]), [visuals]


CASES = {
    "image": ([("image", "a.png"), "What is it?"], "<image>\nWhat is it?"),
    "two images": (
        [("image", "a.png"), ("image", "b.png"), "Compare them."],
        "<image>\n<image>\nCompare them.",
    ),
    "video": ([("video", "clip.mp4"), "What happens?"], "<image>\nWhat happens?"),
    "text only": (["Hello there."], "Hello there."),
}


def test_auto_processor_builds_one_for_a_checkpoint_without_processor_config(
    release_like, checkpoint, caplog
):
    assert not os.path.exists(os.path.join(release_like, "processor_config.json"))
    assert os.path.exists(os.path.join(checkpoint, "processor_config.json"))  # train wrote it
    with caplog.at_level(logging.WARNING):
        processor = AutoProcessor.from_pretrained(release_like)
    assert isinstance(processor, LlavaMiniProcessor)
    assert processor.conv_mode == "llava_llama_3_1"
    notices = [r.getMessage() for r in caplog.records if "processor_config.json" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_inputs_equal_todays_path(case, checkpoint, model, processor, media):
    parts, todays_text = CASES[case]
    parts = [(p[0], media / p[1]) if isinstance(p, tuple) else p for p in parts]
    inputs = processor.apply_chat_template(
        [user(*parts)], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    sources = [p for p in parts if isinstance(p, tuple)]
    ids, visuals = todays_inputs(checkpoint, model.config, todays_text, sources)
    assert torch.equal(inputs["input_ids"], ids)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(ids))
    if sources:
        assert len(inputs["images"][0]) == len(visuals[0])
        for ours, theirs in zip(inputs["images"][0], visuals[0], strict=True):
            assert torch.equal(ours, theirs)
    else:
        assert "images" not in inputs
    expected = model.generate(inputs=ids, images=visuals if sources else None, **GREEDY)
    assert torch.equal(model.generate(**inputs, **GREEDY), expected)
    # `input_ids=` is `inputs=`, and forward takes the same dict.
    same = {"input_ids" if k == "input_ids" else k: v for k, v in inputs.items()}
    assert torch.equal(model.generate(**same, **GREEDY), expected)
    assert model(**inputs).logits.shape[0] == 1


def test_high_resolution_crops_equal_todays_path(hd_checkpoint, media):
    processor = AutoProcessor.from_pretrained(hd_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(hd_checkpoint).eval()
    assert processor.resolution_ratio == 2
    inputs = processor(text="<image>\nWhat?", images=str(media / "a.png"))
    (pixels,) = inputs["images"][0]
    assert pixels.shape == (5, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)  # 2 x 2 crops + global
    image_processor = load_image_processor(hd_checkpoint, model.config)
    expected = process_images([Image.open(media / "a.png")], image_processor, model.config)[0]
    assert torch.equal(pixels, expected)


def test_batch_is_left_padded_and_answers_equal_batch_of_one(model, processor, media):
    conversations = [
        [user(("image", media / "a.png"), "What is it?")],
        [user(("video", media / "clip.mp4"), "What happens in this short clip of a video?")],
        [user("Text only.")],
        [user(("image", media / "b.png"), "And this one?"), {"role": "assistant",
         "content": "A square."}, user(("image", media / "a.png"), "Same?")],  # fmt: skip
    ]
    batch = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # left padding
    assert [len(v) for v in batch["images"]] == [1, 1, 0, 2]
    together = processor.batch_decode(model.generate(**batch, **GREEDY), skip_special_tokens=True)
    alone = [
        processor.batch_decode(
            model.generate(
                **processor.apply_chat_template(
                    c, add_generation_prompt=True, tokenize=True, return_dict=True
                ),
                **GREEDY,
            ),
            skip_special_tokens=True,
        )[0]
        for c in conversations
    ]
    assert together == alone
    assert len(set(alone)) > 1  # the answers depend on the inputs: the comparison bites


def test_call_matches_apply_chat_template_and_takes_flat_or_nested_media(processor, media):
    a, clip = str(media / "a.png"), str(media / "clip.mp4")
    conversations = [[user(("image", a), "Q1")], [user(("video", clip), ("image", a), "Q2")]]
    prompts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    assert "<video>\n<image>\nQ2" in prompts[1]
    nested = processor(text=prompts, images=[[a], [a]], videos=[[], [clip]])
    flat = processor(text=prompts, images=[a, a], videos=[clip])
    templated = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    for inputs in (nested, flat):
        assert torch.equal(inputs["input_ids"], templated["input_ids"])
        shapes = [[tuple(v.shape) for v in sample] for sample in inputs["images"]]
        assert shapes == [[tuple(v.shape) for v in s] for s in templated["images"]]
    assert shapes[1][0][0] == 3  # the video: 3 s at 1 fps, before the image, as in the text
    assert (templated["input_ids"][1] == IMAGE_TOKEN_INDEX).sum() == 2


def test_media_in_every_form(processor, media):
    path = media / "a.png"
    expected = processor.process_image(str(path))
    data = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    for source in (Image.open(path), f"file://{path}", data, np.asarray(Image.open(path))):
        assert torch.equal(processor.process_image(source), expected)
    frames = load_video(str(media / "clip.mp4"))
    from_file = processor.process_video(str(media / "clip.mp4"))
    assert torch.equal(processor.process_video(frames), from_file)
    capped = processor.with_video_policy(fps=2.0, max_frames=4)
    assert capped.process_video(str(media / "clip.mp4")).shape[0] == 4
    assert processor.video_fps == 1.0 and processor.video_max_frames == MAX_VIDEO_FRAMES  # a copy


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, m: p(text="<image>\nQ", images=[]), "Text 0 has 1 <image> placeholders but 0"),
        (lambda p, m: p(text=["<image>", "Q"], images=[m / "a.png"] * 2), "Text 1 has 0"),
        (lambda p, m: p.process_image("https://example.com/a.png"), "not fetched"),
        (lambda p, m: p.process_image(m / "missing.png"), "missing.png"),
        (
            lambda p, m: p.apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}]),
            "message 0, part 0: 'type' must be",
        ),
        (
            lambda p, m: p.apply_chat_template([user(("image", m / "a.png")), {"role": "robot"}]),
            "message 1: role must be",
        ),
        (
            lambda p, m: p.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}]),
            "needs exactly one of",
        ),
        (lambda p, m: p.model_inputs(["<image>"], [[]]), "Sample 0 has 1"),
    ],
)
def test_bad_input_is_named(call, message, processor, media):
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        call(processor, media)


def test_unsupported_options_are_refused(processor):
    with pytest.raises(TypeError, match="tools"):
        processor.apply_chat_template([user("hi")], tools=[{"name": "x"}])
    with pytest.raises(ValueError, match="conv_mode must be one of"):
        LlavaMiniProcessor(processor.image_processor, processor.tokenizer, conv_mode="llava_v0")


def test_save_and_load_round_trip(processor, checkpoint, tmp_path, media, caplog):
    custom = LlavaMiniProcessor(
        processor.image_processor,
        processor.tokenizer,
        conv_mode="vicuna_v1",
        video_fps=2.0,
        video_max_frames=3,
    )
    custom.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "processor_config.json", "tokenizer.json", "tokenizer_config.json"
    ]  # fmt: skip
    with open(tmp_path / "processor_config.json") as f:
        saved = json.load(f)
    assert saved["conv_mode"] == "vicuna_v1" and saved["video_max_frames"] == 3
    with caplog.at_level(logging.WARNING):
        loaded = LlavaMiniProcessor.from_pretrained(tmp_path)
    assert not caplog.records  # a saved processor is read as it is, without a notice
    assert loaded.to_dict() == custom.to_dict()
    assert loaded.chat_template == custom.chat_template == get_template("vicuna_v1").jinja
    messages = [user(("video", media / "clip.mp4"), "Q")]
    one, two = (
        p.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        for p in (custom, loaded)
    )
    assert torch.equal(one["input_ids"], two["input_ids"])
    assert torch.equal(one["images"][0][0], two["images"][0][0])
    assert one["images"][0][0].shape[0] == 3  # 2 fps, capped at 3 frames


def test_image_text_to_text_pipeline(checkpoint, model, processor, media):
    """transformers' pipeline loads the checkpoint by path and answers as generate does."""
    messages = [user(("image", media / "a.png"), "What is it?")]
    pipe = pipeline("image-text-to-text", model=checkpoint)
    (result,) = pipe(text=messages, max_new_tokens=6, return_full_text=False)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    expected = processor.batch_decode(model.generate(**inputs, **GREEDY), skip_special_tokens=True)
    assert result["generated_text"] == expected[0]


def test_readme_snippet_runs_on_a_tiny_checkpoint(checkpoint, tmp_path, monkeypatch):
    """The README's "Using the released model" code, with the checkpoint and image replaced."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using the released model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "AutoProcessor.from_pretrained" in code and "generate(**inputs" in code
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.full((30, 40, 3), 128, dtype=np.uint8)).save(image)
    code = code.replace('"ICTNLP/llava-mini-llama-3.1-8b"', repr(checkpoint))
    code = code.replace('"photo.jpg"', repr(str(image))).replace('"cuda"', '"cpu"')
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["answer"], str)
