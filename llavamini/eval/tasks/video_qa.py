"""Open-ended video QA judged by an LLM: MSVD-QA, MSRVTT-QA, ActivityNet-QA.

Data in the Video-ChatGPT / Video-LLaVA layout (`GPT_Zero_Shot_QA/<Set>_Zero_Shot_QA/`):
`test_q.json` (`[{"video_name", "question", "question_id"}]`), `test_a.json` (`[{"answer",
"question_id"?}]`, matched by `question_id` when it has one, else by position) and a video folder
(files `<video_name>` + .mp4/.avi/.mov/.mkv; ActivityNet's are prefixed `v_`).

Prompt, as the reference's `run_inference_video_qa.py` lays it out: an instruction asking for
one complete sentence that mirrors the question, worked examples, then the question. The
reference's exact instruction text is not reproduced here; `VIDEO_QA_INSTRUCTION` follows its
structure in our own words. For a parity run, put the reference's text in a file and pass
`--prompt-prefix-file` (its SHA-256 is recorded in every answer line). Frames: ~1 fps, all of
them (the reference's policy, `llavamini.data.sample_frame_indices`); greedy; 1024 new tokens.

Score: every answered question is judged (`metrics.judge`) and the judgments are tallied as the
reference's `eval_video_qa.py` tallies them: accuracy = yes / (yes + no) in percent, score =
the sum of int(score) over every kept judgment divided by their number; questions without an
answer are not judged and not counted (the reference scores its prediction file), only
reported as `missing`. Broken down by the question's first word (what, who, how, ...);
per-question judgments in `<prefix>.items.json`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict

from tqdm import tqdm

from llavamini.data.video import VIDEO_EXTENSIONS
from llavamini.eval.metrics.judge import (
    REFERENCE_VIDEO_QA,
    Judge,
    JudgeError,
    config_from_env,
    judge_settings,
    load_video_qa_prompt,
)
from llavamini.eval.tasks.base import (
    Question,
    ScoreInputs,
    Task,
    answers_by_id,
    check_known,
    read_json,
    require,
    warn_missing,
    write_json,
)

logger = logging.getLogger(__name__)

VIDEO_QA_INSTRUCTION = (
    "Answer the question based on the video. Provide a complete sentence that directly mirrors "
    "the phrasing of the question, so that the answer can be read without the question.\n"
    "Examples:\n"
    "Question: what is the man riding?\nAnswer: The man is riding a bicycle.\n"
    "Question: who is playing the guitar?\nAnswer: A young woman is playing the guitar.\n"
    "Question: what are the children doing?\nAnswer: The children are playing football.\n"
    "Question: where is the dog running?\nAnswer: The dog is running along the beach.\n"
    "Question: how many people are dancing?\nAnswer: Three people are dancing.\n"
    "Question: what color is the car?\nAnswer: The car is red.\n"
    "Question: what does the woman cut?\nAnswer: The woman cuts an onion.\n"
    "Question: is the man wearing a hat?\nAnswer: Yes, the man is wearing a hat.\n"
    "Answer the question with one complete sentence:\n"
)
"""Our wording of the reference's instruction (structure: instruction, eight examples, cue)."""


def find_video(folder: str, name: str, prefix: str = "") -> str:
    """The first existing `<folder>/<prefix><name><ext>`; else the `.mp4` path (the runner
    reports it missing before generating anything)."""
    base = os.path.join(folder, prefix + name)
    for extension in VIDEO_EXTENSIONS:
        if os.path.isfile(base + extension):
            return base + extension
    return base + VIDEO_EXTENSIONS[0]


def _read_question_rows(path: str) -> list[dict]:
    rows = read_json(path, "video QA question file (test_q.json)")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of {{video_name, question, question_id}}.")
    for index, row in enumerate(rows):
        require(row, ("video_name", "question", "question_id"), f"{path}[{index}]")
    return rows


def read_questions(path: str, video_folder: str, video_prefix: str = "") -> list[Question]:
    """`test_q.json` -> questions on the matching video files."""
    return [
        Question(
            row["question_id"],
            row["question"],
            find_video(video_folder, row["video_name"], video_prefix),
        )
        for row in _read_question_rows(path)
    ]


