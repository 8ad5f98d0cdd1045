"""The bad-input battery's `vllm` door (`tests/battery/cases.py`): every hostile input that can
reach the plug-in's processor meets the outcome the table states for it.

The door hands `LlavaMiniMultiModalProcessor.apply` what vLLM hands it: the prompt rendered by the
checkpoint's chat template and tokenized as plain text, images as PIL images (vLLM opens image
files and URLs itself), a video as a `video_url` arrives (the file's bytes, `MediaWithBytes`,
which the plug-in decodes by the project's frame policy).
"""

import numpy as np
import pytest
from PIL import Image

from tests.battery.cases import CASES, Accepted, NotApplicable, Rejected
from tests.battery.doors import Outcome
from tests.integrations.vllm.conftest import SKIP_REASON

vllm = pytest.importorskip("vllm", reason=SKIP_REASON)

DOOR = "vllm"

PAIRS = [
    pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.slow else [])
    for case in CASES
    if not isinstance(case.expected[DOOR], NotApplicable)
]


@pytest.fixture(scope="module")
def mm_processor(llm):
    from vllm.multimodal import MULTIMODAL_REGISTRY

    return MULTIMODAL_REGISTRY.create_processor(llm.llm_engine.model_config)


def vllm_door(payload, media, processor, mm_processor) -> Outcome:
    """One payload through the plug-in's processor -> its outcome (a `ValueError` is the
    documented refusal; anything else fails the test)."""
    from vllm.multimodal.media import MediaWithBytes
    from vllm.multimodal.processing.inputs import ProcessorInputs

    content = [{"type": part.kind, "path": str(media / part.value)} for part in payload.media]
    conversation = [{"role": "user", "content": [*content, {"type": "text", "text": payload.text}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    data = {"image": [], "video": []}
    for part in payload.media:
        path = media / part.value
        if part.kind == "image":
            data["image"].append(Image.open(path))
        else:  # what vLLM's video loader returns for a video_url, with the file's bytes
            stub = (np.zeros((1, 1, 1, 3), np.uint8), {"video_backend": "opencv"})
            data["video"].append(MediaWithBytes(stub, path.read_bytes()))
    inputs = ProcessorInputs(
        processor.tokenizer(prompt, add_special_tokens=False)["input_ids"],
        mm_processor.info.parse_mm_data({k: v for k, v in data.items() if v}),
    )
    try:
        result = mm_processor.apply(inputs)
    except ValueError as error:
        return Outcome(False, str(error))
    items = [item for items in result["mm_kwargs"].values() for item in items]
    frames = [int(n) for item in items for n in item["visual_frames"].data if n > 0]
    visuals = sum(len(item["visual_frames"].data) for item in items)
    return Outcome(
        True, f"{len(result['prompt_token_ids'])} tokens, {visuals} visuals, frames {frames}"
    )


@pytest.mark.parametrize("case", PAIRS)
def test_hostile_input_meets_its_expected_outcome_at_the_vllm_door(
    case, tmp_path, reference, mm_processor
):
    media = tmp_path / "media"
    media.mkdir()
    payload = case.build(media)
    expected = case.expected[DOOR]
    outcome = vllm_door(payload, media, reference[0], mm_processor)
    if isinstance(expected, Rejected):
        assert not outcome.accepted, f"accepted, expected a refusal: {outcome.detail[:300]}"
        assert expected.message in outcome.detail
    else:
        assert isinstance(expected, Accepted)
        assert outcome.accepted, f"refused, expected {expected.result!r}: {outcome.detail}"
        if expected.shows is not None:
            assert expected.shows in outcome.detail
