"""Each local scorer on small hand-written files in the benchmark's real format."""

import csv
import json
import os

import pytest

from llavamini.eval.tasks import get_task
from llavamini.eval.tasks.base import InlineImage, ScoreInputs
from llavamini.eval.tasks.mmbench import CIRCULAR_STRIDE
from tests.eval.helpers import answer, image_base64, write_json, write_jsonl

SUFFIX = "Answer the question using a single word or phrase."


def _score(task, answers, questions, annotations, tmp_path):
    prefix = str(tmp_path / "answers")
    return get_task(task).score(ScoreInputs(answers, questions, annotations, prefix))


# ---- GQA -------------------------------------------------------------------------------------


def test_gqa_exact_match_and_types(tmp_path):
    def question(answer, structural, semantic, balanced=True):
        return {
            "question": "Is it red?",
            "answer": answer,
            "types": {"structural": structural, "semantic": semantic},
            "semantic": [{"operation": "select", "argument": "car"}],
            "groups": {"global": None},
            "isBalanced": balanced,
        }

    questions = {
        "q1": question("yes", "verify", "attr"),
        "q2": question("red", "query", "attr"),
        "q3": question("left", "choose", "rel"),
        "q4": question("no", "verify", "obj"),
        "q5": question("no", "verify", "obj", balanced=False),  # not scored
    }
    annotations = write_json(tmp_path / "testdev_balanced_questions.json", questions)
    answers = [
        answer("q1", "Yes."),  # LLaVA's conversion: rstrip('.').lower()
        answer("q2", "Red"),
        answer("q3", "on the left"),  # not an exact match
    ]  # q4, q5 unanswered
    result = _score("gqa", answers, None, annotations, tmp_path)
    assert result["accuracy"] == 50.0 and result["count"] == 4
    assert result["per_structural_type"] == {"choose": 0.0, "query": 100.0, "verify": 50.0}
    # "open" is the structural type "query", whatever the answer.
    assert result["open"] == 100.0 and result["binary"] == pytest.approx(100 / 3)
    assert result["missing"] == 2
    with open(result["predictions"]) as file:
        assert json.load(file)[0] == {"questionId": "q1", "prediction": "yes"}


# ---- MMBench ---------------------------------------------------------------------------------


def _mmbench_tsv(path, rows):
    columns = [
        "index",
        "question",
        "hint",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "l2-category",
        "source",
        "split",
        "image",
    ]
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return str(path)


def _rotations(index, question, options, answer_letter, category, hint="nan"):
    """The TSV rows of one question and its circular copies (options rotated)."""
    rows, letters = [], "ABCD"
    correct_text = options[letters.index(answer_letter)]
    for k in range(len(options)):
        rotated = options[k:] + options[:k]
        rows.append(
            {
                "index": index + k * CIRCULAR_STRIDE,
                "question": question,
                "hint": hint,
                **dict(zip(letters, rotated, strict=False)),
                "answer": letters[rotated.index(correct_text)],
                "category": category,
                "l2-category": "perception",
                "source": "s",
                "split": "dev",
                # Copies refer to the base row's image by its index, as VLMEvalKit's TSVs do.
                "image": image_base64() if k == 0 else str(index),
            }
        )
    return rows


def test_mmbench_reads_hint_options_and_inline_images(tmp_path):
    rows = _rotations(
        7,
        "What animal is it?",
        ["cat", "dog", "fish", "bird"],
        "B",
        "animals",
        hint="Look at the pet.",
    )
    tsv = _mmbench_tsv(tmp_path / "dev.tsv", rows)
    task = get_task("mmbench")
    questions = task.read_questions(tsv, "")
    assert [q.question_id for q in questions] == [7, 1_000_007, 2_000_007, 3_000_007]
    first = questions[0]
    assert first.prompt == "Look at the pet.\nWhat animal is it?\nA. cat\nB. dog\nC. fish\nD. bird"
    assert task.question_text(first) == (
        first.prompt
        + "\nAnswer with the option's letter from the given choices directly."
    )
    assert isinstance(first.visual, InlineImage)
    assert questions[1].visual == first.visual  # the copy's image reference is resolved
    assert questions[1].extra["options"] == ["dog", "fish", "bird", "cat"]