def read_gold_answers(questions_path: str, answers_path: str) -> dict[str, tuple[str, str]]:
    """`str(question_id)` -> (question, gold answer), joining test_q.json and test_a.json."""
    rows = _read_question_rows(questions_path)
    gold = read_json(answers_path, "video QA answer file (test_a.json)")
    if not isinstance(gold, list):
        raise ValueError(f"{answers_path}: expected a list of {{answer, ...}}.")
    for index, row in enumerate(gold):
        require(row, ("answer",), f"{answers_path}[{index}]")
    if all("question_id" in row for row in gold):
        by_id = {str(row["question_id"]): str(row["answer"]) for row in gold}
    elif len(gold) == len(rows):
        by_id = {str(q["question_id"]): str(a["answer"]) for q, a in zip(rows, gold, strict=True)}
    else:
        raise ValueError(
            f"{answers_path} has {len(gold)} answers without question ids but {questions_path} "
            f"has {len(rows)} questions: cannot pair them."
        )
    table = {}
    for row in rows:
        qid = str(row["question_id"])
        if qid not in by_id:
            raise ValueError(f"{answers_path}: no gold answer for question_id {qid!r}.")
        table[qid] = (row["question"], by_id[qid])
    return table


def _question_word(question: str) -> str:
    words = question.strip().lower().split()
    return words[0] if words else "(empty)"


def score(inputs: ScoreInputs) -> dict:
    """Judge every answer and tally as the reference's `eval_video_qa.py` does."""
    gold = read_gold_answers(inputs.questions, inputs.annotations)
    by_id = answers_by_id(inputs.answers)
    check_known(by_id, gold, inputs.questions, "--questions")
    prompt = load_video_qa_prompt(inputs.options.get("judge_prompt_file"))
    settings = judge_settings(inputs.options, inputs.output_prefix)
    judge = Judge(config_from_env(**settings), prompt=prompt)
    answered = [qid for qid in gold if qid in by_id]
    items = [(gold[qid][0], gold[qid][1], by_id[qid]["text"]) for qid in answered]
    try:
        results = dict(zip(answered, _judge_with_progress(judge, items), strict=True))
    finally:
        judge.close()
    failed = {qid: r for qid, r in results.items() if isinstance(r, JudgeError)}
    if failed and not inputs.options.get("allow_judge_failures", False):
        qid, error = next(iter(failed.items()))
        raise JudgeError(
            f"{len(failed)} of {len(items)} judgments failed (first: question {qid}: {error}). "
            f"The others are cached: rerun to retry only the failed ones."
        )
    kept = {qid: r for qid, r in results.items() if not isinstance(r, JudgeError)}
    warn_missing(len(gold) - len(answered), len(gold))
    return {
        **_tally(kept, gold),
        "missing": len(gold) - len(answered),
        "judge_failed": len(failed),
        "items": write_json(inputs.output_prefix + ".items.json", kept),
        "judge": judge.summary(prompt.version),
    }


def _tally(kept: dict[str, dict], gold: dict[str, tuple[str, str]]) -> dict:
    """The reference's tallies of the judgments it kept: every one counts towards the mean
    score, and towards the accuracy when its 'pred' reads as yes or no."""
    yes = sum(r["pred"] == "yes" for r in kept.values())
    no = sum(r["pred"] == "no" for r in kept.values())
    score_sum = sum(r["score"] for r in kept.values() if r["score"] is not None)
    per_word = defaultdict(list)
    for qid, judgment in kept.items():
        if judgment["pred"] is not None:
            per_word[_question_word(gold[qid][0])].append(judgment["pred"] == "yes")
    return {
        "accuracy": 100 * (yes / (yes + no)) if yes + no else None,
        "metric": "judge accuracy (%): yes / (yes + no)",
        "scorer": [REFERENCE_VIDEO_QA],
        "score": score_sum / len(kept) if kept else None,
        "per_question_word": {k: 100 * sum(v) / len(v) for k, v in sorted(per_word.items())},
        "yes": yes,
        "no": no,
        "judged": len(kept),
    }


def _judge_with_progress(judge: Judge, items: list[tuple[str, str, str]]) -> list:
    with tqdm(total=len(items), desc="judging", unit="q") as bar:
        return judge.judge_many(items, on_done=lambda: bar.update(1))


def _video_task(name: str, description: str, folder: str, videos: str, prefix: str = "") -> Task:
    return Task(
        name=name,
        description=description,
        benchmark=f"GPT_Zero_Shot_QA/{folder}",
        questions="test_q.json",
        visual_folder=videos,
        annotations="test_a.json",
        read_questions=functools.partial(read_questions, video_prefix=prefix),
        score=score,
        prompt_prefix=VIDEO_QA_INSTRUCTION,
        suffix_in_file=True,
        max_new_tokens=1024,
        modality="video",
        score_questions="test_q.json",
    )


TASKS = (
    _video_task("msvd_qa", "MSVD-QA, judged by an LLM", "MSVD_Zero_Shot_QA", "videos"),
    _video_task("msrvtt_qa", "MSRVTT-QA, judged by an LLM", "MSRVTT_Zero_Shot_QA", "videos/all"),
    _video_task(
        "activitynet_qa",
        "ActivityNet-QA, judged by an LLM",
        "Activitynet_Zero_Shot_QA",
        "all_test",
        prefix="v_",
    ),
)
