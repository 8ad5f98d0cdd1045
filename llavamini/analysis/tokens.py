"""Which token is what: the analysed samples, their prompts, and the kind of every position.

A sample is an image question (LLaVA question JSONL) or an image conversation (LLaVA-format
JSON, whose first answer is used). Its prompt is rendered and tokenized by the processor's
steps, as generation does; each position of the sequences the LLM and pre-fusion run over gets a
kind (vision, system, text before the image, text after it, answer), which decides whether it is
a query row of the analysis and which key group it belongs to.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from llavamini.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llavamini.conversation import get_template, render
from llavamini.data.dataset import conversation_messages, image_first
from llavamini.data.messages import placeholder_kinds
from llavamini.data.tokenization import tokenize_batch, tokenize_conversation
from llavamini.eval.tasks.base import read_json, read_llava_questions
from llavamini.model.packing import prefusion_text_keep
from llavamini.model.processing_llavamini import render_conversation

logger = logging.getLogger(__name__)

GROUPS = ("vision", "system", "text")
"""Key groups, in the order of the statistics' last dimension."""
QUERY_KINDS = ("text", "answer")

# Token kinds of a sequence. The first three are also the key groups' indices. BEFORE_IMAGE
# (the user turn's text before the image, which cannot see it) and ANSWER keys belong to the
# "text" group; EXCLUDED positions are no key of any group (the placeholder, text pre-fusion
# does not read).
VISION, SYSTEM, TEXT, ANSWER, BEFORE_IMAGE, EXCLUDED = 0, 1, 2, 3, 4, -1
KIND_CODES = {"text": TEXT, "answer": ANSWER}


def key_groups(kinds: torch.Tensor) -> torch.Tensor:
    """`(S,)` token kinds -> `(S,)` group index into `GROUPS` (-1: no group)."""
    is_text = (kinds == ANSWER) | (kinds == BEFORE_IMAGE)
    return torch.where(is_text, torch.full_like(kinds, TEXT), kinds)


# ---- reading samples -------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisSample:
    """One image question.

    Attributes:
        sample_id: the question's id.
        image: the image path.
        user_message: the user turn, starting with `<image>\\n`.
        answer: the answer to analyse, or None to generate it greedily.
    """

    sample_id: str
    image: str
    user_message: str
    answer: str | None = None


def read_samples(path: str, image_folder: str | None = None) -> list[AnalysisSample]:
    """Image questions from a LLaVA question JSONL (`question_id`, `image`, `text`; answers are
    generated) or a LLaVA-format conversation JSON (`id`, `image`, `conversations`; the first
    question and its given answer).

    Image paths are relative to `image_folder` (default: the data file's folder). Samples
    without an image are left out (logged): there is nothing to analyse in them.
    """
    folder = image_folder if image_folder is not None else os.path.dirname(path)
    if path.endswith(".jsonl"):
        samples = _read_question_file(path, folder)
    elif path.endswith(".json"):
        samples = _read_conversation_file(path, folder)
    else:
        raise ValueError(
            f"{path}: expected a LLaVA question file (.jsonl) or a LLaVA-format conversation "
            f"file (.json)."
        )
    if not samples:
        raise ValueError(f"{path} has no sample with an image to analyse.")
    return samples


def _read_question_file(path: str, folder: str) -> list[AnalysisSample]:

    questions = read_llava_questions(path, folder)
    samples = [
        AnalysisSample(str(q.question_id), q.visual, image_first(q.prompt))
        for q in questions
        if q.visual is not None
    ]
    _log_left_out(path, len(questions) - len(samples))
    return samples


def _read_conversation_file(path: str, folder: str) -> list[AnalysisSample]:

    records = read_json(path, "LLaVA-format conversation file")
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples.")
    # Any named template normalises the placeholder the same way; 'plain' would drop the text.
    template = get_template("llava_llama_3_1")
    samples = []
    for index, record in enumerate(records):
        image = record.get("image") if isinstance(record, dict) else None
        if not isinstance(image, str):
            continue
        try:
            messages = conversation_messages(record, template, num_visuals=1)
        except ValueError as error:
            raise ValueError(f"{path}, sample {record.get('id', index)!r}: {error}") from error
        (_, question), (_, answer) = messages[0], messages[1]
        if not question.startswith(DEFAULT_IMAGE_TOKEN):
            raise ValueError(
                f"{path}, sample {record.get('id', index)!r}: the image placeholder must be in "
                f"the first question."
            )
        sample_id = str(record.get("id", index))
        samples.append(AnalysisSample(sample_id, os.path.join(folder, image), question, answer))
    _log_left_out(path, len(records) - len(samples))
    return samples


def _log_left_out(path: str, count: int) -> None:
    if count:
        logger.info("%s: left out %d samples without an image.", path, count)


# ---- token layout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTokens:
    """A rendered prompt (`text`), its token ids and kinds (`SYSTEM`, `BEFORE_IMAGE`, `TEXT`
    after the image, `EXCLUDED` for the image placeholder), and the answer token ids."""

    text: str
    input_ids: list[int]
    kinds: list[int]
    answer_ids: list[int] = field(default_factory=list)


