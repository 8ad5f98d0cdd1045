"""Prompt strings and `<image>` tokenization."""

import dataclasses
import json
from pathlib import Path

import pytest

from llavamini.apps.tiny import build_tiny_tokenizer
from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.conversation import (
    LLAMA_3_1_SYSTEM,
    TEMPLATES,
    default_template_name,
    get_template,
    render,
    render_with_spans,
)
from llavamini.data import tokenizer_image_token

LLAMA_3_1_GOLDEN = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    + LLAMA_3_1_SYSTEM
    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def test_llava_llama_3_1_inference_prompt():
    """docs/compatibility.md K10: the prompt of one image question, byte for byte."""
    prompt = render(get_template("llava_llama_3_1"), [("user", "<image>\nWhat is this?")])
    assert prompt == LLAMA_3_1_GOLDEN


def test_vicuna_v1_prompt():
    prompt = render(
        get_template("vicuna_v1"),
        [("user", "<image>\nq1"), ("assistant", "a1"), ("user", "q2")],
    )
    assert prompt.endswith(" USER: <image>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT:")


def test_unknown_template_lists_known_ones():
    with pytest.raises(KeyError, match="llava_llama_3_1"):
        get_template("llava_v9")


def test_tokenizer_image_token_single_bos_and_placeholder():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer_image_token(LLAMA_3_1_GOLDEN, tokenizer)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    text = tokenizer.decode([i for i in ids if i >= 0])
    assert text == LLAMA_3_1_GOLDEN.replace("<image>", "")
    plain = tokenizer_image_token("<image>a caption\n", tokenizer, return_tensors="pt")
    assert plain[:2].tolist() == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]


def test_compact_tiny_tokenizer_is_read_through_its_chat_template():
    """The quickstart's format: no system prompt, role tokens, answers end with <|eot_id|>."""
    tokenizer = build_tiny_tokenizer(chat_format="compact")
    assert default_template_name(tokenizer) == "chat_template"
    assert default_template_name(build_tiny_tokenizer()) == "llava_llama_3_1"
    messages = [("user", "<image>\nWhat colour is at the top left?"), ("assistant", "red")]
    text, spans = render_with_spans(get_template("chat_template"), messages, tokenizer=tokenizer)
    assert text == (
        "<|begin_of_text|><|user|><image>\nWhat colour is at the top left?<|eot_id|>"
        "<|assistant|>red<|eot_id|>"
    )
    assert [text[start:end] for start, end in spans] == ["red<|eot_id|>"]
    with pytest.raises(ValueError, match="chat_format 'chatml'.*compact"):
        build_tiny_tokenizer(chat_format="chatml")


def test_jinja_templates_render_byte_for_byte_what_the_python_writers_did():
    """tests/fixtures/chat_templates.json holds the renders (text and answer spans) of the
    Python template writers the project used before its templates became Jinja (commit
    5d25d5a): every conv mode, the default, an empty and another system prompt, one to four
    turns, several images, text only, an empty conversation, with and without the generation
    prompt."""
    cases = json.loads((Path(__file__).parents[1] / "fixtures" / "chat_templates.json").read_text())
    tokenizer = build_tiny_tokenizer(chat_format="compact")
    assert len(cases) == 108 and {c["template"] for c in cases} == set(TEMPLATES)
    for case in cases:
        template = TEMPLATES[case["template"]]
        if case["system"] is not None:
            template = dataclasses.replace(template, system=case["system"])
        messages = [tuple(m) for m in case["messages"]]
        text, spans = render_with_spans(
            template, messages, case["add_generation_prompt"], tokenizer=tokenizer
        )
        assert text == case["text"], case
        assert [list(span) for span in spans] == case["spans"], case
