"""GQA test-dev balanced: exact-match accuracy from the official questions JSON alone.

Questions: LLaVA's `llava_gqa_testdev_balanced.jsonl` (short-answer suffix in the file), images
in `gqa/data/images`. Scoring needs only `testdev_balanced_questions.json` from the GQA release
(not the scene graphs or choices files that the official `eval.py` also wants, which the
release lacks): a prediction is LLaVA's conversion of the answer, `text.rstrip('.').lower()`,
and it is right when it equals the gold answer. Reported beside the accuracy: per structural
type (verify, query, choose, logical, compare), per semantic type (obj, attr, cat, rel, global),
binary (yes/no) vs open questions, and consistency (over the entailed questions in the file, as
the official script computes it). The official-format predictions file is written too.
"""

from __future__ import annotations

from collections import defaultdict

from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_id,
    percent,
    read_json,
    read_llava_questions,
    require,
    warn_missing,
    write_json,
)


def convert_prediction(text: str) -> str:
    """LLaVA's `convert_gqa_for_eval`: trailing periods off, lower case."""
    return text.rstrip(".").lower()


def _consistency(questions: dict, correct: dict[str, bool]) -> float | None:
    """Mean, over correctly answered questions with entailed questions in the set, of the
    fraction of those entailed questions answered correctly."""
    scores = []
    for qid, question in questions.items():
        if not correct.get(qid):
            continue
        entailed = [e for e in question.get("entailed", []) if e != qid and e in questions]
        if entailed:
            scores.append(sum(correct[e] for e in entailed) / len(entailed))
    return percent(sum(scores), len(scores))


def score(inputs: ScoreInputs) -> dict:
    """Accuracy over every question of the official questions JSON (missing answers wrong)."""
    questions = read_json(inputs.annotations, "GQA questions JSON (testdev_balanced_questions)")
    if not isinstance(questions, dict):
        raise ValueError(f"{inputs.annotations}: expected {{question_id: question}}.")
    by_id = answers_by_id(inputs.answers)
    unknown = [qid for qid in by_id if qid not in questions]
    if unknown:
        raise ValueError(
            f"{len(unknown)} answered question ids are not in {inputs.annotations} "
            f"(first: {unknown[0]!r}): wrong --annotations file?"
        )
    correct, predictions = {}, []
    groups: dict[str, dict[str, list[bool]]] = {
        "per_structural_type": defaultdict(list),
        "per_semantic_type": defaultdict(list),
        "binary_vs_open": defaultdict(list),
    }
    for qid, question in questions.items():
        require(question, ("answer",), f"{inputs.annotations}[{qid}]")
        record = by_id.get(qid)
        prediction = convert_prediction(record["text"]) if record else None
        if record is not None:
            predictions.append({"questionId": qid, "prediction": prediction})
        correct[qid] = prediction == question["answer"]
        types = question.get("types", {})
        groups["per_structural_type"][types.get("structural", "unknown")].append(correct[qid])
        groups["per_semantic_type"][types.get("semantic", "unknown")].append(correct[qid])
        kind = "binary" if question["answer"] in ("yes", "no") else "open"
        groups["binary_vs_open"][kind].append(correct[qid])
    warn_missing(len(questions) - len(by_id), len(questions))
    result = {
        "accuracy": percent(sum(correct.values()), len(correct)),
        "metric": "exact match (%) of text.rstrip('.').lower() with the gold answer",
    }
    for name, group in groups.items():
        result[name] = {k: percent(sum(v), len(v)) for k, v in sorted(group.items())}
    result.update(
        consistency=_consistency(questions, correct),
        count=len(correct),
        missing=len(questions) - len(by_id),
        predictions=write_json(
            inputs.output_prefix + ".testdev_balanced_predictions.json", predictions
        ),
    )
    return result


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
