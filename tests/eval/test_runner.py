"""The runner and the CLI on the tiny checkpoint: batching, resuming, sharding, end to end."""

import dataclasses
import json
import math
import os
import types
import typing

import pytest
import torch

import llavamini.inference
from llavamini.conversation import TEMPLATES
from llavamini.eval.answers import merge_answer_files, read_answers
from llavamini.eval.cli import build_parser
from llavamini.eval.metrics.choice import infer_choice
from llavamini.eval.runner import RunConfig, run_questions
from llavamini.eval.tasks import get_task
from llavamini.eval.tasks.gqa import convert_prediction
from llavamini.eval.tasks.mmbench import prediction_text
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec
from tests.conftest import decode_with_placeholders, ramp_frames, write_video
from tests.eval.helpers import image_base64, make_image, write_json, write_jsonl

SUFFIX = "Answer the question using a single word or phrase."
QUESTIONS = [
    "What colour is the square?",
    "Is there anything unusual about this picture?",
    "What is at the top?",
    "How many circles are there in the middle of the picture on the left?",
    "Where?",
]
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def gqa_root(tmp_path_factory):
    """A GQA-layout data root with five questions on images of different sizes and colours."""
    root = tmp_path_factory.mktemp("eval_data")
    images = root / "gqa" / "data" / "images"
    images.mkdir(parents=True)
    rows = []
    for i, question in enumerate(QUESTIONS):
        make_image(images / f"img{i}.jpg", size=(30 + 9 * i, 50 - 4 * i), colour=(50 * i, 90, 200))
        rows.append(
            {"question_id": f"q{i}", "image": f"img{i}.jpg", "text": f"{question}\n{SUFFIX}"}
        )
    write_jsonl(root / "gqa" / "llava_gqa_testdev_balanced.jsonl", rows)
    return root


def _config(root, answers_file, **overrides):
    fields = dict(
        task=get_task("gqa"),
        model=ModelSpec("tiny", device="cpu", dtype="float32"),
        inputs=InputSettings(conv_mode="llava_llama_3_1"),
        answers_file=str(answers_file),
        questions_file=str(root / "gqa" / "llava_gqa_testdev_balanced.jsonl"),
        visual_folder=str(root / "gqa" / "data" / "images"),
        generation=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS),
    )
    fields.update(overrides)
    return RunConfig(**fields)


def _texts(path):
    return {r["question_id"]: r["text"] for r in read_answers(str(path))}


@pytest.fixture(scope="module")
def batch_one_answers(gqa_root, tiny_loaded, tmp_path_factory):
    path = tmp_path_factory.mktemp("answers") / "batch1.jsonl"
    run_questions(_config(gqa_root, path, batch_size=1), loaded=tiny_loaded)
    return _texts(path)


def test_batched_answers_equal_batch_size_one(gqa_root, tiny_loaded, batch_one_answers, tmp_path):
    assert len(set(batch_one_answers.values())) > 1  # the inputs matter: the check is meaningful
    path = tmp_path / "batch3.jsonl"
    run_questions(_config(gqa_root, path, batch_size=3, num_workers=0), loaded=tiny_loaded)
    assert _texts(path) == batch_one_answers


def test_answer_lines_follow_the_llava_schema_and_record_the_run(gqa_root, tiny_loaded, tmp_path):
    path = tmp_path / "a.jsonl"
    run_questions(_config(gqa_root, path, limit=1), loaded=tiny_loaded)
    (record,) = read_answers(str(path))
    assert set(record) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert record["prompt"] == f"{QUESTIONS[0]}\n{SUFFIX}"
    settings = record["metadata"]["settings"]
    assert settings["conv_mode"] == "llava_llama_3_1"
    assert settings["prompt_suffix"] == SUFFIX and settings["suffix_source"] == "question file"
    assert settings["generation"] == {
        "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": 0.0,
        "top_p": None,
        "num_beams": 1,
    }
    assert settings["model_path"] == "tiny" and record["model_id"] == "tiny"
    assert settings["model"] == {
        "path": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": None,
        "quantization": None,
        "pack_vision_weights": False,
        "reduction": None,
        "reduction_tokens": None,
        "reduction_seed": 0,
        "fastv_layer": 2,
    }
    assert settings["dtype"] == "float32"  # kept at the top level for older readers


