"""SEED-Bench: multiple-choice accuracy per question type, image and video, scored locally.

Questions: LLaVA's `llava-seed-bench.jsonl` (image questions, and video questions asked on the
video's middle frame; options and the option-letter suffix in `text`), images under the
`seed_bench` folder. Labels: `SEED-Bench.json` (`questions` with `question_id`, `answer`,
`question_type_id`, `data_type`; `question_type` name -> id). As LLaVA's
`convert_seed_for_submission.py`: an answer is right when its text equals the answer letter
exactly; every labelled question counts (unanswered ones are wrong). Headline: image accuracy
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
    answers_by_id,
    percent,
    read_json,
    read_llava_questions,
    require,
    warn_missing,
)


def score(inputs: ScoreInputs) -> dict:
    """Exact-match accuracy: image (headline), video, all, and per question type."""
    data = read_json(inputs.annotations, "SEED-Bench label file (SEED-Bench.json)")
    if not isinstance(data, dict) or "questions" not in data:
        raise ValueError(f"{inputs.annotations}: expected {{'questions': [...], ...}}.")
    type_names = {str(v): k for k, v in data.get("question_type", {}).items()}
    by_id = answers_by_id(inputs.answers)
    known = {str(row.get("question_id")) for row in data["questions"]}
    unknown = [qid for qid in by_id if qid not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} answered ids are not in {inputs.annotations} (first: {unknown[0]!r})."
        )
    per_type, per_data_type, everything = defaultdict(list), defaultdict(list), []
    for index, row in enumerate(data["questions"]):
        require(
            row, ("question_id", "answer", "question_type_id", "data_type"), f"questions[{index}]"
        )
        record = by_id.get(str(row["question_id"]))
        right = record is not None and record["text"] == row["answer"]
        name = type_names.get(str(row["question_type_id"]), str(row["question_type_id"]))
        per_type[name].append(right)
        per_data_type[row["data_type"]].append(right)
        everything.append(right)
    warn_missing(len(everything) - len(by_id), len(everything))
    upload = inputs.output_prefix + ".seed_upload.jsonl"
    with open(upload, "w", encoding="utf-8") as file:
        for qid, record in by_id.items():
            file.write(json.dumps({"question_id": qid, "prediction": record["text"]}) + "\n")
    image = per_data_type.get("image", [])
    video = per_data_type.get("video", [])
    return {
        "accuracy": percent(sum(image), len(image)),
        "metric": "image accuracy (%), exact match of the answer text with the letter",
        "video_accuracy": percent(sum(video), len(video)),
        "overall_accuracy": percent(sum(everything), len(everything)),
        "per_question_type": {k: percent(sum(v), len(v)) for k, v in sorted(per_type.items())},
        "count": len(everything),
        "missing": len(everything) - len(by_id),
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
