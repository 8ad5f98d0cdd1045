"""`llavamini demo`: a tiny random LLaVA-Mini, saved and loaded like a release, answers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = os.path.join("playground", "examples", "extreme_ironing.jpg")


def add_parser(commands) -> None:
    assets = commands.add_parser(
        "tiny-assets",
        help="write a tiny plain LLM, CLIP tower and synthetic data set (configs/train/tiny*.yaml)",
        allow_abbrev=False,
    )
    assets.add_argument("--output-dir", default=os.path.join("playground", "data", "tiny"))
    assets.add_argument("--image-size", type=int, default=56)
    assets.add_argument("--num-train", type=int, default=64)
    assets.add_argument("--num-val", type=int, default=16)
    assets.add_argument("--seed", type=int, default=0)
    assets.set_defaults(func=run_tiny_assets)
    parser = commands.add_parser(
        "demo",
        help="build a tiny random LLaVA-Mini and answer a question about an image (no download)",
        allow_abbrev=False,
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image or video file")
    parser.add_argument("--question", default="What is unusual about this image?")
    parser.add_argument("--output-dir", default=os.path.join("outputs", "tiny-random"))
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from llavamini.apps.tiny import build_tiny_checkpoint
    from llavamini.inference import GenerationSettings, generate
    from llavamini.model.loading import load_pretrained

    if not os.path.isfile(args.image):
        raise SystemExit(f"error: --image {args.image!r} does not exist")
    start = time.perf_counter()
    logger.info("Building a tiny random LLaVA-Mini in %s", args.output_dir)
    build_tiny_checkpoint(args.output_dir, seed=args.seed)
    logger.info("Loading it with AutoModelForCausalLM and asking about %s", args.image)
    loaded = load_pretrained(args.output_dir)
    image = {"type": "image", "path": args.image}
    messages = [{"role": "user", "content": [image, {"type": "text", "text": args.question}]}]
    inputs = loaded.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    answer = generate(loaded, inputs, settings)[0]
    logger.info(
        "Done in %.1f s. The weights are random, so the answer is noise: this shows the pipeline "
        "(preprocessing, CLIP, compression to one vision token, pre-fusion, generation), not "
        "a trained model.",
        time.perf_counter() - start,
    )
    sys.stdout.write(f"Q: {args.question}\nA: {answer}\n")


def run_tiny_assets(args: argparse.Namespace) -> None:
    from llavamini.apps.tiny import build_tiny_assets

    paths = build_tiny_assets(
        args.output_dir, args.image_size, args.num_train, args.num_val, args.seed
    )
    for name, path in paths.items():
        logger.info("%s: %s", name, path)