def system_text(template, tokenizer) -> str:
    """The system segment the template writes before the first user turn ('' for none)."""

    return render(template, [], add_generation_prompt=False, tokenizer=tokenizer)


def prompt_tokens(
    template, tokenizer, user_message: str, sample_id: str = "?", system: str | None = None
) -> PromptTokens:
    """Render and tokenize the prompt with the processor's steps (`render_conversation`, then
    `tokenize_batch`, as `LlavaMiniProcessor.apply_chat_template` does for generation) and mark
    the kind of each token.

    The system tokens are those inside the system segment's characters (`system`, else
    `system_text`), and any token before them (an added BOS); found through the tokenizer's
    offsets (`tokenize_conversation`). Tokens after the (first) image placeholder are `TEXT`,
    the others `BEFORE_IMAGE`.
    """

    prompt, _ = render_conversation(
        [{"role": "user", "content": user_message}], template, True, tokenizer
    )
    [input_ids], _ = tokenize_batch(
        [prompt], [len(placeholder_kinds(prompt))], tokenizer, "left", add_bos=True
    )
    system = (system_text(template, tokenizer) if system is None else system).rstrip()
    if system and not prompt.startswith(system):
        raise ValueError(
            f"Sample {sample_id}: the prompt of template {template.name!r} does not start with "
            f"its system segment, so system tokens cannot be located."
        )
    num_system = 0
    if system:
        ids, labels = tokenize_conversation(prompt, [(0, len(system))], tokenizer, sample_id)
        if ids != input_ids:
            raise ValueError(f"Sample {sample_id}: two tokenizations of the prompt disagree.")
        num_system = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
    if IMAGE_TOKEN_INDEX not in input_ids:
        raise ValueError(f"Sample {sample_id}: the prompt has no image placeholder.")
    image_at = input_ids.index(IMAGE_TOKEN_INDEX)
    kinds = [
        SYSTEM if i < num_system else BEFORE_IMAGE if i < image_at else TEXT
        for i in range(len(input_ids))
    ]
    kinds[image_at] = EXCLUDED
    return PromptTokens(prompt, input_ids, kinds)


def given_answer_ids(
    template, tokenizer, prompt: PromptTokens, user_message: str, answer: str, sample_id: str
) -> list[int]:
    """The token ids of what the template writes after the prompt for `answer` (the answer and
    its end marker), tokenized on their own: what the model would read had it generated them.

    (Tokenizing prompt and answer together can split the prompt's last characters differently,
    e.g. a byte-level BPE merging the header's newlines with the answer's first word.)
    """

    conversation = [
        {"role": "user", "content": user_message},
        {"role": "assistant", "content": answer},
    ]
    text, _ = render_conversation(conversation, template, False, tokenizer)
    if not text.startswith(prompt.text):
        raise ValueError(
            f"Sample {sample_id}: template {template.name!r} does not write the answer after the "
            f"prompt, so the answer tokens cannot be placed."
        )
    return tokenizer(text[len(prompt.text) :], add_special_tokens=False)["input_ids"]


def llm_kinds(prompt: PromptTokens, vision_mask: torch.Tensor, num_answer: int) -> torch.Tensor:
    """`(S,)` kinds of the LLM sequence: the spliced prompt (vision tokens where `vision_mask`,
    `(S_prompt,)`, the prompt's other tokens in order) followed by `num_answer` answer tokens."""
    vision_mask = vision_mask.cpu()
    text_kinds = torch.tensor([k for k in prompt.kinds if k != EXCLUDED], dtype=torch.long)
    kinds = torch.full(vision_mask.shape, VISION, dtype=torch.long)
    if int((~vision_mask).sum()) != len(text_kinds):
        raise ValueError(
            f"The spliced sequence has {int((~vision_mask).sum())} text positions but the prompt "
            f"{len(text_kinds)} text tokens."
        )
    kinds[~vision_mask] = text_kinds
    return torch.cat([kinds, torch.full((num_answer,), ANSWER, dtype=torch.long)])


def prefusion_kinds(prompt: PromptTokens, sequence_length: int) -> torch.Tensor:
    """`(S,)` kinds of the pre-fusion sequence `[vision prefix; prompt text]`: the prefix is
    vision, text positions pre-fusion does not read are `EXCLUDED`."""

    ids = torch.tensor([prompt.input_ids])
    keep = prefusion_text_keep(ids, torch.ones_like(ids), None)[0]
    text = torch.tensor(prompt.kinds, dtype=torch.long).masked_fill(~keep, EXCLUDED)
    prefix = sequence_length - len(text)
    if prefix < 1:
        raise ValueError(
            f"A pre-fusion sequence of {sequence_length} positions cannot hold {len(text)} text "
            f"tokens after the vision tokens."
        )
    return torch.cat([torch.full((prefix,), VISION, dtype=torch.long), text])
