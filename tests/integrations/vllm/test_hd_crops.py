"""High resolution (`resolution_ratio` 2: 2 x 2 crops + the global view) on vLLM equals the
transformers model, on a random tiny checkpoint built with that setting."""

import pytest

from tests.integrations.vllm.conftest import ENGINE_ARGS, SKIP_REASON
from tests.integrations.vllm.test_greedy_parity import (
    image_message,
    picture,
    reference_answer,
    vllm_answers,
)

vllm = pytest.importorskip("vllm", reason=SKIP_REASON)


@pytest.fixture(scope="module")
def hd_checkpoint(tmp_path_factory) -> str:
    from llavamini.apps.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("vllm-hd")
    return build_tiny_checkpoint(str(root / "checkpoint"), image_size=56, resolution_ratio=2)


def test_hd_crops_match_transformers(hd_checkpoint):
    from transformers import AutoModelForCausalLM, AutoProcessor

    import llavamini  # noqa: F401

    processor = AutoProcessor.from_pretrained(hd_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(hd_checkpoint).eval()
    conversations = [
        image_message(picture(20, (120, 90)), "Describe the picture in detail."),
        image_message(picture(21), "What is unusual about this image?"),
    ]
    inputs = processor.apply_chat_template(
        conversations[0], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert inputs["images"][0][0].shape[0] == 5  # 2 x 2 crops + the global view
    expected = [reference_answer((processor, model), c) for c in conversations]
    engine = vllm.LLM(hd_checkpoint, **ENGINE_ARGS, max_num_batched_tokens=2048)
    try:
        assert vllm_answers(engine, conversations) == expected
    finally:
        engine.llm_engine.engine_core.shutdown()
