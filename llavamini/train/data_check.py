"""`llavamini data check`: read a whole manifest and report every problem before training.

Every sample is checked as training would read it: media exist and decode, the conversation is
well formed, its labels can be built with the tokenizer and template, and it fits `--max-length`
(counting `--vision-tokens` per image or video frame). The report lists each bad sample and the
counts per problem; the exit status is 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

logger = logging.getLogger(__name__)


def add_parser(commands) -> None:
    data = commands.add_parser("data", help="data tools: check", allow_abbrev=False)
    tools = data.add_subparsers(dest="data_command", required=True)
    check = tools.add_parser(
        "check", help="report every bad sample of a manifest", allow_abbrev=False
    )
    check.add_argument("--data", nargs="+", required=True, help="JSON/JSONL/YAML files")
    check.add_argument("--image-folder", nargs="+", required=True, help="one per --data file")
    check.add_argument("--tokenizer", help="tokenizer folder (enables label and length checks)")
    check.add_argument("--version", default="llava_llama_3_1", help="conversation template")
    check.add_argument("--max-length", type=int, default=2048)
    check.add_argument(
        "--vision-tokens",
        type=int,
        default=1,
        help="LLM tokens per image or frame (1; 576 in stage 1)",
    )
    check.add_argument("--video-fps", type=float, default=1.0)
    check.add_argument("--video-max-frames", type=int, default=None)
    check.add_argument("--mixture-seed", type=int, default=1)
    check.set_defaults(func=run)


def check_record(record: dict, index: int, args, template, tokenizer) -> None:
    """Raise `BadSampleError` for the first problem of one record."""
    from llavamini.data import load_image, load_video
    from llavamini.data.dataset import (
        BadSampleError,
        check_length,
        conversation_messages,
        media_paths,
        prepare_text,
        sample_name,
    )

    name = sample_name(record, index)
    frames = 0
    for kind, path in media_paths(record):
        try:
            if kind == "video":
                frames += len(load_video(path, args.video_fps, args.video_max_frames))
            else:
                load_image(path)
                frames += 1
        except FileNotFoundError as error:
            raise BadSampleError(f"Sample {name}: {error}", "missing media") from error
        except (ValueError, OSError) as error:
            raise BadSampleError(f"Sample {name}: {error}", "undecodable media") from error
    num_visuals = len(media_paths(record))
    if tokenizer is None:
        try:
            conversation_messages(record, template, num_visuals)
        except ValueError as error:
            raise BadSampleError(f"Sample {name}: {error}", "malformed conversation") from error
        return
    input_ids, _ = prepare_text(record, name, template, tokenizer, num_visuals)
    check_length(name, len(input_ids) - num_visuals + frames * args.vision_tokens, args.max_length)


def run(args: argparse.Namespace) -> None:
    from llavamini.conversation import get_template
    from llavamini.data.dataset import PROBLEM_KINDS, BadSampleError
    from llavamini.data.mixture import load_records

    records = load_records(args.data, args.image_folder, args.mixture_seed)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        logger.info("No --tokenizer: label and length checks are skipped.")
    template = get_template(args.version)
    counts: Counter = Counter()
    out = sys.stdout
    for index, record in enumerate(records):
        try:
            check_record(record, index, args, template, tokenizer)
        except BadSampleError as error:
            counts[error.kind] += 1
            out.write(f"[{error.kind}] {error}\n")
    out.write(f"\n{len(records)} samples checked, {sum(counts.values())} bad\n")
    for kind in PROBLEM_KINDS:
        out.write(f"  {kind}: {counts[kind]}\n")
    if counts:
        raise SystemExit(1)
