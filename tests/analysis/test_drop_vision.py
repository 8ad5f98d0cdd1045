"""Dropping the vision tokens from layer L on, and `analyze drop-vision` / `analyze compression`."""

import json
import os

import pytest
import torch
from transformers import DynamicCache

from llavamini.analysis import cli
from llavamini.analysis.drop_vision import (
    agreement_with,
    greedy_answer_dropping_vision,
    parse_layers,
    prefill_dropping_vision,
)
from llavamini.conversation import get_template
from llavamini.errors import UsageError
from llavamini.inference import stop_token_ids
from tests.analysis.conftest import question_inputs
from tests.analysis.test_attention import parse
from tests.eval.helpers import answer

TEMPLATE = get_template("llava_llama_3_1")


def _questions(data) -> list[dict]:
    with open(data["val_questions"], encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _spliced(loaded, data, index: int, image_index: int | None = None):
    """`embed_multimodal` output for synthetic question `index` (with the image of question
    `image_index`, default its own)."""
    input_ids, attention_mask, images = question_inputs(loaded, data, index, image_index)
    with torch.no_grad():
        return (
            loaded.model.model.embed_multimodal(
                input_ids,
                attention_mask,
                None,
                images,
                padding_side="left",
                return_vision_mask=True,
            ),
            input_ids,
            images,
        )


def _prefill(model, spliced, drop_layer: int) -> torch.Tensor:
    with torch.no_grad():
        return prefill_dropping_vision(
            model,
            spliced.inputs_embeds,
            spliced.position_ids,
            spliced.vision_mask,
            drop_layer,
            DynamicCache(config=model.config),
        )


def test_parse_layers_adds_the_no_drop_baseline():
    assert parse_layers("4,0,8,4", 6) == [0, 4, 6]  # 8 means the same as 6: no drop
    assert parse_layers(None, 2) == [0, 1, 2]
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_layers("0,a", 2)
    with pytest.raises(ValueError, match=">= 0"):
        parse_layers("-1", 2)


def test_agreement_counts_identical_answers_per_question():
    baseline = [answer("q1", "red"), answer("q2", "two"), answer("q3", "yes")]
    dropped = [answer("q3", "yes"), answer("q1", "blue"), answer("q2", "two")]
    assert agreement_with(baseline, dropped) == pytest.approx(66.67)
    assert agreement_with(baseline, dropped[:1]) == pytest.approx(33.33)  # missing: different


def test_dropping_at_layer_0_removes_the_images_influence(full, data):
    model = full.model
    first, _, _ = _spliced(full, data, 0, image_index=0)
    second, _, _ = _spliced(full, data, 0, image_index=3)
    assert int(first.vision_mask.sum()) == 16
    assert not torch.equal(first.inputs_embeds, second.inputs_embeds)
    torch.testing.assert_close(_prefill(model, first, 0), _prefill(model, second, 0))
    for drop_layer in (1, 2):  # layer 0 (and 1) saw the image
        assert (
            _prefill(model, first, drop_layer) - _prefill(model, second, drop_layer)
        ).abs().max() > 1e-3

    # Dropping at 0 is the LLM over the text alone, at the text's original positions.
    keep = ~first.vision_mask[0]
    with torch.no_grad():
        text_only = model(
            inputs_embeds=first.inputs_embeds[:, keep],
            attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long),
            position_ids=first.position_ids[:, keep],
        ).logits[0, -1]
    torch.testing.assert_close(_prefill(model, first, 0), text_only)
    # ... and not at renumbered positions (the vision tokens' positions stay taken).
    with torch.no_grad():
        renumbered = model(inputs_embeds=first.inputs_embeds[:, keep]).logits[0, -1]
    assert (renumbered - text_only).abs().max() > 1e-4


def test_dropping_past_the_last_layer_gives_the_ordinary_greedy_answers(mini, full, data):
    for loaded in (mini, full):
        model = loaded.model
        stops = stop_token_ids(loaded.tokenizer, TEMPLATE)
        for index in range(3):
            spliced, input_ids, images = _spliced(loaded, data, index)
            expected = model.generate(
                inputs=input_ids,
                images=images,
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )[0].tolist()
            for drop_layer in (len(model.model.layers), 10):
                answer = greedy_answer_dropping_vision(model, spliced, drop_layer, 6, stops)
                assert answer == expected


