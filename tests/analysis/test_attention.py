"""Attention shares, entropies and the `analyze attention` command on tiny checkpoints."""

import argparse
import json
import math

import pytest
import torch

from llavamini.analysis.attention import analyze_attention, attention_statistics
from llavamini.analysis.recorder import AttentionRecorder, recompute_attention
from llavamini.analysis.tokens import (
    BEFORE_IMAGE,
    EXCLUDED,
    GROUPS,
    SYSTEM,
    TEXT,
    key_groups,
    llm_kinds,
    prefusion_kinds,
    prompt_tokens,
    read_samples,
    system_text,
)
from llavamini.cli import build_parser
from llavamini.conversation import get_template


def parse(*argv: str) -> argparse.Namespace:
    """Arguments of `llavamini analyze ...` through the sub-command's own parser."""
    return build_parser("analyze").parse_args(["analyze", *argv])


def test_statistics_normalise_per_token_of_each_group():
    # Keys: one vision token, one system token, two text tokens.
    groups = torch.tensor([0, 1, 2, 2])
    probs = torch.tensor([[[0.4, 0.2, 0.3, 0.1]]])  # (H=1, R=1, S=4)
    stats = attention_statistics(probs, torch.ones(1, 4, dtype=torch.bool), groups)
    torch.testing.assert_close(stats.mass[0], torch.tensor([0.4, 0.2, 0.4]))
    # Per token: 0.4, 0.2, 0.2 -> normalised 0.5, 0.25, 0.25.
    torch.testing.assert_close(stats.share[0], torch.tensor([0.5, 0.25, 0.25]))
    assert stats.vision_entropy[0] == 0  # one vision token: nothing to spread over

    # Two heads, two vision tokens: the entropy is per head, then averaged.
    groups = torch.tensor([0, 0, 1, 2])
    probs = torch.tensor([[[0.3, 0.1, 0.3, 0.3]], [[0.2, 0.2, 0.3, 0.3]]])
    stats = attention_statistics(probs, torch.ones(1, 4, dtype=torch.bool), groups)
    head_1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert stats.vision_entropy[0].item() == pytest.approx((head_1 + math.log(2)) / 2)

    # A group the row cannot see gets share 0; the rest still sum to one.
    visible = torch.tensor([[True, True, False, True]])
    probs = torch.tensor([[[0.5, 0.25, 0.0, 0.25]]])
    stats = attention_statistics(probs, visible, groups)
    assert stats.visible_tokens[0].tolist() == [2, 0, 1]
    # Per token: vision 0.75 / 2, text 0.25 / 1 -> 0.6, 0.4.
    torch.testing.assert_close(stats.share[0], torch.tensor([0.6, 0.0, 0.4]))


def test_each_rows_shares_and_masses_sum_to_one(mini, full, data):
    """On real forwards (LLM and pre-fusion layers), every query row's groups sum to one."""
    template = get_template("llava_llama_3_1")
    sample = read_samples(data["val_questions"])[0]
    for loaded in (mini, full):
        model = loaded.model
        prompt = prompt_tokens(template, loaded.tokenizer, sample.user_message)
        visual = loaded.processor.process_image(sample.image)
        ids = torch.tensor([prompt.input_ids])
        spliced = model.model.embed_multimodal(
            ids, torch.ones_like(ids), None, [[visual]], return_vision_mask=True
        )
        llm = llm_kinds(prompt, spliced.vision_mask[0], 0)
        layouts = {
            "llm": lambda length, llm=llm: llm,
            "prefusion": lambda length, prompt=prompt: prefusion_kinds(prompt, length),
        }
        checked = []

        def handler(name, module, inputs, layouts=layouts, checked=checked):
            kinds = layouts[name.split(".")[0]](inputs.sequence_length)
            rows = (kinds == TEXT).nonzero().flatten()
            probs, visible = recompute_attention(module, inputs, rows)
            stats = attention_statistics(probs[0], visible[0], key_groups(kinds))
            ones = torch.ones(len(rows))
            torch.testing.assert_close(stats.share.sum(-1), ones)
            torch.testing.assert_close(stats.mass.sum(-1), ones)
            assert (stats.visible_tokens[:, 0] > 0).all()  # text after the image sees it
            checked.append(name)

        with AttentionRecorder(model, handler), torch.no_grad():
            model(input_ids=ids, images=[[visual]])
        expected = len(model.model.layers) + len(model.model.prefusion_layers)
        assert len(checked) == expected


def test_prompt_tokens_mark_system_text_and_placeholder(mini):
    tokenizer = mini.tokenizer
    template = get_template("llava_llama_3_1")
    prompt = prompt_tokens(template, tokenizer, "<image>\nWhat colour is at the top left?")
    kinds = prompt.kinds
    system = [t for t, k in zip(prompt.input_ids, kinds, strict=True) if k == SYSTEM]
    assert tokenizer.decode(system) == system_text(template, tokenizer)
    at = kinds.index(EXCLUDED)
    assert prompt.input_ids[at] == -200
    before = [t for t, k in zip(prompt.input_ids, kinds, strict=True) if k == BEFORE_IMAGE]
    assert tokenizer.decode(before) == "<|start_header_id|>user<|end_header_id|>\n\n"
    assert all(k == TEXT for k in kinds[at + 1 :])
    assert tokenizer.decode(prompt.input_ids[at + 1 :]).startswith("\nWhat colour")

    plain = prompt_tokens(get_template("plain"), tokenizer, "<image>\nDescribe the image.")
    assert SYSTEM not in plain.kinds