def test_mmbench_circular_eval_needs_every_rotation(tmp_path):
    passed = _rotations(1, "Which animal?", ["cat", "dog", "fish", "bird"], "B", "animals")
    failed = _rotations(2, "Which colour?", ["red", "green", "blue", "pink"], "C", "colours")
    tsv = _mmbench_tsv(tmp_path / "dev.tsv", passed + failed)
    answers = [
        # question 1: right in all four rotations, in four free-text forms
        answer(passed[0]["index"], "B"),
        answer(passed[1]["index"], "(A) dog"),
        answer(passed[2]["index"], "The answer is D"),
        answer(passed[3]["index"], "It is a dog."),
        # question 2: right three times, wrong once
        answer(failed[0]["index"], "C."),
        answer(failed[1]["index"], "B"),
        answer(failed[2]["index"], "red"),  # the right answer is blue (A in this rotation)
        answer(failed[3]["index"], "blue"),
    ]
    result = _score("mmbench", answers, tsv, tsv, tmp_path)
    assert result["accuracy"] == 50.0
    assert result["per_category"] == {"animals": 100.0, "colours": 0.0}
    assert result["single_pass_accuracy"] == 100.0  # both original rows were right
    assert result["questions"] == 2 and result["rows"] == 8
    assert result["unparsed_answers"] == 0
    with open(result["submission"], encoding="utf-8") as file:
        submitted = list(csv.DictReader(file, delimiter="\t"))
    assert len(submitted) == 8
    assert "image" not in submitted[0] and "hint" not in submitted[0]
    assert submitted[2]["prediction"] == "The answer is D"


def test_mmbench_missing_rotation_fails_the_question(tmp_path):
    rows = _rotations(1, "Which animal?", ["cat", "dog"], "B", "animals")
    tsv = _mmbench_tsv(tmp_path / "dev.tsv", rows)
    result = _score("mmbench", [answer(1, "B")], tsv, tsv, tmp_path)
    assert result["accuracy"] == 0.0
    assert result["missing"] == 1


def test_mmbench_cn_uses_the_chinese_suffix_and_reads_answers_as_vlmevalkit(tmp_path):
    rows = _rotations(3, "花是什么颜色？", ["红色", "蓝色", "绿色", "黄色"], "D", "颜色")
    tsv = _mmbench_tsv(tmp_path / "dev_cn.tsv", rows)
    task = get_task("mmbench_cn")
    question = task.read_questions(tsv, "")[0]
    assert task.question_text(question).endswith("\nD. 黄色\n请直接回答选项字母。")
    answers = [
        answer(rows[0]["index"], "D"),
        answer(rows[1]["index"], "C"),
        answer(rows[2]["index"], "黄色"),  # the option's text: B in this rotation
        answer(rows[3]["index"], "A"),
    ]
    result = _score("mmbench_cn", answers, tsv, tsv, tmp_path)
    assert result["accuracy"] == 100.0
    assert result["per_category"] == {"颜色": 100.0}
    # VLMEvalKit's rules split on spaces and ASCII punctuation only: "答案是D" names no letter.
    answers[0] = answer(rows[0]["index"], "答案是D")
    result = _score("mmbench_cn", answers, tsv, tsv, tmp_path)
    assert result["accuracy"] == 0.0 and result["unparsed_answers"] == 1


def test_mmbench_unresolvable_image_reference_names_the_line(tmp_path):
    rows = _rotations(1, "q", ["a", "b"], "A", "c")
    rows[1]["image"] = "999"
    tsv = _mmbench_tsv(tmp_path / "dev.tsv", rows)
    with pytest.raises(ValueError, match="line 3"):
        get_task("mmbench").read_questions(tsv, "")


# ---- POPE ------------------------------------------------------------------------------------


def _pope_files(tmp_path, labels_by_split):
    rows, qid = [], 0
    os.makedirs(tmp_path / "coco")
    for split, labels in labels_by_split.items():
        label_rows = []
        for object_name, label in labels:
            qid += 1
            text = f"Is there a {object_name} in the image?"
            rows.append(
                {
                    "question_id": qid,
                    "image": "x.jpg",
                    "text": f"{text}\n{SUFFIX}",
                    "category": split,
                }
            )
            label_rows.append({"question_id": len(label_rows) + 1, "text": text, "label": label})
        write_jsonl(tmp_path / "coco" / f"coco_pope_{split}.json", label_rows)
    return write_jsonl(tmp_path / "llava_pope_test.jsonl", rows), rows


