"""POPE (object hallucination), scored locally per split as LLaVA's `eval_pope.py` does.

Questions: LLaVA's `llava_pope_test.jsonl` (each row has a `category`: adversarial, popular or
random), COCO val2014 images. Labels: `coco/coco_pope_<category>.json` (JSON lines with
`label` yes/no), in the same order as that category's questions in the question file (the
reference pairs them by position; here each pair's question text is checked too).

Scoring reproduces LLaVA's `llava/eval/eval_pope.py` (`LLAVA_EVAL_POPE`): an answer is "no"
when its first sentence (text before the first period, commas removed, split on single
spaces) contains the word "No", "no" or "not", else "yes"; a label is positive unless it is
"no". Per split: accuracy, precision, recall and F1 with "yes" as the positive class, and the
yes ratio, as percentages of the official fractions (unrounded). Headline: F1 averaged over
the splits (LLaVA-1.5's convention for its single POPE number). Unanswered questions are left
out and counted in `missing` (the official script pairs answers and labels by position, which
is the same for a complete answer file in question order). Per-question yes/no readings go
to `<prefix>.items.json`.
"""

from __future__ import annotations

import os

from llavamini.eval.tasks.base import (
    SHORT_ANSWER,
    ScoreInputs,
    Task,
    answers_by_key,
    read_jsonl,
    read_llava_questions,
    require,
    write_json,
)

LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"

LLAVA_EVAL_POPE = {
    "repository": "haotian-liu/LLaVA",
    "file": "llava/eval/eval_pope.py",
    "commit": "c121f0432da27facab705978f83c4ada465e46fd",
}


def yes_or_no(text: str) -> str:
    """The reference's rule: 'no' if the first sentence has the word No / no / not."""
    first_sentence = text.split(".")[0] if "." in text else text
    words = first_sentence.replace(",", "").split(" ")
    return "no" if any(word in ("No", "no", "not") for word in words) else "yes"


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def split_metrics(predictions: list[str], labels: list[str]) -> dict:
    """Accuracy, precision, recall, F1 ('yes' positive) and yes ratio, in percent.

    Computed as the official script does (its fractions, then times 100); a metric whose
    denominator is zero is None (the official script stops with a division error).
    """
    pairs = [(p == "yes", t != "no") for p, t in zip(predictions, labels, strict=True)]
    tp = sum(p and t for p, t in pairs)
    fp = sum(p and not t for p, t in pairs)
    tn = sum(not p and not t for p, t in pairs)
    fn = sum(not p and t for p, t in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    values = {
        "accuracy": _ratio(tp + tn, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": _ratio(tp + fp, len(pairs)),
    }
    result = {k: (100 * v if v is not None else None) for k, v in values.items()}
    result.update(tp=tp, fp=fp, tn=tn, fn=fn, count=len(pairs))
    return result


def _label_files(folder: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"POPE label folder not found: {folder}")
    files = {
        name[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]: os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.startswith(LABEL_PREFIX) and name.endswith(LABEL_SUFFIX)
    }
    if not files:
        raise FileNotFoundError(f"No {LABEL_PREFIX}<split>{LABEL_SUFFIX} files in {folder}.")
    return files


def score(inputs: ScoreInputs) -> dict:
    """Per-split metrics and their mean F1."""
    rows = read_jsonl(inputs.questions, "POPE question file")
    questions = read_llava_questions(inputs.questions, "")
    answers = answers_by_key(questions, inputs.answers, inputs.questions)
    per_split, missing, items = {}, 0, {}
    for category, path in _label_files(inputs.annotations).items():
        labels = read_jsonl(path, f"POPE labels ({category})")
        asked = [
            q for q, row in zip(questions, rows, strict=True) if row.get("category") == category
        ]
        if len(asked) != len(labels):
            raise ValueError(
                f"{path} has {len(labels)} labels but {inputs.questions} has {len(asked)} "
                f"questions of category {category!r}."
            )
        predictions, truths = [], []
        for number, (question, label) in enumerate(zip(asked, labels, strict=True), start=1):
            require(label, ("label",), f"{path}, line {number}")
            if "text" in label and not question.prompt.startswith(label["text"]):
                raise ValueError(
                    f"{path}, line {number}: label for {label['text']!r} does not pair with "
                    f"question {question.question_id!r} ({question.prompt[:60]!r})."
                )
            record = answers.get(question.key)
            if record is None:
                missing += 1
                continue
            predictions.append(yes_or_no(record["text"]))
            truths.append(label["label"])
            items[str(question.question_id)] = predictions[-1]
        per_split[category] = split_metrics(predictions, truths)
    f1s = [split["f1"] for split in per_split.values()]
    accuracies = [split["accuracy"] for split in per_split.values()]
    return {
        "accuracy": None if None in f1s else sum(f1s) / len(f1s),
        "metric": "F1 (%) with 'yes' positive, averaged over the POPE splits",
        "scorer": [LLAVA_EVAL_POPE],
        "mean_accuracy": None if None in accuracies else sum(accuracies) / len(accuracies),
        "per_split": per_split,
        "missing": missing,
        "items": write_json(inputs.output_prefix + ".items.json", items),
    }


TASKS = (
    Task(
        name="pope",
        description="POPE adversarial/popular/random: F1, accuracy, precision, recall, yes ratio",
        benchmark="pope",
        questions="llava_pope_test.jsonl",
        visual_folder="val2014",
        annotations="coco",
        read_questions=read_llava_questions,
        score=score,
        prompt_suffix=SHORT_ANSWER,
        suffix_in_file=True,
    ),
)
