"""`llavamini` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

logger = logging.getLogger("llavamini")

DEFAULT_IMAGE = os.path.join("playground", "examples", "extreme_ironing.jpg")


def answer_question(model_path: str, image_path: str, question: str, max_new_tokens: int) -> str:
    """Load `model_path`, ask `question` about the image with the `llava_llama_3_1` template,
    decode greedily, and return the answer."""
    from PIL import Image

    from llavamini.conversation import get_template, render
    from llavamini.data import process_images, tokenizer_image_token
    from llavamini.model.loading import load_pretrained

    loaded = load_pretrained(model_path)
    template = get_template("llava_llama_3_1")
    prompt = render(template, [("user", "<image>\n" + question)])
    input_ids = tokenizer_image_token(prompt, loaded.tokenizer, return_tensors="pt")[None]
    with Image.open(image_path) as image:
        images = process_images([image], loaded.image_processor, loaded.model.config)
    stop_ids = loaded.tokenizer.convert_tokens_to_ids(list(template.stop_strings))
    output = loaded.model.generate(
        inputs=input_ids,
        images=images.to(loaded.model.dtype),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return loaded.tokenizer.decode(output[0], skip_special_tokens=True).strip()


def run_demo(args: argparse.Namespace) -> None:
    """Build a tiny random LLaVA-Mini, load it back like a released one, and ask it a question."""
    from llavamini.tiny import build_tiny_checkpoint

    if not os.path.isfile(args.image):
        raise SystemExit(f"error: --image {args.image!r} does not exist")
    start = time.perf_counter()
    logger.info("Building a tiny random LLaVA-Mini in %s", args.output_dir)
    build_tiny_checkpoint(args.output_dir, seed=args.seed)
    logger.info("Loading it with AutoModelForCausalLM and asking about %s", args.image)
    answer = answer_question(args.output_dir, args.image, args.question, args.max_new_tokens)
    logger.info(
        "Done in %.1f s. The weights are random, so the answer is noise: this shows the pipeline "
        "(preprocessing, CLIP, compression to one vision token, pre-fusion, generation), not "
        "a trained model.",
        time.perf_counter() - start,
    )
    sys.stdout.write(f"Q: {args.question}\nA: {answer}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavamini", description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="build a tiny random LLaVA-Mini and answer a question about an image (no download)",
        allow_abbrev=False,
    )
    demo.add_argument("--image", default=DEFAULT_IMAGE, help="image file (default: %(default)s)")
    demo.add_argument("--question", default="What is unusual about this image?")
    demo.add_argument("--output-dir", default=os.path.join("outputs", "tiny-random"))
    demo.add_argument("--max-new-tokens", type=int, default=16)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