def test_cached_decoding_equals_recomputing_the_whole_prefix(full, data):
    """The per-layer KV cache (layers before L hold vision keys, later ones do not) decodes
    exactly as re-running the dropped prefix for every new token."""
    model = full.model
    embed = model.model.embed_tokens
    spliced, _, _ = _spliced(full, data, 1)
    for drop_layer in (0, 1):
        cached = greedy_answer_dropping_vision(model, spliced, drop_layer, 6, stop_ids=[])
        embeds, positions, vision = spliced.inputs_embeds, spliced.position_ids, spliced.vision_mask
        recomputed = []
        for _ in range(6):
            fresh = DynamicCache(config=model.config)
            logits = prefill_dropping_vision(model, embeds, positions, vision, drop_layer, fresh)
            token = int(logits.argmax())
            recomputed.append(token)
            embeds = torch.cat([embeds, embed(torch.tensor([[token]]))], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
            vision = torch.cat([vision, torch.zeros(1, 1, dtype=torch.bool)], dim=1)
        assert cached == recomputed and len(cached) == 6


def test_drop_vision_command_scores_each_layer_and_resumes(full_checkpoint, full, data, tmp_path):
    from llavamini.eval.answers import read_answers
    from llavamini.eval.runner import run_questions

    folder = os.path.dirname(data["val_questions"])
    argv = [
        "drop-vision",
        "--model-path",
        full_checkpoint,
        "--task",
        "synthetic",
        "--questions",
        data["val_questions"],
        "--visual-folder",
        folder,
        "--limit",
        "4",
        "--layers",
        "0,1,9",
        "--output-dir",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    args = parse(*argv)
    report = args.func(args, loaded=full)
    out = tmp_path / "synthetic"
    saved = json.loads((out / "drop_vision.json").read_text())
    assert saved["layers"] == [0, 1, 2] and saved["baseline_layer"] == 2
    assert len(saved["accuracy"]) == 3 and all(0 <= a <= 100 for a in saved["accuracy"])
    assert saved["answered"] == [4, 4, 4] and saved["same_answer"][-1] == 100.0
    assert all(score["questions"] == 4 for score in saved["scores"])  # only the answered ones
    assert (out / "drop_vision.png").stat().st_size > 5000
    assert report["accuracy"] == saved["accuracy"]

    answers = {layer: read_answers(str(out / f"answers.drop{layer:02d}.jsonl")) for layer in (0, 2)}
    assert {r["metadata"]["drop_vision_from_layer"] for r in answers[0]} == {0}
    # The no-drop answers are the evaluation runner's.
    arguments = args.func.arguments(args)
    arguments.pop("report")
    config = cli.drop_vision_config(**arguments)
    runner_file = str(tmp_path / "runner.jsonl")
    import dataclasses

    run_questions(dataclasses.replace(config, answers_file=runner_file), loaded=full)
    assert [r["text"] for r in read_answers(runner_file)] == [r["text"] for r in answers[2]]

    # A second run resumes: nothing is answered again.
    size = (out / "answers.drop00.jsonl").stat().st_size
    again = args.func(args, loaded=full)
    assert (out / "answers.drop00.jsonl").stat().st_size == size
    assert again["accuracy"] == saved["accuracy"]


def test_analyze_compression_draws_the_heat_map(mini_checkpoint, mini, data, tmp_path):
    image = os.path.join(os.path.dirname(data["val_questions"]), _questions(data)[0]["image"])
    args = parse(
        "compression",
        "--model-path",
        mini_checkpoint,
        "--image",
        image,
        "--output-dir",
        str(tmp_path),
    )
    path = args.func(args, loaded=mini)
    assert path == str(tmp_path / "compression.png") and os.path.getsize(path) > 5000


def test_analyze_compression_needs_a_query_compressor(full_checkpoint, full, data, tmp_path):
    image = os.path.join(os.path.dirname(data["val_questions"]), _questions(data)[0]["image"])
    args = parse("compression", "--model-path", full_checkpoint, "--image", image)
    with pytest.raises(UsageError, match="only the query compressor"):
        args.func(args, loaded=full)
