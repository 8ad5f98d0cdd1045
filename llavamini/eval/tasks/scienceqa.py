"""ScienceQA test: accuracy on questions with an image (SciQA-IMG) and on all, scored locally.

Questions: LLaVA's `llava_test_CQM-A.json` (JSON list: `id`, optional `image`, and
`conversations[0].value` with context, question and "(A) ..." options), images in
`images/test`. Prompt as the reference's `model_vqa_science.py --single-pred-prompt`: the
human turn without `<image>`, then "Answer with the option's letter from the given choices
directly."; questions without an image are asked text-only. Labels: `problems.json` and
`pid_splits.json` (split `test`) of the ScienceQA release.

Letter parsing follows the reference's `eval_science_qa.py`: the whole answer is a letter, or
it starts with "X. ", or it contains exactly one "The answer is X" followed by any character;
otherwise the answer is wrong. Every test problem counts in the overall accuracy (unanswered
ones are wrong); the IMG accuracy counts the answered problems with an image (the official
script decides by the answer's prompt, where LLaVA puts "<image>", and gives unanswered
problems the prompt "Unknown"). Percentages are unrounded (`LLAVA_EVAL_SCIENCE_QA`).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from llavamini.eval.tasks.base import (
    OPTION_LETTER,
    Question,
    ScoreInputs,
    Task,
    read_json,
    require,
    warn_missing,
    write_json,
)

LETTERS = "ABCDE"
LLAVA_EVAL_SCIENCE_QA = {
    "repository": "haotian-liu/LLaVA",
    "file": "llava/eval/eval_science_qa.py",
    "commit": "c121f0432da27facab705978f83c4ada465e46fd",
}
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def read_questions(path: str, image_folder: str) -> list[Question]:
    """`llava_test_CQM-A.json` -> questions (text-only when the problem has no image)."""
    rows = read_json(path, "ScienceQA question file (llava_test_CQM-A.json)")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of {{id, conversations, image?}}.")
    questions = []
    for index, row in enumerate(rows):
        require(row, ("id", "conversations"), f"{path}[{index}]")
        text = row["conversations"][0]["value"].replace("<image>", "").strip()
        image = os.path.join(image_folder, row["image"]) if row.get("image") else None
        questions.append(Question(row["id"], text, image))
    return questions


def parse_letter(text: str, letters: str) -> str | None:
    """The reference's rules (see the module docstring); None when none applies."""
    allowed = tuple(letters)
    if text in allowed:
        return text
    if len(text) >= 3 and text[0] in allowed and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 and found[0] in allowed else None


def score(inputs: ScoreInputs) -> dict:
    """IMG accuracy (headline), overall accuracy and per subject over the test split."""
    problems = read_json(os.path.join(inputs.annotations, "problems.json"), "ScienceQA problems")
    splits = read_json(os.path.join(inputs.annotations, "pid_splits.json"), "ScienceQA splits")
    test_ids = splits["test"]
    # Keyed by the JSON value, as the official script keys them: an answer filed under the
    # int 4 is not the answer to problem "4".
    by_id = {record["question_id"]: record for record in inputs.answers}
    unknown = [qid for qid in by_id if qid not in set(test_ids)]
    if unknown:
        raise ValueError(
            f"{len(unknown)} answered ids are not ScienceQA test problems (first: {unknown[0]!r})."
        )
    everything, with_image, per_subject, items = [], [], defaultdict(list), {}
    for pid in test_ids:
        problem = problems.get(pid)
        if problem is None:
            raise ValueError(f"problems.json has no problem {pid!r} listed in pid_splits.json.")
        require(problem, ("choices", "answer"), f"problems.json[{pid}]")
        record = by_id.get(pid)
        letter = (
            parse_letter(record["text"], LETTERS[: len(problem["choices"])]) if record else None
        )
        right = letter is not None and LETTERS.index(letter) == problem["answer"]
        everything.append(right)
        # The official IMG set is the answered questions whose prompt shows an image.
        if record is not None and problem.get("image"):
            with_image.append(right)
        per_subject[problem.get("subject", "unknown")].append(right)
        items[str(pid)] = int(right)
    warn_missing(len(test_ids) - len(by_id), len(test_ids))
    return {
        "accuracy": _percent(with_image),
        "metric": "accuracy (%) on test problems with an image (SciQA-IMG)",
        "scorer": [LLAVA_EVAL_SCIENCE_QA],
        "overall_accuracy": _percent(everything),
        "per_subject": {k: _percent(v) for k, v in sorted(per_subject.items())},
        "count": len(everything),
        "image_count": len(with_image),
        "missing": len(test_ids) - len(by_id),
        "items": write_json(inputs.output_prefix + ".items.json", items),
    }


def _percent(hits: list[bool]) -> float | None:
    """The official `correct / total * 100`, unrounded."""
    return sum(hits) / len(hits) * 100 if hits else None


TASKS = (
    Task(
        name="scienceqa",
        description="ScienceQA test; headline is IMG accuracy (questions with an image)",
        benchmark="scienceqa",
        questions="llava_test_CQM-A.json",
        visual_folder="images/test",
        annotations=".",
        read_questions=read_questions,
        score=score,
        prompt_suffix=OPTION_LETTER,
        suffix_in_file=False,
        max_new_tokens=1024,
    ),
)
