"""Synthetic visual QA: coloured shapes on a 3 x 3 grid, with captions and questions.

Every image is generated from a seed, so a data set is reproducible from its size and seed. Stage 1
trains on captions; stage 2 on single-word questions about colour, shape, position, count and
existence (the answers are words of a small closed vocabulary, scored with VQA accuracy).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 50, 47),
    "green": (60, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
BACKGROUND = (40, 40, 40)
SHORT_ANSWER = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    position: int  # index into POSITIONS

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def draw_scene(shapes: list[Shape], size: int) -> Image.Image:
    """The image: each shape filling most of its grid cell on a dark background."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for item in shapes:
        row, col = divmod(item.position, 3)
        left, top = col * cell + cell * 0.15, row * cell + cell * 0.15
        right, bottom = (col + 1) * cell - cell * 0.15, (row + 1) * cell - cell * 0.15
        fill = COLOURS[item.colour]
        if item.shape == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif item.shape == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def random_scene(rng: random.Random, max_shapes: int = 3) -> list[Shape]:
    positions = rng.sample(range(9), rng.randint(1, max_shapes))
    return [Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), p) for p in positions]


def caption(shapes: list[Shape]) -> str:
    parts = [
        f"a {s.name} at the {POSITIONS[s.position]}"
        for s in sorted(shapes, key=lambda s: s.position)
    ]
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def questions(shapes: list[Shape], rng: random.Random) -> list[tuple[str, str, str]]:
    """`(question, answer, question_type)` that the scene answers unambiguously."""
    out = [("How many shapes are there?", NUMBER_WORDS[len(shapes)], "count")]
    for item in shapes:
        where = POSITIONS[item.position]
        out.append((f"What colour is the shape at the {where}?", item.colour, "colour"))
        out.append((f"What shape is at the {where}?", item.shape, "shape"))
        if sum(s.name == item.name for s in shapes) == 1:
            out.append((f"Where is the {item.name}?", where, "position"))
    probe = Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), 0)
    present = any(s.name == probe.name for s in shapes)
    out.append((f"Is there a {probe.name}?", "yes" if present else "no", "existence"))
    return out


def vocabulary() -> list[str]:
    """Every word the captions and questions use (for training a small tokenizer)."""
    words = [caption([Shape(c, s, p)]) for c in COLOURS for s in SHAPES for p in range(9)]
    words += [q for s in SHAPES for q, _, _ in questions([Shape("red", s, 4)], random.Random(0))]
    return words + [SHORT_ANSWER, " ".join(NUMBER_WORDS), "yes no"]


def write_dataset(
    output_dir: str, num_train: int, num_val: int, image_size: int, seed: int = 0
) -> dict:
    """Write images and LLaVA-format files under `output_dir`:

    - `captions.json`: stage-1 caption samples (`<image>` + caption);
    - `instruct.json`: stage-2 samples, one question each (+ the short-answer suffix);
    - `val_questions.jsonl` / `val_answers.json`: held-out questions (LLaVA question-file
      schema: question_id, image, text) and their answers with question types.

    Returns the paths written.
    """
    rng = random.Random(seed)
    images_dir = os.path.join(output_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    captions, instruct, val_questions, val_answers = [], [], [], {}
    for index in range(num_train + num_val):
        shapes = random_scene(rng)
        name = f"images/{index:06d}.png"
        draw_scene(shapes, image_size).save(os.path.join(output_dir, name))
        qa = questions(shapes, rng)
        if index < num_train:
            captions.append(_sample(f"cap-{index}", name, "Describe the image.", caption(shapes)))
            question, answer, _ = rng.choice(qa)
            instruct.append(_sample(f"qa-{index}", name, f"{question}\n{SHORT_ANSWER}", answer))
        else:
            for number, (question, answer, kind) in enumerate(qa):
                qid = f"val-{index}-{number}"
                val_questions.append(
                    {"question_id": qid, "image": name, "text": f"{question}\n{SHORT_ANSWER}"}
                )
                val_answers[qid] = {"answer": answer, "question_type": kind}
    paths = {
        "captions": os.path.join(output_dir, "captions.json"),
        "instruct": os.path.join(output_dir, "instruct.json"),
        "val_questions": os.path.join(output_dir, "val_questions.jsonl"),
        "val_answers": os.path.join(output_dir, "val_answers.json"),
    }
    for key, data in (("captions", captions), ("instruct", instruct), ("val_answers", val_answers)):
        with open(paths[key], "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
    with open(paths["val_questions"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q) + "\n" for q in val_questions)
    return paths


def _sample(sample_id: str, image: str, question: str, answer: str) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }
