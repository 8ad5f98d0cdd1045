"""Sharding, crash-safe answer files, merging, and the task registry."""

import json
import os

import pytest

from llavamini.eval.answers import (
    AnswerWriter,
    merge_answer_files,
    prepare_for_resume,
    read_answers,
)
from llavamini.eval.sharding import chunk_indices, get_chunk
from llavamini.eval.tasks import TASKS, build_registry, get_task
from tests.eval.helpers import answer


@pytest.mark.parametrize("mode", ["contiguous", "strided"])
@pytest.mark.parametrize("total", [0, 1, 2, 5, 7, 10, 13])
@pytest.mark.parametrize("num_chunks", [1, 2, 3, 4, 8])
def test_chunks_cover_every_question_exactly_once(mode, total, num_chunks):
    items = [f"q{i}" for i in range(total)]
    chunks = [get_chunk(items, num_chunks, i, mode) for i in range(num_chunks)]
    flat = [item for chunk in chunks for item in chunk]
    assert sorted(flat) == sorted(items)
    assert len(flat) == len(set(flat))
    sizes = [len(chunk) for chunk in chunks]
    assert max(sizes) - min(sizes) <= 1
    if mode == "contiguous":
        assert flat == items  # concatenating chunks in order restores the file order


def test_bad_chunk_arguments_are_refused():
    with pytest.raises(ValueError, match="chunk-idx"):
        chunk_indices(10, 4, 4)
    with pytest.raises(ValueError, match="num-chunks"):
        chunk_indices(10, 0, 0)
    with pytest.raises(ValueError, match="shard mode"):
        chunk_indices(10, 2, 0, "random")


def _write(path, records):
    with AnswerWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def test_partial_last_line_is_dropped_and_cut_on_resume(tmp_path, caplog):
    path = _write(tmp_path / "a.jsonl", [answer(1, "yes"), answer(2, "no")])
    complete_size = os.path.getsize(path)
    with open(path, "a") as file:
        file.write(json.dumps(answer(3, "maybe"))[:25])  # a write cut short by a kill
    assert [r["question_id"] for r in read_answers(path)] == [1, 2]
    assert "partial line" in caplog.text
    records = prepare_for_resume(path)
    assert [r["question_id"] for r in records] == [1, 2]
    assert os.path.getsize(path) == complete_size
    _write(path, [answer(3, "maybe")])
    assert [r["question_id"] for r in read_answers(path)] == [1, 2, 3]


def test_corrupt_line_in_the_middle_raises_with_its_number(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(answer(1, "a")) + "\n{broken\n" + json.dumps(answer(2, "b")) + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_answers(str(path))


def test_answer_lines_need_the_llava_schema(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question_id": 1, "text": "a"}) + "\n")
    with pytest.raises(ValueError, match="lacks fields"):
        read_answers(str(path))


def test_duplicate_answers_are_refused(tmp_path):
    path = _write(tmp_path / "a.jsonl", [answer(1, "yes"), answer(1, "no")])
    with pytest.raises(ValueError, match="more than once"):
        read_answers(path)


def test_same_id_with_different_prompts_are_two_questions(tmp_path):
    """MME asks two questions per image under one question_id."""
    path = _write(
        tmp_path / "a.jsonl", [answer("art/1.jpg", "Yes", "q1"), answer("art/1.jpg", "No", "q2")]
    )
    assert len(read_answers(path)) == 2


def test_unicode_line_separators_inside_answers_survive(tmp_path):
    path = _write(tmp_path / "a.jsonl", [answer(1, "line\u2028separator 中文"), answer(2, "x")])
    assert read_answers(path)[0]["text"] == "line\u2028separator 中文"


def test_merge_concatenates_shards_and_refuses_overlap_or_mixed_settings(tmp_path):
    settings = {"settings": {"task": "gqa", "conv_mode": "llava_llama_3_1"}}
    first = _write(tmp_path / "c0.jsonl", [answer(1, "a", metadata=settings)])
    second = _write(tmp_path / "c1.jsonl", [answer(2, "b", metadata=settings)])
    merged = str(tmp_path / "merged.jsonl")
    assert merge_answer_files([first, second], merged) == 2
    assert [r["question_id"] for r in read_answers(merged)] == [1, 2]
    with pytest.raises(ValueError, match="more than once"):
        merge_answer_files([first, first], str(tmp_path / "dup.jsonl"))
    other = {"settings": {"task": "gqa", "conv_mode": "vicuna_v1"}}
    third = _write(tmp_path / "c2.jsonl", [answer(3, "c", metadata=other)])
    with pytest.raises(ValueError, match="different settings"):
        merge_answer_files([first, third], str(tmp_path / "mixed.jsonl"))


def test_registry_has_the_issue_tasks_and_refuses_duplicates():
    for name in (
        "vqav2",
        "vqav2_val",
        "gqa",
        "mmbench",
        "mmbench_cn",
        "msvd_qa",
        "msrvtt_qa",
        "activitynet_qa",
        "textvqa",
        "pope",
        "mme",
        "seed_bench",
        "scienceqa",
    ):
        assert get_task(name).name == name
    with pytest.raises(ValueError, match="gqa"):
        build_registry([TASKS["gqa"], TASKS["gqa"]])


def test_unknown_task_lists_known_names():
    with pytest.raises(KeyError, match="mmbench_cn"):
        get_task("mmbench-cn")
    with pytest.raises(KeyError, match="gqa"):
        get_task("GQA")  # exact names only


def test_every_task_documents_its_prompt_protocol():
    for task in TASKS.values():
        assert task.modality in ("image", "video")
        # The reference's budgets; the quickstart's own task answers in one word (8 tokens).
        assert task.max_new_tokens in ((8,) if task.name == "synthetic" else (128, 1024))
        if task.modality == "video":
            assert task.prompt_prefix.startswith("Answer the question based on the video.")
        else:
            assert task.prompt_suffix  # every image benchmark has an answer-format suffix


def test_settings_recorded_under_their_old_names_are_still_compared():
    """Records written when the frame policy was recorded as `fps` / `max_frames` are compared
    with `video_fps` / `video_max_frames`: resuming at another frame rate is refused."""
    from llavamini.eval.answers import settings_differences

    old = {"fps": 2.0, "max_frames": None, "conv_mode": "vicuna_v1"}
    assert settings_differences(old, {"video_fps": 2.0, "video_max_frames": None}) == {}
    assert settings_differences(old, {"video_fps": 1.0, "conv_mode": "vicuna_v1"}) == {
        "video_fps": (2.0, 1.0)
    }