def test_pope_metrics_per_split(tmp_path):
    labels = {
        "random": [("dog", "yes"), ("cat", "no"), ("car", "yes"), ("cup", "no")],
        "adversarial": [("dog", "yes"), ("cat", "no")],
    }
    questions, rows = _pope_files(tmp_path, labels)
    texts = [
        "Yes, there is a dog.",  # yes, right
        "No.",  # no, right
        "There is not a car, it is a truck.",  # "not" in the first sentence: no, wrong
        "Yes",  # yes, wrong
        "yes",
        "No, there is no cat",
    ]
    answers = [
        answer(row["question_id"], t, row["text"]) for row, t in zip(rows, texts, strict=True)
    ]
    result = _score("pope", answers, questions, str(tmp_path / "coco"), tmp_path)
    random = result["per_split"]["random"]
    assert (random["tp"], random["fp"], random["tn"], random["fn"]) == (1, 1, 1, 1)
    assert random["precision"] == 50.0 and random["recall"] == 50.0 and random["f1"] == 50.0
    assert random["yes_ratio"] == 50.0
    assert result["per_split"]["adversarial"]["f1"] == 100.0
    assert result["accuracy"] == 75.0  # mean F1 over the splits


def test_pope_labels_out_of_order_are_refused(tmp_path):
    questions, rows = _pope_files(tmp_path, {"random": [("dog", "yes"), ("cat", "no")]})
    labels_path = tmp_path / "coco" / "coco_pope_random.json"
    lines = open(labels_path).read().splitlines()
    labels_path.write_text("\n".join(reversed(lines)) + "\n")
    answers = [answer(row["question_id"], "yes", row["text"]) for row in rows]
    with pytest.raises(ValueError, match="does not pair"):
        _score("pope", answers, questions, str(tmp_path / "coco"), tmp_path)


# ---- MME -------------------------------------------------------------------------------------


def test_mme_scores_accuracy_and_accuracy_plus(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "existence").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "images").mkdir()  # labels in questions_answers_YN/ only then
    (root / "existence" / "001.txt").write_text(
        "Is there a dog in this image? Please answer yes or no.\tYes\n"
        "Is there a cat in this image? Please answer yes or no.\tNo\n"
    )
    (root / "existence" / "002.txt").write_text(
        "Is there a car in this image? Please answer yes or no.\tYes\n"
        "Is there a bus in this image?  Please answer yes or no.\tNo\n"  # two spaces, as in MME
    )
    (root / "artwork" / "questions_answers_YN" / "10.txt").write_text(
        "Is this by Monet? Please answer yes or no.\tNo\n"
        "Is this by Dali? Please answer yes or no.\tYes\n"
    )
    specs = [
        ("existence/001.png", "Is there a dog in this image? Please answer yes or no.", "Yes"),
        ("existence/001.png", "Is there a cat in this image? Please answer yes or no.", "No"),
        ("existence/002.png", "Is there a car in this image? Please answer yes or no.", "yes."),
        # Without the yes/no suffix, which the two-space label line gets back.
        ("existence/002.png", "Is there a bus in this image?", "Yes"),
        ("artwork/10.jpg", "Is this by Monet? Please answer yes or no.", "Not sure"),
        ("artwork/10.jpg", "Is this by Dali? Please answer yes or no.", "Yes"),
    ]
    rows = [{"question_id": q, "image": q, "text": f"{t}\n{SUFFIX}"} for q, t, _ in specs]
    questions = write_jsonl(tmp_path / "llava_mme.jsonl", rows)
    answers = [answer(q, a, f"{t}\n{SUFFIX}") for q, t, a in specs]
    result = _score("mme", answers, questions, str(root), tmp_path)
    # existence: 3 of 4 right (75), 1 of 2 images fully right (50) -> 125
    assert result["per_category"]["existence"] == {
        "accuracy": 75.0,
        "accuracy_plus": 50.0,
        "score": 125.0,
    }
    # artwork: "Not sure" starts with "no" -> right; 2 of 2 -> 100 + 100
    assert result["per_category"]["artwork"]["score"] == 200.0
    assert result["accuracy"] == result["perception"] == 325.0
    assert "OCR" in result["categories_absent"]


