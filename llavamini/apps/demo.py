"""`llavamini demo`: a tiny random LLaVA-Mini, saved and loaded like a release, answers.
`llavamini tiny-assets`: the tiny models and data the tiny training recipes read."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

from llavamini.apps.tiny import build_tiny_assets, build_tiny_checkpoint
from llavamini.errors import UsageError
from llavamini.inference import GenerationSettings, generate
from llavamini.model.loading import ModelSpec

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = os.path.join("playground", "examples", "extreme_ironing.jpg")


@dataclass(frozen=True)
class DemoOptions:
    """What the demo asks about, and where it writes the tiny checkpoint."""

    image: str = field(default=DEFAULT_IMAGE, metadata={"help": "image or video file"})
    question: str = "What is unusual about this image?"
    output_dir: str = os.path.join("outputs", "tiny-random")
    seed: int = field(default=0, metadata={"help": "random weights"})


def demo(
    options: DemoOptions = DemoOptions(),
    generation: GenerationSettings = GenerationSettings(max_new_tokens=16),
) -> str:
    """Build a tiny random LLaVA-Mini and answer a question about an image; returns the
    answer (noise: the weights are random)."""
    if not os.path.isfile(options.image):
        raise UsageError(f"--image {options.image!r} does not exist")
    start = time.perf_counter()
    logger.info("Building a tiny random LLaVA-Mini in %s", options.output_dir)
    build_tiny_checkpoint(options.output_dir, seed=options.seed)
    logger.info("Loading it with AutoModelForCausalLM and asking about %s", options.image)
    loaded = ModelSpec(options.output_dir, device="cpu").load()
    image = {"type": "image", "path": options.image}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": options.question}]}]
    inputs = loaded.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    answer = generate(loaded, inputs, generation)[0]
    logger.info(
        "Done in %.1f s. The weights are random, so the answer is noise: this shows the pipeline "
        "(preprocessing, CLIP, compression to one vision token, pre-fusion, generation), not "
        "a trained model.",
        time.perf_counter() - start,
    )
    sys.stdout.write(f"Q: {options.question}\nA: {answer}\n")
    return answer


@dataclass(frozen=True)
class TinyAssetsOptions:
    """Where the tiny assets go, their image size, split sizes and seed."""

    output_dir: str = os.path.join("playground", "data", "tiny")
    image_size: int = 56
    num_train: int = 64
    num_val: int = 16
    seed: int = 0


def tiny_assets(options: TinyAssetsOptions = TinyAssetsOptions()) -> dict[str, str]:
    """Write a tiny plain LLM, CLIP tower and synthetic data set; returns their paths."""
    paths = build_tiny_assets(
        options.output_dir, options.image_size, options.num_train, options.num_val, options.seed
    )
    for name, path in paths.items():
        logger.info("%s: %s", name, path)
    return paths
