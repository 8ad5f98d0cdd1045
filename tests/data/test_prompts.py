"""Prompt strings and `<image>` tokenization."""

import pytest

from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.conversation import LLAMA_3_1_SYSTEM, get_template, render
from llavamini.data import tokenizer_image_token
from llavamini.tiny import build_tiny_tokenizer

LLAMA_3_1_GOLDEN = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    + LLAMA_3_1_SYSTEM
    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def test_llava_llama_3_1_inference_prompt():
    """reference.md §3.2: the prompt of one image question, byte for byte."""
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
