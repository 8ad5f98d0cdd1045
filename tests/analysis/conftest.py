"""Tiny checkpoints and synthetic questions for the analysis tests, built once per session."""

import json
import os

import pytest

from llavamini.apps.tiny import build_tiny_checkpoint

IMAGE_SIZE = 56  # a 4 x 4 patch grid: 16 vision tokens in LLaVA-1.5 mode
SHARP = {"initializer_range": 0.2}
"""Larger random weights than the default 0.02, so attention is far from uniform and the vision
tokens change the answers: comparisons that a near-uniform model would pass by luck can fail."""


def load(folder: str):
    from llavamini.model.loading import ModelSpec

    return ModelSpec(folder, device="cpu", dtype="float32").load()


def question_inputs(loaded, data, index: int, image_index: int | None = None):
    """Synthetic question `index` with the image of question `image_index` (default its own),
    through the checkpoint's processor: `(input_ids, attention_mask, images)`."""
    with open(data["val_questions"], encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    folder = os.path.dirname(data["val_questions"])
    image = os.path.join(folder, rows[index if image_index is None else image_index]["image"])
    content = [{"type": "image", "path": image}, {"type": "text", "text": rows[index]["text"]}]
    inputs = loaded.processor.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template="llava_llama_3_1",
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    return inputs["input_ids"], inputs["attention_mask"], inputs["images"]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The synthetic shapes data: `val_questions.jsonl` (8 questions) and `instruct.json`."""
    from llavamini.apps import synthetic

    folder = tmp_path_factory.mktemp("analysis-data")
    return synthetic.write_dataset(str(folder), num_train=4, num_val=8, image_size=IMAGE_SIZE)


@pytest.fixture(scope="session")
def mini_checkpoint(tmp_path_factory):
    """LLaVA-Mini: one compressed token, one pre-fusion layer, two LLM layers."""
    folder = tmp_path_factory.mktemp("ckpt") / "mini"
    return build_tiny_checkpoint(str(folder), image_size=IMAGE_SIZE, **SHARP)


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory):
    """LLaVA-1.5 mode: every projected patch is a vision token, no pre-fusion."""
    folder = tmp_path_factory.mktemp("ckpt") / "full"
    return build_tiny_checkpoint(
        str(folder), image_size=IMAGE_SIZE, compressor_type="none", prefusion_layer_num=0, **SHARP
    )


@pytest.fixture(scope="session")
def mini(mini_checkpoint):
    return load(mini_checkpoint)


@pytest.fixture(scope="session")
def full(full_checkpoint):
    return load(full_checkpoint)
