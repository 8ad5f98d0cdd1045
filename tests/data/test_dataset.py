"""Manifests, mixtures, labels by construction, the bad-sample policy and the collator."""

import json

import pytest
import torch
import yaml
from PIL import Image

from llavamini import LlavaMiniForCausalLM
from llavamini.apps.tiny import build_tiny_tokenizer, tiny_config, tiny_image_processor
from llavamini.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llavamini.conversation import get_template, render, render_with_spans
from llavamini.data import tokenizer_image_token
from llavamini.data.dataset import BadSampleError, DataCollator, SupervisedDataset
from llavamini.data.mixture import load_records, read_mixture
from llavamini.data.tokenization import tokenize_conversation
from llavamini.model.processing_llavamini import LlavaMiniProcessor
from tests.conftest import ramp_frames, write_video

TURNS = [
    ("user", "<image>\nWhat colour?"),
    ("assistant", "red"),
    ("user", "Shape?"),
    ("assistant", "a square"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def supervised_text(tokenizer, labels):
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


@pytest.mark.parametrize(
    ("name", "golden_tail", "supervised"),
    [
        ("llava_llama_3_1",
         "<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|><|start_header_id|>user"
         "<|end_header_id|>\n\nShape?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
         "a square<|eot_id|>",
         "red<|eot_id|>a square<|eot_id|>"),
        ("vicuna_v1",
         "USER: <image>\nWhat colour? ASSISTANT: red</s>USER: Shape? ASSISTANT: a square</s>",
         " red</s> a square</s>"),
    ],
)  # fmt: skip
def test_golden_training_text_and_labels(tokenizer, name, golden_tail, supervised):
    text, spans = render_with_spans(get_template(name), TURNS)
    assert text.endswith(golden_tail)
    ids, labels = tokenize_conversation(text, spans, tokenizer, "golden")
    assert len(ids) == len(labels) and ids.count(IMAGE_TOKEN_INDEX) == 1
    assert supervised_text(tokenizer, labels) == supervised
    # Training tokenizes the prompt part exactly as inference does.
    prompt = render(get_template(name), TURNS[:1])
    prompt_ids = tokenizer_image_token(prompt, tokenizer)
    assert ids[: len(prompt_ids)] == prompt_ids


def test_plain_template_supervises_the_caption_and_newline(tokenizer):
    text, spans = render_with_spans(
        get_template("plain"), [("user", "<image>"), ("assistant", "a red circle.")]
    )
    assert text == "<image>a red circle.\n"
    ids, labels = tokenize_conversation(text, spans, tokenizer)
    assert ids[:2] == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
    assert supervised_text(tokenizer, labels) == "a red circle.\n"


def test_tokenizer_chat_template(tokenizer):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    text, spans = render_with_spans(get_template("chat_template"), TURNS, tokenizer=tokenizer)
    ids, labels = tokenize_conversation(text, spans, tokenizer)
    assert supervised_text(tokenizer, labels) == "red<|eot_id|>a square<|eot_id|>"
    with pytest.raises(ValueError, match="needs a tokenizer that has a chat template"):
        render_with_spans(get_template("chat_template"), TURNS, tokenizer=build_tiny_tokenizer())


def test_qwen_style_chatml_template_labels():
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    template = get_template("chat_template")
    text, spans = render_with_spans(template, TURNS, tokenizer=tokenizer)
    assert text.startswith("<|im_start|>user\n<image>\nWhat colour?<|im_end|>\n")
    ids, labels = tokenize_conversation(text, spans, tokenizer)
    assert supervised_text(tokenizer, labels) == "red<|im_end|>\na square<|im_end|>\n"
    prompt = render(template, TURNS[:1], tokenizer=tokenizer)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_token_straddling_an_answer_boundary_is_an_error(tokenizer):
    text = "<|eot_id|>square"
    boundary = text.index("square") + 2  # inside the word: one token crosses it
    with pytest.raises(ValueError, match="Sample s7: token .* straddles the boundary"):
        tokenize_conversation(text, [(boundary, len(text))], tokenizer, "s7")


def write_image(path, size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)


def sample(sample_id, question, answer, image=None):
    record = {
        "id": sample_id,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
    }
    if image:
        record["image"] = image
    return record


def make_dataset(records, tokenizer, video_fps=1.0, **kwargs):
    config = tiny_config(len(tokenizer), image_size=56)
    processor = LlavaMiniProcessor.from_config(
        tiny_image_processor(56), tokenizer, config, video_fps=video_fps
    )
    defaults = dict(
        records=records,
        processor=processor,
        template=get_template("llava_llama_3_1"),
        model_config=config,
        max_length=256,
    )
    return SupervisedDataset(**{**defaults, **kwargs})


def test_mixture_sampling_is_deterministic(tmp_path):
    data = [sample(f"s{i}", "q", "a") for i in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    spec = {"datasets": [
        {"json_path": str(tmp_path / "a.json"), "sampling_strategy": "first:3"},
        {"json_path": str(tmp_path / "a.json"), "sampling_strategy": "end:2"},
        {"json_path": str(tmp_path / "b.jsonl"), "sampling_strategy": "random:4"},
        {"json_path": str(tmp_path / "b.jsonl"), "sampling_strategy": "25%"},
    ]}  # fmt: skip
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    first = [r["id"] for r, _ in read_mixture(str(tmp_path / "mix.yaml"), seed=1)]
    again = [r["id"] for r, _ in read_mixture(str(tmp_path / "mix.yaml"), seed=1)]
    other = [r["id"] for r, _ in read_mixture(str(tmp_path / "mix.yaml"), seed=2)]
    assert first == again and first != other
    assert first[:5] == ["s0", "s1", "s2", "s18", "s19"] and len(first) == 3 + 2 + 4 + 5
    records = load_records(
        [str(tmp_path / "mix.yaml"), str(tmp_path / "a.json")], ["A", "B"], seed=1
    )
    assert {r["_folder"] for r in records[:14]} == {"A"} and records[-1]["_folder"] == "B"
    spec["datasets"][0]["sampling_strategy"] = "some"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="sampling_strategy 'some'"):
        read_mixture(str(tmp_path / "bad.yaml"), seed=1)
    with pytest.raises(ValueError, match="2 data files but 1 image folders"):
        load_records(["x", "y"], ["A"])


def test_bad_samples_raise_by_default_and_are_counted_when_skipped(tmp_path, tokenizer):
    write_image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    records = [
        sample("good", "<image>\nq", "red", image="ok.png"),
        sample("missing", "<image>\nq", "red", image="nope.png"),
        sample("broken", "<image>\nq", "red", image="broken.png"),
        sample("no-placeholder", "q", "red", image="ok.png"),
        sample("long", "<image>\n" + "word " * 400, "red", image="ok.png"),
    ]
    records = [{**r, "_folder": str(tmp_path), "_source": "m.json"} for r in records]
    strict = make_dataset(records, tokenizer)
    assert strict[0]["visuals"][0].shape == (1, 3, 56, 56)
    expected = {
        1: "missing media",
        2: "undecodable media",
        3: "malformed conversation",
        4: "over-length",
    }
    for index, kind in expected.items():
        with pytest.raises(
            BadSampleError, match=f"Sample {records[index]['id']} \\(m.json"
        ) as info:
            strict[index]
        assert info.value.kind == kind
    lenient = make_dataset(records, tokenizer, on_bad_sample="skip")
    batch = DataCollator(tokenizer.pad_token_id)([lenient[i] for i in range(5)])
    assert lenient.skipped == 4 and batch["input_ids"].shape[0] == 1
    assert DataCollator(0)([None, None]) == {"empty_batch": True}


def test_collator_pads_right_and_stacks_uniform_images(tmp_path, tokenizer):
    write_image(tmp_path / "a.png")
    records = [
        sample("a", "<image>\nWhat colour is it?", "red", image="a.png"),
        sample("b", "<image>\nq", "a red square", image="a.png"),
        sample("text", "Say yes.", "yes"),
    ]
    records = [{**r, "_folder": str(tmp_path), "_source": "m.json"} for r in records]
    dataset = make_dataset(records, tokenizer)
    collate = DataCollator(tokenizer.pad_token_id)
    batch = collate([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 1, 3, 56, 56)  # one batched tensor
    lengths = batch["attention_mask"].sum(1)
    assert (batch["input_ids"][1, lengths[1] :] == tokenizer.pad_token_id).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    mixed = collate([dataset[0], dataset[2]])
    assert isinstance(mixed["images"], list) and mixed["images"][1] == []
    assert dataset.modality_lengths()[2] < 0 < dataset.modality_lengths()[0]


def test_video_sample_reaches_the_model_with_gradients(tmp_path, tokenizer):
    write_video(tmp_path / "clip.mp4", ramp_frames(8, 32, 32, step=20), fps=4)
    record = {"id": "v", "video": "clip.mp4", "_folder": str(tmp_path), "_source": "m.json",
              "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
                                {"from": "gpt", "value": "it gets brighter"}]}  # fmt: skip
    dataset = make_dataset([record], tokenizer, video_fps=1.0)
    example = dataset[0]
    assert example["visuals"][0].shape == (2, 1, 3, 56, 56)  # 2 s at 1 fps
    batch = DataCollator(tokenizer.pad_token_id)([example])
    torch.manual_seed(0)
    model = LlavaMiniForCausalLM(tiny_config(len(tokenizer), image_size=56)).train()
    out = model(**batch)
    assert out.logits.shape[1] == batch["input_ids"].shape[1] - 1 + 2  # one token per frame
    out.loss.backward()
    assert model.model.compressor.query.grad.abs().sum() > 0
