"""Every front door renders a conversation as the processor does: for the same conversation and
media, the prompt token ids (and pixels) that chat's session, the OpenAI server, evaluation and
the attention analysis build equal `LlavaMiniProcessor.apply_chat_template`'s, token for token."""

import base64
import json

import numpy as np
import pytest
import torch
from PIL import Image

from llavamini.eval.tasks import get_task
from llavamini.eval.tasks.base import Question

SYSTEM = "You answer in one word."
EARLIER = [("What is it?", "A square.")]
"""A first question on the picture and its answer, before the question asked."""


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paths")
    pixels = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "picture.png")
    return folder / "picture.png"


def question_text(picture) -> str:
    """The asked question as evaluation writes it (the task's suffix appended)."""
    return get_task("gqa").question_text(Question(1, "What colour is it?", str(picture)), "")


def transformers_conversation(picture, system: bool, history: bool) -> list[dict]:
    """The conversation in transformers' chat format, each user message the picture then its
    text."""

    def user(text):
        image = {"type": "image", "path": str(picture)}
        return {"role": "user", "content": [image, {"type": "text", "text": text}]}

    messages = [{"role": "system", "content": SYSTEM}] if system else []
    for question, answer in EARLIER if history else []:
        messages += [user(question), {"role": "assistant", "content": answer}]
    return [*messages, user(question_text(picture))]


def chat_inputs(loaded, picture, system, history):
    from llavamini.serve.session import ChatSession, resolve_template

    template = resolve_template(None, loaded.processor)
    session = ChatSession(loaded, template, system=SYSTEM if system else None)
    for question, answer in EARLIER if history else []:
        session.attach(str(picture))
        session.add_turn("user", question)
        session.add_turn("assistant", answer)
    session.attach(str(picture))
    return session.model_inputs(question_text(picture))


def server_inputs(loaded, picture, system, history):
    """Through the server's request schema, `plan_request` and the worker's session, the image
    sent as a base64 data URL."""
    from llavamini.serve.api_schema import ChatCompletionRequest, ServerConfig, plan_request
    from llavamini.serve.api_worker import Backend

    url = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    image = {"type": "image_url", "image_url": {"url": url}}
    messages = transformers_conversation(picture, system, history)
    for message in messages:
        if message["role"] == "user":
            message["content"] = [image, message["content"][1]]
    config = ServerConfig(model_name="tiny")
    plan = plan_request(ChatCompletionRequest(messages=messages), config, loaded.processor)
    return Backend(loaded, config).session(plan).model_inputs(plan.turns[-1].text)


def eval_inputs(loaded, picture, system, history):
    from llavamini.eval.runner import load_question_visual, question_inputs

    task = get_task("gqa")
    question = Question(1, "What colour is it?", str(picture))
    visual = load_question_visual(question, loaded.processor, task)
    conv_mode = loaded.processor.conv_mode
    return question_inputs(loaded.processor, [question], [visual], task, conv_mode)


def analysis_inputs(loaded, picture, system, history):
    """`analyze attention`'s samples read from a question file, tokenized by `prompt_tokens`."""
    from llavamini.analysis.tokens import prompt_tokens, read_samples
    from llavamini.conversation import get_template

    questions = picture.parent / "questions.jsonl"
    line = {"question_id": 1, "image": picture.name, "text": question_text(picture)}
    questions.write_text(json.dumps(line) + "\n")
    [sample] = read_samples(str(questions))
    template = get_template(loaded.processor.conv_mode)
    prompt = prompt_tokens(template, loaded.tokenizer, sample.user_message)
    visual = loaded.processor.process_image(sample.image)
    return {"input_ids": torch.tensor([prompt.input_ids]), "images": [[visual]]}


DOORS = {
    "chat": chat_inputs,
    "server": server_inputs,
    "eval": eval_inputs,
    "analysis": analysis_inputs,
}
CASES = [
    *[(door, False, False) for door in DOORS],
    ("chat", True, True),
    ("server", True, True),
]
"""(door, with a system prompt, with an earlier turn): evaluation and the analysis take one
question without a system prompt."""


@pytest.mark.parametrize(
    ("door", "system", "history"),
    CASES,
    ids=[f"{door}{'-system-history' if system else ''}" for door, system, _ in CASES],
)
def test_every_door_tokenizes_as_the_processor(loaded, picture, door, system, history):
    expected = loaded.processor.apply_chat_template(
        transformers_conversation(picture, system, history),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    inputs = DOORS[door](loaded, picture, system, history)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    [visuals], [expected_visuals] = inputs["images"], expected["images"]
    assert len(visuals) == len(expected_visuals) == (2 if history else 1)
    for visual, expected_visual in zip(visuals, expected_visuals, strict=True):
        torch.testing.assert_close(visual, expected_visual, rtol=0, atol=0)
    if system:  # the system prompt replaced the template's, once
        text = loaded.tokenizer.decode([t for t in expected["input_ids"][0] if t >= 0])
        assert SYSTEM in text and loaded.processor.template.system not in text


def test_training_renders_the_prompt_as_the_processor(loaded, picture):
    """A training sample of the same conversation (one question, its answer) starts with the
    processor's prompt token for token, and its pixels are the processor's: training renders
    with the template function the processor renders with (`conversation.render_with_spans`
    and `render` share `_render`) and processes media with the processor itself."""
    from llavamini.data.dataset import SupervisedDataset

    record = {
        "id": "1",
        "image": picture.name,
        "_folder": str(picture.parent),
        "conversations": [
            {"from": "human", "value": f"{question_text(picture)}\n<image>"},
            {"from": "gpt", "value": "Blue."},
        ],
    }
    dataset = SupervisedDataset(
        [record], loaded.processor, loaded.processor.template, loaded.model.config, 10_000
    )
    example = dataset[0]
    expected = loaded.processor.apply_chat_template(
        transformers_conversation(picture, system=False, history=False),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    prompt = expected["input_ids"][0].tolist()
    assert example["input_ids"][: len(prompt)].tolist() == prompt
    answer = [int(t) for t in example["labels"][len(prompt) :] if t >= 0]
    assert loaded.tokenizer.decode(answer, skip_special_tokens=True).strip() == "Blue."
    [visual], [[expected_visual]] = example["visuals"], expected["images"]
    torch.testing.assert_close(visual, expected_visual, rtol=0, atol=0)
