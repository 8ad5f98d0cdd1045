"""The synthetic shapes data: every answer follows from its scene; the files have what they say."""

import json
import random
import re
from collections import Counter

from llavamini.apps import synthetic
from llavamini.apps.synthetic import (
    NUMBER_WORDS,
    POSITIONS,
    QUESTION_MIX,
    ask,
    caption,
    random_scene,
    write_dataset,
)
from llavamini.apps.tiny import build_tiny_tokenizer


def expected_answer(shapes, kind: str, question: str) -> str:
    """The answer, worked out again from the scene and the question's words."""
    at = {s.position: s for s in shapes}
    if kind in ("colour", "shape", "position"):
        cell = POSITIONS.index(re.search(r"at the (.+)\?", question).group(1))
        if kind == "position":
            return "yes" if cell in at else "no"
        return at[cell].colour if kind == "colour" else at[cell].shape
    if kind == "count":
        colour = re.match(r"How many (\w+) objects", question).group(1)
        return NUMBER_WORDS[sum(s.colour == colour for s in shapes)]
    colour, shape = re.match(r"Is there a (\w+) (\w+)\?", question).groups()
    return "yes" if any(s.colour == colour and s.shape == shape for s in shapes) else "no"


def test_every_answer_follows_from_its_scene():
    rng = random.Random(0)
    answers = Counter()
    for _ in range(300):
        shapes = random_scene(rng)
        assert 2 <= len(shapes) <= 5 and len({s.position for s in shapes}) == len(shapes)
        for kind in QUESTION_MIX:
            question, answer = ask(shapes, kind, rng)
            assert answer == expected_answer(shapes, kind, question), (kind, question, shapes)
            answers[kind, answer] += 1
    # Yes/no questions are balanced, not always "no".
    for kind in ("position", "existence"):
        assert min(answers[kind, "yes"], answers[kind, "no"]) > 100


def test_caption_lists_objects_row_major():
    shapes = random_scene(random.Random(3))
    text = caption(shapes)
    assert text.endswith(".") and text.count(",") == len(shapes) - 1
    assert text.startswith(POSITIONS[shapes[0].position])


def test_dataset_files_and_a_held_out_split_balanced_by_type(tmp_path):
    paths = write_dataset(str(tmp_path), num_train=20, num_val=10, image_size=56, seed=1)
    captions = json.loads(open(paths["captions"]).read())
    instruct = json.loads(open(paths["instruct"]).read())
    val = [json.loads(line) for line in open(paths["val_questions"])]
    assert len(captions) == 20 and len(instruct) == 40 and len(val) == 10
    assert Counter(q["question_type"] for q in val) == {kind: 2 for kind in QUESTION_MIX}
    train_images = {s["image"] for s in captions}
    assert not train_images & {q["image"] for q in val}
    for sample in captions + instruct:
        assert (tmp_path / sample["image"]).is_file()
        assert sample["conversations"][0]["value"].startswith("<image>\n")


def test_rewording_the_data_leaves_the_tiny_tokenizer_as_it_is(monkeypatch):
    """The tests' token ids come from the tiny tokenizer's own fixed text (`TINY_CORPUS`), not
    from the synthetic data's wording."""
    before = build_tiny_tokenizer().get_vocab()
    positions = tuple(p.replace("top", "upper") for p in POSITIONS)
    monkeypatch.setattr(synthetic, "POSITIONS", positions)
    monkeypatch.setattr(synthetic, "COLOURS", {f"dark{k}": v for k, v in synthetic.COLOURS.items()})
    assert build_tiny_tokenizer().get_vocab() == before
