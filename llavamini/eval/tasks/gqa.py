"""GQA test-dev balanced, scored as LLaVA's patched GQA `eval.py` scores it.

Questions: LLaVA's `llava_gqa_testdev_balanced.jsonl` (short-answer suffix in the file), images
in `gqa/data/images`. Scoring needs only `testdev_balanced_questions.json` from the GQA release:
LLaVA patches the official `eval.py` (`GQA_EVAL`) to run without the scene graphs and choices
files the release lacks, so validity, plausibility, consistency and grounding are not computed.
A prediction is LLaVA's conversion of the answer (`convert_gqa_for_eval.py`:
`text.rstrip('.').lower()`), right when it equals the gold answer. Over the balanced questions
(`isBalanced`), as percentages, unrounded: accuracy; "binary" and "open" (open = structural
type "query"); per structural type, per semantic type, per reasoning-steps number and per
question length in words; and the distribution score (chi-square / 100, lower is better).
The official script stops when a prediction is missing; here an unanswered question is wrong
(and counted in `missing`). The official-format predictions file is written too.
"""

from __future__ import annotations

from collections import defaultdict

from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    check_known,
    read_json,
    read_llava_questions,
    require,
    warn_missing,
    write_json,
)

GQA_EVAL = {
    "repository": "haotian-liu/LLaVA",
    "file": "scripts/convert_gqa_for_eval.py; GQA eval.py as patched by LLaVA "
    "(gist db6eddc2a984b4cbcc8a7f26fd523187, linked from docs/Evaluation.md)",
    "commit": "c121f0432da27facab705978f83c4ada465e46fd",
}


def convert_prediction(text: str) -> str:
    """LLaVA's `convert_gqa_for_eval`: trailing periods off, lower case."""
    return text.rstrip(".").lower()


def steps_number(question: dict) -> int:
    """Reasoning steps of a question, as `eval.py` counts them: its semantic program's
    operations, leaving out those whose "operation: argument" text contains "exist",
    "query: name" or "choose name"."""
    skipped = ("exist", "query: name", "choose name")
    return sum(
        1
        for step in question["semantic"]
        if not any(word in f"{step['operation']}: {step['argument']}" for word in skipped)
    )


def chi_square(gold: dict, predicted: dict) -> float:
    """`eval.py`'s distribution score before its division by 100: per global group, the
    chi-square of the predicted against the gold answer counts, weighted by the group's size."""
    total_score, total_count = 0, 0
    for group, counts in gold.items():
        score, count = 0, 0
        for answer, expected in counts.items():
            observed = predicted[group].get(answer, 0)
            score += (float(observed - expected) ** 2) / expected
            count += expected
        total_score += score * count
        total_count += count
    return float(total_score) / total_count


def _mean_percent(values: list[float]) -> float:
    """`eval.py`'s `avg(l) * 100` (0 for an empty list)."""
    return float(sum(values)) / len(values) * 100 if values else 0


class _Tally:
    """`eval.py`'s counts over the balanced questions: hits overall, binary and open, per
    group, and the answer counts of each global group for the distribution score."""

    def __init__(self):
        self.scores: dict[str, list[float]] = {"accuracy": [], "binary": [], "open": []}
        self.groups: dict[str, dict] = {
            "per_structural_type": defaultdict(list),
            "per_semantic_type": defaultdict(list),
            "per_steps": defaultdict(list),
            "per_words": defaultdict(list),
        }
        self.gold_counts = defaultdict(lambda: defaultdict(int))
        self.predicted_counts = defaultdict(lambda: defaultdict(int))

    def add(self, question: dict, prediction: str | None, right: float) -> None:
        self.scores["accuracy"].append(right)
        structural = question["types"]["structural"]
        self.scores["open" if structural == "query" else "binary"].append(right)
        self.groups["per_structural_type"][structural].append(right)
        self.groups["per_semantic_type"][question["types"]["semantic"]].append(right)
        self.groups["per_steps"][steps_number(question)].append(right)
        self.groups["per_words"][len(question["question"].split())].append(right)
        global_group = question.get("groups", {}).get("global")
        if global_group is not None:
            self.gold_counts[global_group][question["answer"]] += 1
            self.predicted_counts[global_group][prediction] += 1

    def result(self) -> dict:
        gold, predicted = self.gold_counts, self.predicted_counts
        result = {
            "accuracy": _mean_percent(self.scores["accuracy"]),
            "metric": "exact match (%) of text.rstrip('.').lower() with the gold answer",
            "scorer": [GQA_EVAL],
            "binary": _mean_percent(self.scores["binary"]),
            "open": _mean_percent(self.scores["open"]),
            "distribution": chi_square(gold, predicted) / 100 if gold else None,
        }
        for name, group in self.groups.items():
            result[name] = {str(k): _mean_percent(v) for k, v in sorted(group.items())}
        return result


def score(inputs: ScoreInputs) -> dict:
    """LLaVA's GQA `eval.py` over the balanced questions of the official questions JSON."""
    questions = read_json(inputs.annotations, "GQA questions JSON (testdev_balanced_questions)")
    if not isinstance(questions, dict):
        raise ValueError(f"{inputs.annotations}: expected {{question_id: question}}.")
    by_id = {record["question_id"]: record for record in inputs.answers}
    check_known(by_id, questions, inputs.annotations, "--annotations")
    predictions, items, tally = [], {}, _Tally()
    for qid, question in questions.items():
        require(
            question, ("answer", "question", "types", "semantic"), f"{inputs.annotations}[{qid}]"
        )
        record = by_id.get(qid)
        prediction = convert_prediction(record["text"]) if record else None
        if record is not None:
            predictions.append({"questionId": qid, "prediction": prediction})
        right = float(prediction == question["answer"])
        items[qid] = int(right)
        if question.get("isBalanced", True):
            tally.add(question, prediction, right)
    warn_missing(len(questions) - len(by_id), len(questions))
    return {
        **tally.result(),
        "count": len(tally.scores["accuracy"]),
        "missing": len(questions) - len(by_id),
        "items": write_json(inputs.output_prefix + ".items.json", items),
        "predictions": write_json(
            inputs.output_prefix + ".testdev_balanced_predictions.json", predictions
        ),
    }


TASKS = (
    Task(
        name="gqa",
        description="GQA test-dev balanced, exact match from the official questions JSON",
        benchmark="gqa",
        questions="llava_gqa_testdev_balanced.jsonl",
        visual_folder="data/images",
        annotations="data/testdev_balanced_questions.json",
        read_questions=read_llava_questions,
        score=score,
        prompt_suffix=SHORT_ANSWER,
        suffix_in_file=True,
    ),
)
