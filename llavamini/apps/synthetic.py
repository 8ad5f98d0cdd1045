"""Synthetic visual QA: coloured shapes on a 3 x 3 grid, with captions and questions.

The design: a tiny vision tower trained from scratch learns colour and position in minutes but
shape slowly, so stage 2 is dominated by position-referenced colour questions ("What colour is
at the top left?"), which one question-independent token cannot answer for every cell. Global
questions (counts) show where compression is harmless. Every image comes from a seed: a data set
is reproducible from its size and seed.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from llavamini.constants import SHORT_ANSWER

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 20),
    "purple": (140, 50, 180),
    "orange": (240, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "top left",
    "top centre",
    "top right",
    "middle left",
    "centre",
    "middle right",
    "bottom left",
    "bottom centre",
    "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
BACKGROUND = (200, 200, 200)
QUESTION_MIX = {"colour": 0.5, "position": 0.2, "count": 0.1, "shape": 0.1, "existence": 0.1}
"""Share of each question type in stage-2 training data."""


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    position: int  # index into POSITIONS, row-major

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def random_scene(rng: random.Random, min_shapes: int = 2, max_shapes: int = 5) -> list[Shape]:
    """2 to 5 shapes in distinct cells, sorted row-major."""
    cells = sorted(rng.sample(range(9), rng.randint(min_shapes, max_shapes)))
    return [Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), cell) for cell in cells]


def draw_scene(shapes: list[Shape], size: int, rng: random.Random) -> Image.Image:
    """Each shape fills 45-70 % of its cell, jittered by up to 10 % of a cell."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for item in shapes:
        row, col = divmod(item.position, 3)
        extent = cell * rng.uniform(0.45, 0.70)
        cx = (col + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        cy = (row + 0.5) * cell + rng.uniform(-0.1, 0.1) * cell
        box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
        fill = COLOURS[item.colour]
        if item.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image


def caption(shapes: list[Shape]) -> str:
    """Row-major object list: 'top left red circle, centre blue square.'"""
    return ", ".join(f"{POSITIONS[s.position]} {s.name}" for s in shapes) + "."


def ask(shapes: list[Shape], kind: str, rng: random.Random) -> tuple[str, str]:
    """One `(question, answer)` of type `kind` about the scene ('position': is a given cell
    occupied, asked about an occupied and an empty cell equally often; a scene has 2 to 5 shapes
    in 9 cells, so both kinds always exist)."""
    if kind == "position":
        occupied = {s.position for s in shapes}
        present = rng.random() < 0.5
        cells = [c for c in range(9) if (c in occupied) == present]
        cell = rng.choice(cells)
        return f"Is there an object at the {POSITIONS[cell]}?", "yes" if present else "no"
    if kind == "colour":
        item = rng.choice(shapes)
        return f"What colour is at the {POSITIONS[item.position]}?", item.colour
    if kind == "shape":
        item = rng.choice(shapes)
        return f"What shape is at the {POSITIONS[item.position]}?", item.shape
    if kind == "count":
        colour = rng.choice([s.colour for s in shapes] + list(COLOURS))
        count = sum(s.colour == colour for s in shapes)
        return f"How many {colour} objects are there?", NUMBER_WORDS[count]
    if kind == "existence":
        if rng.random() < 0.5:
            item = rng.choice(shapes)
            colour, shape = item.colour, item.shape
        else:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        present = any(s.colour == colour and s.shape == shape for s in shapes)
        return f"Is there a {colour} {shape}?", "yes" if present else "no"
    raise ValueError(f"Unknown question type {kind!r}; known: {sorted(QUESTION_MIX)}.")


def write_dataset(
    output_dir: str,
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int = 0,
    questions_per_image: int = 2,
) -> dict:
    """Write images and LLaVA-format files under `output_dir`:

    - `captions.json`: stage-1 samples, one caption per training image;
    - `instruct.json`: stage-2 samples, `questions_per_image` per training image, question types
      drawn with `QUESTION_MIX`, each followed by the short-answer suffix;
    - `val_questions.jsonl`: held-out questions in LLaVA's question-file schema
      (`question_id`, `image`, `text`, plus `answer` and `question_type`), balanced by type, on
      `num_val` fresh images.

    Returns `{name: path}`.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    kinds, weights = list(QUESTION_MIX), list(QUESTION_MIX.values())
    captions, instruct, val = [], [], []
    for index in range(num_train + num_val):
        shapes = random_scene(rng)
        name = f"images/{index:06d}.png"
        draw_scene(shapes, image_size, rng).save(os.path.join(output_dir, name))
        if index < num_train:
            captions.append(_sample(f"cap-{index}", name, "Describe the image.", caption(shapes)))
            for number in range(questions_per_image):
                question, answer = ask(shapes, rng.choices(kinds, weights)[0], rng)
                prompt = f"{question}\n{SHORT_ANSWER}"
                instruct.append(_sample(f"qa-{index}-{number}", name, prompt, answer))
        else:
            kind = kinds[index % len(kinds)]
            question, answer = ask(shapes, kind, rng)
            val.append(
                {
                    "question_id": f"val-{index}",
                    "image": name,
                    "text": f"{question}\n{SHORT_ANSWER}",
                    "answer": answer,
                    "question_type": kind,
                }
            )
    paths = {
        name: os.path.join(output_dir, name)
        for name in ("captions.json", "instruct.json", "val_questions.jsonl")
    }
    for name, data in (("captions.json", captions), ("instruct.json", instruct)):
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(data, f)
    with open(paths["val_questions.jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(question) + "\n" for question in val)
    return {
        "captions": paths["captions.json"],
        "instruct": paths["instruct.json"],
        "val_questions": paths["val_questions.jsonl"],
    }


def _sample(sample_id: str, image: str, question: str, answer: str) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }
