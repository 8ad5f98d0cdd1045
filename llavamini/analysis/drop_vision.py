"""The paper's token-dropping experiment: answer with the vision tokens removed from layer L on.

Layers `0 .. L-1` run over the whole sequence; before layer L the hidden states at the vision
positions are dropped, and layers `L ..` run over the rest, whose rotary positions stay what they
were (the text after the image keeps its distance from the text before it). L = 0 removes the
vision tokens from the LLM altogether; L >= the number of layers is ordinary generation. With
pre-fusion, the text embeddings entering the LLM already carry what pre-fusion read from the
image: dropping removes the vision tokens from the LLM only, which is the paper's point.

Decoding is greedy (argmax, no logits processors) with a KV cache per layer: the layers before L
cache keys over the whole sequence, the layers from L on over the text only, so each new token
attends to exactly what it would in a recomputed prefix. Answers are written per L in the
evaluation runner's answer format (resumable, `metadata.drop_vision_from_layer` says L) and
scored by the task's scorer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from llavamini.conversation import get_template
from llavamini.eval.answers import AnswerWriter, read_answers, record_key
from llavamini.eval.runner import (
    answer_record,
    check_visuals_exist,
    load_question_visual,
    pending_questions,
    question_inputs,
)
from llavamini.eval.tasks.base import ScoreInputs, read_jsonl, write_json
from llavamini.inference import stop_token_ids

logger = logging.getLogger(__name__)


def parse_layers(text: str | None, num_layers: int) -> list[int]:
    """`"0,4,8"` -> `[0, 4, 8, num_layers]`: sorted, unique, and always ending with the no-drop
    baseline `num_layers` (values past it mean the same). None -> every layer and the baseline.
    """
    if text is None:
        return list(range(num_layers + 1))
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise ValueError(f"--layers must be comma-separated integers, got {text!r}.") from error
    if not values or min(values) < 0:
        raise ValueError(f"--layers needs layer indices >= 0, got {text!r}.")
    return sorted({min(value, num_layers) for value in values} | {num_layers})


def run_layers(
    model,
    hidden: torch.Tensor,
    position_ids: torch.Tensor,
    layer_indices: range,
    cache: DynamicCache,
    prefill: bool,
) -> torch.Tensor:
    """Run LLM decoder layers over `hidden` `(1, T, D)` at `position_ids` `(1, T)`, appending
    their keys and values to `cache`.

    A prefill gets a causal mask over its T tokens (built for the model's attention backend);
    a one-token decode step needs none, since it may attend to everything its layer cached.
    """
    if len(layer_indices) == 0:
        return hidden
    mask = None
    if prefill:
        # An explicit all-ones padding mask: without it transformers would read the gaps in
        # the position ids (where vision tokens were) as packed sequences.
        mask = create_causal_mask(
            config=model.config,
            inputs_embeds=hidden,
            attention_mask=torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device),
            past_key_values=None,
        )
    position_embeddings = model.model.rotary_emb(hidden, position_ids)
    for index in layer_indices:
        hidden = model.model.layers[index](
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            position_embeddings=position_embeddings,
        )
    return hidden


def next_token_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """`(1, T, D)` last-layer states -> `(V,)` logits of the last position."""
    return model.lm_head(model.model.norm(hidden[:, -1:]))[0, -1]


def prefill_dropping_vision(
    model,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    vision_mask: torch.Tensor,
    drop_layer: int,
    cache: DynamicCache,
) -> torch.Tensor:
    """The prompt through the LLM with the vision tokens dropped before layer `drop_layer`.

    Args:
        inputs_embeds: `(1, S, D)` the spliced prompt (no padding).
        position_ids: `(1, S)`.
        vision_mask: `(1, S)` bool, the vision positions.
        drop_layer: the first layer that does not see them.
        cache: an empty cache, filled here.

    Returns:
        `(V,)` logits for the first answer token.
    """
    num_layers = len(model.model.layers)
    split = min(drop_layer, num_layers)
    hidden = run_layers(model, inputs_embeds, position_ids, range(split), cache, prefill=True)
    keep = ~vision_mask[0]
    hidden, position_ids = hidden[:, keep], position_ids[:, keep]
    if split < num_layers:
        hidden = run_layers(
            model, hidden, position_ids, range(split, num_layers), cache, prefill=True
        )
    return next_token_logits(model, hidden)


@torch.no_grad()
def greedy_answer_dropping_vision(
    model, spliced, drop_layer: int, max_new_tokens: int, stop_ids: Sequence[int]
) -> list[int]:
    """Greedy answer token ids (the stop token included when reached) with the vision tokens
    dropped from layer `drop_layer` on; `spliced` is `embed_multimodal`'s output for one
    unpadded prompt."""
    if spliced.inputs_embeds.shape[0] != 1 or not bool(spliced.attention_mask.all()):
        raise ValueError("Dropping vision tokens works on one unpadded prompt at a time.")
    cache = DynamicCache(config=model.config)
    logits = prefill_dropping_vision(
        model,
        spliced.inputs_embeds,
        spliced.position_ids,
        spliced.vision_mask,
        drop_layer,
        cache,
    )
    position = int(spliced.position_ids[0, -1])
    tokens: list[int] = []
    for step in range(max_new_tokens):
        token = int(logits.argmax())
        tokens.append(token)
        if token in stop_ids or step == max_new_tokens - 1:
            break
        position += 1
        hidden = model.model.embed_tokens(torch.tensor([[token]], device=logits.device))
        positions = torch.tensor([[position]], device=logits.device)
        hidden = run_layers(
            model, hidden, positions, range(len(model.model.layers)), cache, prefill=False
        )
        logits = next_token_logits(model, hidden)
    return tokens


def answer_dropping_vision(loaded, question, config, drop_layer: int, template) -> str:
    """One question's answer text with the vision tokens dropped from `drop_layer` on."""

    model = loaded.model
    processor = loaded.processor.with_video_policy(
        config.inputs.video_fps, config.inputs.video_max_frames
    )
    tokenizer = processor.tokenizer
    visual = load_question_visual(question, processor, config.task)
    inputs = question_inputs(
        processor, [question], [visual], config.task, config.conv_mode, config.prefix
    ).to(model.device)
    with torch.no_grad():
        spliced = model.model.embed_multimodal(
            inputs["input_ids"],
            inputs["attention_mask"],
            None,
            inputs.get("images", [None]),
            padding_side="left",
            return_vision_mask=True,
        )
    limit = config.generation.max_new_tokens or config.task.max_new_tokens
    ids = greedy_answer_dropping_vision(
        model, spliced, drop_layer, limit, stop_token_ids(tokenizer, template)
    )
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def answers_file_for(output_dir: str, drop_layer: int) -> str:
    return os.path.join(output_dir, f"answers.drop{drop_layer:02d}.jsonl")


def answer_questions(loaded, config, drop_layer: int) -> str:
    """Answer `config`'s questions (resuming `config.answers_file`) with vision dropped from
    `drop_layer` on; returns the answer file."""

    template = get_template(config.conv_mode)
    todo, chunk_size, done = pending_questions(config)
    logger.info(
        "Drop from layer %d: %d questions, %d already answered in %s.",
        drop_layer,
        chunk_size,
        done,
        config.answers_file,
    )
    check_visuals_exist(todo)
    metadata = {
        "settings": config.settings(),
        "drop_vision_from_layer": drop_layer,
        "batch_size": 1,
        "chunk": "0/1",
    }
    with AnswerWriter(config.answers_file) as writer:
        for question in todo:
            text = answer_dropping_vision(loaded, question, config, drop_layer, template)
            writer.write(answer_record(question, text, config, metadata))
    return config.answers_file


def scoring_questions(task, questions_file: str, answers: Sequence[dict], output_dir: str) -> str:
    """The question file to score against: for a task whose labels live in its question JSONL
    (no separate annotations, e.g. `synthetic`), only the answered rows (so `--limit` does not
    count the rest as wrong); otherwise the file itself."""

    if task.annotations is not None or not questions_file.endswith(".jsonl"):
        return questions_file
    answered = {str(record["question_id"]) for record in answers}
    rows = [
        row
        for row in read_jsonl(questions_file, "question file")
        if str(row.get("question_id")) in answered
    ]
    path = os.path.join(output_dir, "questions.answered.jsonl")
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


def score_answers(task, answers_file: str, questions: str, annotations: str | None) -> dict:
    """The task's scorer on one answer file (result beside it as `.score.json`)."""

    answers = read_answers(answers_file)
    prefix = answers_file[: -len(".jsonl")]
    questions = scoring_questions(task, questions, answers, os.path.dirname(answers_file))
    result = task.score(ScoreInputs(answers, questions, annotations, prefix))
    result["answered"] = len(answers)
    write_json(prefix + ".score.json", result)
    return result


def agreement_with(baseline: Sequence[dict], answers: Sequence[dict]) -> float | None:
    """Percentage of the baseline's questions answered with exactly the same text."""

    texts = {record_key(record): record["text"] for record in answers}
    same = sum(texts.get(record_key(record)) == record["text"] for record in baseline)
    return round(100.0 * same / len(baseline), 2) if baseline else None


def run_drop_vision(
    loaded,
    config,
    layers: Sequence[int],
    output_dir: str,
    score_questions: str | None = None,
    annotations: str | None = None,
) -> dict:
    """Answer and score `config`'s questions once per drop layer.

    Args:
        loaded: the model.
        config: a `llavamini.eval.runner.RunConfig` (its `answers_file` is replaced per layer).
        layers: drop layers (see `parse_layers`).
        output_dir: where the answer files and their scores go.
        score_questions: the question file the scorer reads (default: `config`'s).
        annotations: the task's label file or folder (None when the task has none).

    Returns:
        The report: `{"task", "layers", "accuracy", "same_answer", "scores", ...}`, where
        `same_answer` is the percentage of answers identical to the no-drop ones.
    """

    os.makedirs(output_dir, exist_ok=True)
    num_layers = len(loaded.model.model.layers)
    questions = score_questions or config.questions_file
    scores, answers = [], []
    for drop_layer in layers:
        layer_config = dataclasses.replace(
            config, answers_file=answers_file_for(output_dir, drop_layer)
        )
        answers_file = answer_questions(loaded, layer_config, drop_layer)
        score = score_answers(config.task, answers_file, questions, annotations)
        logger.info("Drop from layer %d: accuracy %s", drop_layer, score.get("accuracy"))
        scores.append(score)
        answers.append(read_answers(answers_file))
    baseline = answers[list(layers).index(num_layers)] if num_layers in layers else None
    return {
        "task": config.task.name,
        "model_path": config.model.path,
        "num_layers": num_layers,
        "layers": list(layers),
        "baseline_layer": num_layers,
        "accuracy": [score.get("accuracy") for score in scores],
        "same_answer": [
            agreement_with(baseline, layer_answers) if baseline is not None else None
            for layer_answers in answers
        ],
        "metric": scores[0].get("metric") if scores else None,
        "answered": [score["answered"] for score in scores],
        "scores": scores,
    }
