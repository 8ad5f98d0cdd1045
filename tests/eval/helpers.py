"""Small writers for hand-made benchmark files in the real formats."""

import base64
import io
import json

from PIL import Image

from llavamini.eval.answers import answer_key


def make_image(path, size=(40, 30), colour=(200, 30, 30)):
    """Write a small solid-colour image; returns its path as str."""
    Image.new("RGB", size, colour).save(path)
    return str(path)


def image_base64(size=(24, 24), colour=(20, 120, 220)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, ensure_ascii=False)
    return str(path)


def answer(question_id, text, prompt="q", **extra):
    """A hand-written answer record in LLaVA's schema."""
    record = {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": f"id-{answer_key(question_id, prompt)}",
        "model_id": "hand-written",
        "metadata": {},
    }
    record.update(extra)
    return record
