"""SEED-Bench: multiple-choice accuracy per question type, image and video, scored locally.

Questions: LLaVA's `llava-seed-bench.jsonl` (image questions, and video questions asked on the
video's middle frame; options and the option-letter suffix in `text`), images under the
`seed_bench` folder. Labels: `SEED-Bench.json` (`questions` with `question_id`, `answer`,
`question_type_id`, `data_type`; `question_type` name -> id). As LLaVA's
`convert_seed_for_submission.py` (`LLAVA_CONVERT_SEED`): an answer is right when its text
equals the answer letter exactly; every labelled question counts (unanswered ones are wrong);
a label's id is looked up as an int when it reads as one; percentages are the script's
`correct / count * 100`, unrounded. Headline: image accuracy
(the SEED number LLaVA-style tables report); video, overall and per-type beside it. The
leaderboard upload file (`{"question_id", "prediction"}` lines) is written too.
"""

from __future__ import annotations

import json
from collections import defaultdict

from llavamini.eval.tasks.base import (
    OPTION_LETTER,
    ScoreInputs,
    Task,
    check_known,
    read_json,
    read_llava_questions,
    require,
    warn_missing,
    write_json,
)

LLAVA_CONVERT_SEED = {
    "repository": "haotian-liu/LLaVA",
    "file": "scripts/convert_seed_for_submission.py",
    "commit": "c121f0432da27facab705978f83c4ada465e46fd",
}


def _label_key(question_id):
    """How the official script looks a label's id up among the answers: as an int when it
    reads as one, else as it is (an answer's id matches only with the same JSON type)."""
    try:
        return int(question_id)
    except (TypeError, ValueError):
        return question_id


def _percent(correct: int, count: int) -> float | None:
    """The official `correct / count * 100` (in that order), None for no questions."""
    return correct / count * 100 if count else None


def score(inputs: ScoreInputs) -> dict:
    """Exact-match accuracy: image (headline), video, all, and per question type."""
    data = read_json(inputs.annotations, "SEED-Bench label file (SEED-Bench.json)")
    if not isinstance(data, dict) or "questions" not in data:
        raise ValueError(f"{inputs.annotations}: expected {{'questions': [...], ...}}.")
    type_names = {v: k for k, v in data.get("question_type", {}).items()}
    by_id = {}
    for record in inputs.answers:
        by_id[record["question_id"]] = record
    known = {_label_key(row.get("question_id")) for row in data["questions"]}
    check_known(by_id, known, inputs.annotations, "--annotations")
    per_type, per_data_type, everything = defaultdict(list), defaultdict(list), []
    items = {}
    for index, row in enumerate(data["questions"]):
        require(
            row, ("question_id", "answer", "question_type_id", "data_type"), f"questions[{index}]"
        )
        record = by_id.get(_label_key(row["question_id"]))
        right = record is not None and record["text"] == row["answer"]
        per_type[row["question_type_id"]].append(right)
        per_data_type[row["data_type"]].append(right)
        everything.append(right)
        items[str(row["question_id"])] = int(right)
    warn_missing(len(everything) - len(by_id), len(everything))
    upload = inputs.output_prefix + ".seed_upload.jsonl"
    with open(upload, "w", encoding="utf-8") as file:
        for qid, record in by_id.items():
            file.write(json.dumps({"question_id": qid, "prediction": record["text"]}) + "\n")
    image = per_data_type.get("image", [])
    video = per_data_type.get("video", [])
    return {
        "accuracy": _percent(sum(image), len(image)),
        "metric": "image accuracy (%), exact match of the answer text with the letter",
        "scorer": [LLAVA_CONVERT_SEED],
        "video_accuracy": _percent(sum(video), len(video)),
        "overall_accuracy": _percent(sum(everything), len(everything)),
        "per_question_type": {
            type_names.get(k, str(k)): _percent(sum(v), len(v)) for k, v in sorted(per_type.items())
        },
        "count": len(everything),
        "missing": len(everything) - len(by_id),
        "items": write_json(inputs.output_prefix + ".items.json", items),
        "submission": upload,
    }


TASKS = (
    Task(
        name="seed_bench",
        description="SEED-Bench (image headline; video on middle frames), exact letter match",
        benchmark="seed_bench",
        questions="llava-seed-bench.jsonl",
        visual_folder="",
        annotations="SEED-Bench.json",
        read_questions=read_llava_questions,
        score=score,
        prompt_suffix=OPTION_LETTER,
        suffix_in_file=True,
    ),
)