# ---- SEED-Bench ------------------------------------------------------------------------------


def test_seed_bench_image_video_and_types(tmp_path):
    labels = {
        "question_type": {"Scene Understanding": 1, "Action Recognition": 10},
        "questions": [
            {"question_id": "101", "answer": "A", "question_type_id": 1, "data_type": "image"},
            {"question_id": "102", "answer": "C", "question_type_id": 1, "data_type": "image"},
            {"question_id": "103", "answer": "B", "question_type_id": 1, "data_type": "image"},
            {"question_id": "v1", "answer": "D", "question_type_id": 10, "data_type": "video"},
        ],
    }
    annotations = write_json(tmp_path / "SEED-Bench.json", labels)
    # LLaVA's question file numbers the questions (ints); "C." is not an exact match.
    answers = [answer(101, "A"), answer(102, "C."), answer("v1", "D")]
    result = _score("seed_bench", answers, None, annotations, tmp_path)
    assert result["accuracy"] == pytest.approx(100 / 3, abs=0.01)
    assert result["video_accuracy"] == 100.0
    assert result["overall_accuracy"] == 50.0
    assert result["per_question_type"] == {
        "Action Recognition": 100.0,
        "Scene Understanding": pytest.approx(100 / 3),
    }


def test_seed_bench_string_ids_of_numeric_labels_do_not_match(tmp_path):
    """The official script looks "101" up as 101: an answer filed under "101" is unknown."""
    labels = {
        "questions": [
            {"question_id": "101", "answer": "A", "question_type_id": 1, "data_type": "image"}
        ]
    }
    annotations = write_json(tmp_path / "SEED-Bench.json", labels)
    with pytest.raises(ValueError, match="not in"):
        _score("seed_bench", [answer("101", "A")], None, annotations, tmp_path)


# ---- ScienceQA -------------------------------------------------------------------------------


def test_scienceqa_reads_prompts_and_scores_img_accuracy(tmp_path):
    rows = [
        {
            "id": "1",
            "image": "1/image.png",
            "conversations": [
                {"from": "human", "value": "<image>\nQuestion: Which?\nOptions: (A) x (B) y"}
            ],
        },
        {
            "id": "2",
            "conversations": [
                {"from": "human", "value": "Question: Text only?\nOptions: (A) p (B) q"}
            ],
        },
    ]
    task = get_task("scienceqa")
    questions = task.read_questions(write_json(tmp_path / "llava_test_CQM-A.json", rows), "/imgs")
    assert questions[0].visual == "/imgs/1/image.png" and questions[1].visual is None
    assert task.question_text(questions[1]) == (
        "Question: Text only?\nOptions: (A) p (B) q\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert task.question_text(questions[0]).startswith("Question: Which?")

    problems = {
        "1": {
            "choices": ["x", "y"],
            "answer": 1,
            "image": "image.png",
            "subject": "natural science",
        },
        "2": {"choices": ["p", "q"], "answer": 0, "image": None, "subject": "language science"},
        "3": {
            "choices": ["u", "v", "w"],
            "answer": 2,
            "image": "image.png",
            "subject": "natural science",
        },
        "4": {
            "choices": ["s", "t"],
            "answer": 0,
            "image": "image.png",
            "subject": "social science",
        },
    }
    write_json(tmp_path / "problems.json", problems)
    write_json(tmp_path / "pid_splits.json", {"test": ["1", "2", "3", "4"], "val": []})
    answers = [
        answer("1", "B"),
        answer("2", "A. p"),
        answer("3", "The answer is C."),
        answer("4", "I would say A"),  # no reference rule applies: wrong
    ]
    result = _score("scienceqa", answers, None, str(tmp_path), tmp_path)
    assert result["accuracy"] == pytest.approx(200 / 3, abs=0.01)  # 2 of 3 image problems
    assert result["overall_accuracy"] == 75.0
    assert result["per_subject"]["social science"] == 0.0