def test_attention_command_writes_the_report_and_figures(mini_checkpoint, mini, data, tmp_path):
    out = tmp_path / "attention"
    args = parse(
        "attention",
        "--model-path",
        mini_checkpoint,
        "--data",
        data["val_questions"],
        "--limit",
        "2",
        "--output-dir",
        str(out),
        "--max-new-tokens",
        "3",
    )
    report = args.func(args, loaded=mini)
    saved = json.loads((out / "attention.json").read_text())
    assert saved["samples"] == 2 and saved["groups"] == list(GROUPS)
    assert saved["llm"]["layers"] == [0, 1] and saved["prefusion"]["layers"] == [0]
    assert "answer" not in saved["prefusion"]  # answers never enter pre-fusion
    for part, kinds in (("llm", ("text", "answer")), ("prefusion", ("text",))):
        for kind in kinds:
            section = saved[part][kind]
            for measure in ("share", "mass"):
                for layer in saved[part]["layers"]:
                    total = sum(section[measure][g][layer] for g in GROUPS)
                    assert total == pytest.approx(1.0, abs=1e-5), (part, kind, measure)
            assert all(0 < v < 1 for v in section["share"]["vision"])
    # One vision token in the LLM: its entropy is 0; pre-fusion reads all 16 patches.
    assert saved["llm"]["text"]["vision_entropy"] == [0.0, 0.0]
    assert saved["llm"]["text"]["vision_entropy_normalised"] == [None, None]
    assert 0 < saved["prefusion"]["text"]["vision_entropy"][0] <= math.log(16) + 1e-6
    tokens = saved["tokens_per_sample"]
    assert tokens["vision"] == 1 and tokens["system"] > 0 and tokens["text_before_image"] > 0
    # Answers are generated (at most 3 tokens); the model reads all but the last one.
    assert saved["llm"]["answer"]["rows"][0] == round(2 * tokens["answer"]) <= 2 * 2
    for name in ("attention_share.png", "attention_mass.png", "vision_entropy.png"):
        assert (out / name).stat().st_size > 5000, name
    assert report["figures"] == saved["figures"]


def test_given_answers_from_a_conversation_file_are_analysed(mini, data):
    samples = read_samples(data["instruct"])[:2]
    records = json.loads(open(data["instruct"], encoding="utf-8").read())
    assert [s.answer for s in samples] == [r["conversations"][1]["value"] for r in records[:2]]
    report = analyze_attention(mini, samples)
    assert [d["answer"] for d in report["details"]] == [s.answer for s in samples]
    # Each answer is read up to (not including) its end-of-turn token.
    expected = sum(
        len(mini.tokenizer(s.answer, add_special_tokens=False)["input_ids"]) for s in samples
    )
    assert report["llm"]["answer"]["rows"] == [expected, expected]


def test_small_chunks_give_the_same_statistics(mini, data):
    samples = read_samples(data["val_questions"])[:1]
    whole = analyze_attention(mini, samples, max_new_tokens=2)
    # About 120 keys and 4 heads: a few rows per chunk.
    chunked = analyze_attention(mini, samples, max_new_tokens=2, max_elements=2000)
    for part in ("llm", "prefusion"):
        for g in GROUPS:
            assert chunked[part]["text"]["share"][g] == pytest.approx(
                whole[part]["text"]["share"][g], abs=1e-6
            )


def test_llava_1_5_mode_checkpoint_of_the_quickstart_recipe(tmp_path):
    """The quickstart's stage 1 (LLaVA-1.5 mode, `configs/train/quickstart_stage1.yaml`), trained
    for two steps on tiny assets: one vision share per LLM layer, no pre-fusion section."""
    from llavamini.apps.tiny import build_tiny_assets
    from llavamini.train.train import train
    from tests.train.conftest import run_args

    assets = build_tiny_assets(str(tmp_path / "assets"), image_size=56, num_train=4, num_val=2)
    checkpoint = tmp_path / "stage1"
    train(run_args(assets, "quickstart_stage1.yaml", checkpoint, "--max_steps", "2"))
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["compressor_type"] == "none" and config["prefusion_layer_num"] == 0

    out = tmp_path / "analysis"
    args = parse(
        "attention",
        "--model-path",
        str(checkpoint),
        "--data",
        assets["val_questions"],
        "--output-dir",
        str(out),
        "--conv-mode",
        "plain",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    )
    args.func(args)
    saved = json.loads((out / "attention.json").read_text())
    layers = config["num_hidden_layers"]
    assert saved["llm"]["layers"] == list(range(layers)) and "prefusion" not in saved
    vision = saved["llm"]["text"]["share"]["vision"]
    assert len(vision) == layers and all(0 < v < 1 for v in vision)
    assert saved["tokens_per_sample"]["vision"] == 16  # every patch of the 4 x 4 grid
    # The stage-1 template has no system prompt: that group is absent, not zero.
    assert saved["llm"]["text"]["share"]["system"] == [None] * layers
    assert all(e > 0 for e in saved["llm"]["text"]["vision_entropy"])


def test_a_data_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "questions.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"questions\.csv: expected a LLaVA question file"):
        read_samples(str(path))