def test_killed_run_resumes_without_loss_or_duplicates(
    gqa_root, tiny_loaded, batch_one_answers, tmp_path, monkeypatch
):
    path = tmp_path / "answers.jsonl"
    real_generate = llavamini.inference.generate
    calls = []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(len(args[1]["input_ids"]))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(llavamini.inference, "generate", dies_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_questions(_config(gqa_root, path, batch_size=2), loaded=tiny_loaded)
    assert len(read_answers(str(path))) == 4
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"question_id": "q4", "prompt": "Whe')  # the kill also cut a write short

    calls.clear()
    monkeypatch.setattr(llavamini.inference, "generate", dies_on_third_batch)
    run_questions(_config(gqa_root, path, batch_size=2), loaded=tiny_loaded)
    assert calls == [1]  # only the unanswered question was generated
    records = read_answers(str(path))
    assert [r["question_id"] for r in records] == [f"q{i}" for i in range(5)]
    assert _texts(path) == batch_one_answers
    run_questions(_config(gqa_root, path, batch_size=2), loaded=tiny_loaded)  # nothing left
    assert calls == [1]


def test_resume_refuses_answers_made_with_other_settings(gqa_root, tiny_loaded, tmp_path):
    path = tmp_path / "a.jsonl"
    run_questions(_config(gqa_root, path, limit=1), loaded=tiny_loaded)
    with pytest.raises(ValueError, match="max_new_tokens|generation"):
        run_questions(
            _config(gqa_root, path, generation=GenerationSettings(max_new_tokens=7)),
            loaded=tiny_loaded,
        )


def test_answer_files_from_before_the_full_record_resume(gqa_root, tiny_loaded, tmp_path):
    """Records written before every model field and the image tasks' video_fps /
    video_max_frames were recorded resume and merge with new ones; what they did record is
    still checked."""
    path = tmp_path / "a.jsonl"
    config = _config(gqa_root, path, limit=2)
    run_questions(dataclasses.replace(config, limit=1), loaded=tiny_loaded)
    (record,) = read_answers(str(path))
    settings = record["metadata"]["settings"]
    old = {k: v for k, v in settings.items() if k not in ("model", "video_fps", "video_max_frames")}
    record["metadata"]["settings"] = old
    write_jsonl(path, [record])
    run_questions(config, loaded=tiny_loaded)
    assert len(read_answers(str(path))) == 2
    merged = str(tmp_path / "merged.jsonl")
    assert merge_answer_files([str(path)], merged) == 2
    record["metadata"]["settings"] = {**old, "dtype": "bfloat16"}
    write_jsonl(path, [record])
    with pytest.raises(ValueError, match="dtype"):
        run_questions(config, loaded=tiny_loaded)


def _other_value(cls, field, default, chosen):
    """A value of `cls`'s `field` other than `default` that `cls` accepts beside the values
    `chosen` for its earlier fields, from the field's type and metadata alone."""
    hint = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    choices = field.metadata.get("choices") or (
        typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    )
    candidates = {
        bool: [not default],
        int: [(default or 3) + 1],  # 4 where unset: a square budget for --reduction pool
        float: [0.5, 0.25],
        str: [f"test-{field.name}", *TEMPLATES],
    }.get(hint, [])
    required = {
        f.name: f"test-{f.name}"
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    for value in [*choices, *candidates]:
        if value == default:
            continue
        try:
            cls(**{**required, **chosen, field.name: value})
        except ValueError:
            continue
        return value
    raise AssertionError(f"no test value for {cls.__name__}.{field.name} ({hint})")


def test_every_shared_setting_reaches_the_flags_and_the_record(gqa_root, tiny_loaded, tmp_path):
    """Every field of the shared dataclasses of `eval run` (found in its signature and by
    `dataclasses.fields`, not listed here) is a flag whose value reaches the function and the
    settings record of the answers."""
    from llavamini.cli import parse
    from llavamini.eval.cli import run
    from llavamini.flags import option_strings, verb_parameters

    shared = {ModelSpec: "model", GenerationSettings: "generation", InputSettings: None}
    parameters = {p.cls: p for p in verb_parameters(run) if p.cls in shared}
    assert set(parameters) == set(shared)
    answers = str(tmp_path / "answers.jsonl")
    argv = ["eval", "run", "gqa", "--data-root", str(gqa_root), "--answers-file", answers]
    argv += ["--limit", "1"]
    expected = {}
    for cls, parameter in parameters.items():
        assert parameter.fields == dataclasses.fields(cls)  # all of them, no `only(...)`
        values = {}
        for field in dataclasses.fields(cls):
            default = getattr(parameter.default, field.name, None)
            values[field.name] = _other_value(cls, field, default, values)
            flag = option_strings(field)[0]
            if isinstance(values[field.name], bool):
                argv += [flag] if values[field.name] else [f"--no-{flag[2:]}"]
            else:
                argv += [flag, str(values[field.name])]
        expected[cls] = values
    function, arguments = parse(argv)
    for cls, parameter in parameters.items():
        assert dataclasses.asdict(arguments[parameter.name]) == expected[cls], cls.__name__

    # The values need not load: the model is given, in LLaVA-1.5 mode (no compressor, no
    # pre-fusion), where a training-free token reduction applies.
    inner, config = tiny_loaded.model.model, tiny_loaded.model.config
    kept = inner.compressor, inner.prefusion_layers, config.compressor_type
    inner.compressor, inner.prefusion_layers = None, torch.nn.ModuleList()
    config.compressor_type = "none"
    try:
        function(**arguments, loaded=tiny_loaded)
    finally:
        inner.compressor, inner.prefusion_layers, config.compressor_type = kept
    settings = read_answers(answers)[0]["metadata"]["settings"]
    for cls, key in shared.items():
        recorded = settings[key] if key else settings
        for name, value in expected[cls].items():
            assert recorded[name] == value, (cls.__name__, name)


def test_missing_images_are_reported_before_any_generation(gqa_root, tmp_path, monkeypatch):
    rows = [
        {"question_id": 1, "image": "img0.jpg", "text": "q"},
        {"question_id": 2, "image": "nope.jpg", "text": "q"},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    monkeypatch.setattr(llavamini.inference, "generate", None)  # would fail if called
    config = _config(gqa_root, tmp_path / "a.jsonl", questions_file=questions)
    with pytest.raises(FileNotFoundError, match="question 2: .*nope.jpg"):
        run_questions(config, loaded=object())


def _parse(argv):
    return build_parser().parse_args(argv)


def test_cli_sharded_run_merge_and_score(
    gqa_root, tiny_checkpoint, batch_one_answers, tmp_path, capsys
):
    root = str(gqa_root)
    shards = []
    for index in range(2):
        shard = str(tmp_path / f"answers.chunk{index}-of-2.jsonl")
        args = _parse(
            [
                "run",
                "gqa",
                "--model-path",
                tiny_checkpoint,
                "--data-root",
                root,
                "--answers-file",
                shard,
                "--num-chunks",
                "2",
                "--chunk-idx",
                str(index),
                "--shard-mode",
                "strided",
                "--batch-size",
                "2",
                "--max-new-tokens",
                str(MAX_NEW_TOKENS),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ]
        )
        args.func(args)
        shards.append(shard)
    assert [r["question_id"] for r in read_answers(shards[0])] == ["q0", "q2", "q4"]
    merged = str(tmp_path / "answers.jsonl")
    args = _parse(["merge", "--output", merged, *shards])
    args.func(args)
    texts = _texts(merged)
    assert texts == batch_one_answers

    # Labels: the model's own (converted) answer is gold for q0 and q1 only.
    labels = {
        f"q{i}": {
            "question": QUESTIONS[i % len(QUESTIONS)],
            "answer": convert_prediction(texts[f"q{i}"]) if i < 2 else "~never~",
            "types": {"structural": "query", "semantic": "attr"},
            "semantic": [{"operation": "select", "argument": "square"}],
        }
        for i in range(5)
    }
    write_json(gqa_root / "gqa" / "data" / "testdev_balanced_questions.json", labels)
    capsys.readouterr()
    args = _parse(["score", "gqa", "--answers", merged, "--data-root", root])
    result = args.func(args)
    assert json.loads(capsys.readouterr().out)["accuracy"] == result["accuracy"] == 40.0
    assert result["run"]["task"] == "gqa"
    assert os.path.isfile(str(tmp_path / "answers.score.json"))


def test_cli_mmbench_run_with_inline_images_and_score(tiny_loaded, tmp_path):
    rows = []
    for index, (options, answer_letter) in enumerate(
        [(["red", "blue"], "A"), (["cat", "dog"], "B")]
    ):
        for k in range(2):
            rotated = options[k:] + options[:k]
            rows.append(
                {
                    "index": index + k * 1_000_000,
                    "question": "Which one?",
                    "hint": "nan",
                    "A": rotated[0],
                    "B": rotated[1],
                    "answer": "AB"[rotated.index(options["AB".index(answer_letter)])],
                    "category": "c",
                    "l2-category": "l2",
                    "image": image_base64(colour=(index * 90, 0, 0)),
                }
            )
    folder = tmp_path / "mmbench"
    folder.mkdir()
    with open(folder / "mmbench_dev_20230712.tsv", "w", encoding="utf-8") as file:
        file.write("\t".join(rows[0]) + "\n")
        for row in rows:
            file.write("\t".join(str(v) for v in row.values()) + "\n")
    answers = str(tmp_path / "answers.jsonl")
    args = _parse(
        [
            "run",
            "mmbench",
            "--model-path",
            "tiny",
            "--data-root",
            str(tmp_path),
            "--answers-file",
            answers,
            "--max-new-tokens",
            "4",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ]
    )
    args.func(args, loaded=tiny_loaded)
    records = read_answers(answers)
    assert [r["question_id"] for r in records] == [0, 1_000_000, 1, 1_000_001]
    assert records[1]["options"] == ["blue", "red"] and records[1]["option_char"] == ["A", "B"]
    assert records[0]["metadata"]["settings"]["suffix_source"] == "appended by the runner"
    result = _parse(["score", "mmbench", "--answers", answers, "--data-root", str(tmp_path)])
    result = result.func(result)
    letters = [
        infer_choice(prediction_text(r), dict(zip("AB", r["options"], strict=True)))
        for r in records
    ]
    right = [letter == row["answer"] for letter, row in zip(letters, rows, strict=True)]
    assert result["unparsed_answers"] == letters.count(None)
    assert result["accuracy"] == 100 * ((right[0] and right[1]) + (right[2] and right[3])) / 2


@pytest.fixture(scope="module")
def msvd_root(tmp_path_factory):
    """One 3-second 2-fps clip and one question in the Video-ChatGPT layout."""
    folder = tmp_path_factory.mktemp("video_data") / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (folder / "videos").mkdir(parents=True)
    write_video(folder / "videos" / "clip1.avi", ramp_frames(6, 32, 48, step=40), 2, "mpeg4")
    write_json(
        folder / "test_q.json",
        [{"video_name": "clip1", "question": "what is shown?", "question_id": "v_0"}],
    )
    write_json(folder / "test_a.json", [{"answer": "a grey screen", "question_id": "v_0"}])
    return folder.parent.parent


def test_video_qa_run_uses_the_instruction_and_one_frame_per_second(
    msvd_root, tiny_loaded, tmp_path, monkeypatch
):
    seen = {}
    real_generate = llavamini.inference.generate

    def spy(loaded, inputs, *args, **kwargs):
        ids = inputs["input_ids"][0].tolist()
        seen["prompt"] = decode_with_placeholders(loaded.tokenizer, ids)
        seen["shape"] = tuple(inputs["images"][0][0].shape)
        return real_generate(loaded, inputs, *args, **kwargs)

    monkeypatch.setattr(llavamini.inference, "generate", spy)
    answers = str(tmp_path / "answers.jsonl")
    args = _parse(
        [
            "run",
            "msvd_qa",
            "--model-path",
            "tiny",
            "--data-root",
            str(msvd_root),
            "--answers-file",
            answers,
            "--max-new-tokens",
            "4",
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ]
    )
    args.func(args, loaded=tiny_loaded)
    assert seen["shape"][0] == math.floor(6 / 2)  # a 3 s clip at 1 fps: 3 frames
    task = get_task("msvd_qa")
    assert f"<image>\n{task.prompt_prefix}what is shown?" in seen["prompt"]
    (record,) = read_answers(answers)
    assert record["prompt"] == "what is shown?"
    assert record["metadata"]["settings"]["video_fps"] == 1.0
    assert record["metadata"]["settings"]["prompt_prefix_sha256"]


def test_eval_subcommand_registers_run_score_merge_and_list():
    from llavamini.cli import build_parser as llavamini_parser
    from llavamini.eval.cli import list_tasks, merge, run, score

    parser = llavamini_parser("eval")
    expected = {
        ("run", "gqa", "--model-path", "m"): run,
        ("score", "gqa", "--answers", "a.jsonl"): score,
        ("merge", "--output", "m.jsonl", "a.jsonl"): merge,
        ("list",): list_tasks,
    }
    for argv, func in expected.items():
        assert parser.parse_args(["eval", *argv]).func.function is func
    args = parser.parse_args(["eval", "run", "gqa", "--model-path", "m", "--max_new_tokens", "9"])
    assert args.max_new_tokens == 9  # LLaVA's underscore spelling is accepted


def test_unknown_task_on_the_command_line_lists_known_names(tmp_path):
    args = _parse(["score", "gqa2", "--answers", str(tmp_path / "a.jsonl")])
    with pytest.raises(SystemExit, match="known: .*gqa"):
        args.func(args)
