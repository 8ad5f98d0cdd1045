"""`llavamini data check`: read a whole manifest and report every problem before training.

Every sample is checked as training would read it: media exist and decode, the conversation is
well formed, its labels can be built with the tokenizer and template, and it fits `--max-length`
(counting `--vision-tokens` per image or video frame). Videos are sampled as training samples
them: `--video-fps`, capped at `--video-max-frames` (`MAX_VIDEO_FRAMES` by default, training's
default), so a 10-hour video at 1 fps holds the cap's frames in memory, not 36000. The report
lists each bad sample and the counts per problem, and how many videos reached the frame cap;
the exit status is 1 when anything is wrong.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

from transformers import AutoTokenizer

from llavamini.conversation import get_template
from llavamini.data import dataset, load_image, load_video
from llavamini.data.dataset import BadSampleError
from llavamini.data.mixture import load_records
from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.errors import ChecksFailed, UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOptions:
    """The manifest to check, and the training settings it is checked against.

    Attributes:
        data: JSON/JSONL/YAML manifests.
        image_folder: one media folder per manifest.
        tokenizer: tokenizer folder (None: label and length checks are skipped).
        version: conversation template.
        max_length: longest sample in tokens, `vision_tokens` per image or video frame.
        video_fps, video_max_frames: video frame sampling, as training's (None: no cap, every
            sampled frame decoded).
        mixture_seed: the seed of mixture sampling.
    """

    data: tuple[str, ...] = field(metadata={"help": "JSON/JSONL/YAML files"})
    image_folder: tuple[str, ...] = field(metadata={"help": "one per --data file"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer folder (enables label and length checks)"}
    )
    version: str = field(default="llava_llama_3_1", metadata={"help": "conversation template"})
    max_length: int = 2048
    vision_tokens: int = field(
        default=1, metadata={"help": "LLM tokens per image or frame (1; 576 in stage 1)"}
    )
    video_fps: float = field(default=1.0, metadata={"help": "video frames per second sampled"})
    video_max_frames: int | None = field(
        default=MAX_VIDEO_FRAMES,
        metadata={"help": f"cap on frames per video ({MAX_VIDEO_FRAMES}: training's default)"},
    )
    mixture_seed: int = 1


def check_record(record: dict, index: int, options: CheckOptions, template, tokenizer) -> int:
    """Raise `BadSampleError` for the first problem of one record; else return how many of its
    videos reached `options.video_max_frames` (their frames beyond it are not decoded)."""
    name = dataset.sample_name(record, index)
    frames = capped = 0
    media = dataset.sample_media(record, name)
    for kind, path in media:
        try:
            if kind == "video":
                count = len(load_video(path, options.video_fps, options.video_max_frames))
                frames += count
                capped += count == options.video_max_frames
            else:
                load_image(path)
                frames += 1
        except FileNotFoundError as error:
            raise BadSampleError(f"Sample {name}: {error}", "missing media") from error
        except (ValueError, OSError) as error:
            raise BadSampleError(f"Sample {name}: {error}", "undecodable media") from error
    num_visuals = len(media)
    if tokenizer is None:
        try:
            dataset.conversation_messages(record, template, num_visuals)
        except ValueError as error:
            raise BadSampleError(f"Sample {name}: {error}", "malformed conversation") from error
        return capped
    input_ids, _ = dataset.prepare_text(record, name, template, tokenizer, num_visuals)
    length = len(input_ids) - num_visuals + frames * options.vision_tokens
    dataset.check_length(name, length, options.max_length)
    return capped


def check(options: CheckOptions) -> Counter:
    """Report every bad sample of a manifest on stdout; returns the count per problem, or raises
    `ChecksFailed` (the command exits with status 1) when there is any. A manifest that cannot
    be read at all raises `UsageError`."""
    try:
        records = load_records(list(options.data), list(options.image_folder), options.mixture_seed)
    except ValueError as error:
        raise UsageError(f"llavamini data check: {error}") from error
    tokenizer = None
    if options.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)
    else:
        logger.info("No --tokenizer: label and length checks are skipped.")
    template = get_template(options.version)
    counts: Counter = Counter()
    capped = 0
    out = sys.stdout
    for index, record in enumerate(records):
        try:
            capped += check_record(record, index, options, template, tokenizer)
        except BadSampleError as error:
            counts[error.kind] += 1
            out.write(f"[{error.kind}] {error}\n")
    out.write(f"\n{len(records)} samples checked, {sum(counts.values())} bad\n")
    if capped:
        out.write(
            f"{capped} video(s) at the frame cap: {options.video_max_frames} frames sampled "
            f"from each (--video-max-frames; training's --video_max_frames)\n"
        )
    for kind in dataset.PROBLEM_KINDS:
        out.write(f"  {kind}: {counts[kind]}\n")
    if counts:
        raise ChecksFailed(f"{sum(counts.values())} of {len(records)} samples are bad")
    return counts


VERBS = {"check": check}
"""The `llavamini data` sub-commands."""
