"""Greedy answers of the vLLM plug-in equal the transformers model's, token for token.

Every answer is exactly `NEW_TOKENS` long on both sides (the end-of-turn tokens are suppressed
until then), so a tiny model's early stop cannot hide a difference.
"""

import numpy as np
import pytest
from PIL import Image

from tests.integrations.vllm.conftest import SKIP_REASON

vllm = pytest.importorskip("vllm", reason=SKIP_REASON)

NEW_TOKENS = 12


def picture(seed: int, size: tuple[int, int] = (64, 80)) -> Image.Image:
    """A random RGB image (not square: the processor pads it, as for a real photo)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_message(image, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": text}]}]  # fmt: skip


def as_openai(conversation: list[dict]) -> list[dict]:
    """transformers' image parts -> the OpenAI-style parts `LLM.chat` takes (a PIL image)."""
    messages = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_pil", "image_pil": part["image"]} if part["type"] == "image"
                else part
                for part in content
            ]  # fmt: skip
        messages.append({**message, "content": content})
    return messages


def reference_answer(reference, conversation: list[dict]) -> list[int]:
    processor, model = reference
    inputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    tokens = model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
    )
    return tokens[0].tolist()


def sampling():
    return vllm.SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, temperature=0.0)


def vllm_answers(engine, conversations: list[list[dict]]) -> list[list[int]]:
    outputs = engine.chat([as_openai(c) for c in conversations], sampling(), use_tqdm=False)
    return [list(output.outputs[0].token_ids) for output in outputs]


CONVERSATIONS = [
    image_message(picture(0), "What is unusual about this image?"),
    image_message(picture(1, (90, 50)), "Describe the picture in detail."),
    image_message(picture(2), "How many circles are there?"),
    [{"role": "user", "content": "What colour is a yellow taxi?"}],
]


def test_a_batch_of_images_and_prompts_matches_transformers(llm, reference):
    expected = [reference_answer(reference, c) for c in CONVERSATIONS]
    assert vllm_answers(llm, CONVERSATIONS) == expected


def test_two_prompts_on_one_image_get_their_own_answers(llm, reference):
    image = picture(3)
    conversations = [
        image_message(image, "What is unusual about this image?"),
        image_message(image, "Answer the question using a single word or phrase. Colour?"),
    ]
    expected = [reference_answer(reference, c) for c in conversations]
    assert expected[0] != expected[1]  # else the test could not tell the prompts apart
    assert vllm_answers(llm, conversations) == expected
    # One at a time: the second must not reuse the first's cached encoder output or blocks.
    assert [vllm_answers(llm, [c])[0] for c in conversations] == expected


def test_an_image_in_the_middle_of_the_prompt(llm, reference):
    image = picture(4)
    conversation = [{"role": "user", "content": [
        {"type": "text", "text": "Here is a picture of shapes."},
        {"type": "image", "image": image},
        {"type": "text", "text": "What is in the top left corner?"},
    ]}]  # fmt: skip
    # vLLM puts image parts first unless the text places them: give it the same text.
    openai_style = [{"role": "user", "content": [
        {"type": "text", "text": "Here is a picture of shapes.\n<image>\n"
                                 "What is in the top left corner?"},
        {"type": "image_pil", "image_pil": image},
    ]}]  # fmt: skip
    outputs = llm.chat([openai_style], sampling(), use_tqdm=False)
    assert list(outputs[0].outputs[0].token_ids) == reference_answer(reference, conversation)


def test_chunked_prefill_and_prefix_caching(chunked_llm, reference):
    expected = [reference_answer(reference, c) for c in CONVERSATIONS]
    first = chunked_llm.chat([as_openai(c) for c in CONVERSATIONS], sampling(), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in first] == expected
    assert all(len(o.prompt_token_ids) > 32 * 2 for o in first)  # several chunks each
    again = chunked_llm.chat([as_openai(c) for c in CONVERSATIONS], sampling(), use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in again] == expected
    assert all(o.num_cached_tokens >= 32 for o in again)  # served from the prefix cache


def test_a_video(llm, reference):
    frames = np.stack([np.asarray(picture(10 + t)) for t in range(3)])  # (T, H, W, 3) uint8
    conversation = [{"role": "user", "content": [
        {"type": "video", "video": frames},
        {"type": "text", "text": "What happens?"},
    ]}]  # fmt: skip
    processor, _ = reference
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    outputs = llm.generate(
        {"prompt": prompt, "multi_modal_data": {"video": frames}}, sampling(), use_tqdm=False
    )
    assert list(outputs[0].outputs[0].token_ids) == reference_answer(reference, conversation)


def test_two_images_in_one_prompt(llm, reference):
    first, second = picture(40), picture(41, (50, 90))
    question = "What differs between the two pictures?"
    conversation = [{"role": "user", "content": [
        {"type": "image", "image": first},
        {"type": "image", "image": second},
        {"type": "text", "text": question},
    ]}]  # fmt: skip
    swapped = [{"role": "user", "content": [
        {"type": "image", "image": second},
        {"type": "image", "image": first},
        {"type": "text", "text": question},
    ]}]  # fmt: skip
    expected = [reference_answer(reference, c) for c in (conversation, swapped)]
    assert vllm_answers(llm, [conversation, swapped]) == expected
    # The tiny model answers both orders alike (its logits move by ~1e-5): which image each
    # placeholder takes is `media_in_placeholder_order`, shared by vLLM's processor and ours
    # (tests/data/test_messages.py).


def test_an_image_and_a_video_in_one_prompt(llm, reference):
    image = picture(42)
    frames = np.stack([np.asarray(picture(43 + t)) for t in range(2)])  # (T, H, W, 3) uint8
    conversation = [{"role": "user", "content": [
        {"type": "video", "video": frames},
        {"type": "image", "image": image},
        {"type": "text", "text": "Is the picture in the video?"},
    ]}]  # fmt: skip
    processor, _ = reference
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.index("<video>") < prompt.index("<image>")
    outputs = llm.generate(
        {"prompt": prompt, "multi_modal_data": {"image": image, "video": frames}},
        sampling(),
        use_tqdm=False,
    )
    assert list(outputs[0].outputs[0].token_ids) == reference_answer(reference, conversation)


def test_a_three_turn_chat_with_images_in_turns_one_and_three(llm, reference):
    conversation = [
        *image_message(picture(50), "What is unusual about this image?"),
        {"role": "assistant", "content": "The colours are random."},
        {"role": "user", "content": "Describe the picture in detail."},
        {"role": "assistant", "content": "It is noise."},
        *image_message(picture(51, (70, 40)), "And this one: is it the same?"),
    ]
    processor, _ = reference
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.count("<image>") == 2
    outputs = llm.chat([as_openai(conversation)], sampling(), use_tqdm=False)
    assert list(outputs[0].outputs[0].token_ids) == reference_answer(reference, conversation)


def test_placeholders_and_media_that_disagree_are_refused(llm, reference):
    processor, _ = reference
    prompt = processor.apply_chat_template(
        image_message(picture(52), "What is it?"), add_generation_prompt=True
    )
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        llm.generate(
            {"prompt": prompt, "multi_modal_data": {"image": [picture(52), picture(53)]}},
            sampling(),
            use_tqdm=False,
        )
