"""A checkpoint used the README's way from a plain Python process on a CPU: load time, resident
memory, time to first token and decode speed for one image and a question.

    python scripts/bench/user_path_cpu.py CKPT --quantization 4bit --image photo.jpg

Nothing is set up beforehand (no `llavamini` command, no allocator setting): what a notebook or
a script of the user's gets. Time to first token is the median of `--repeats` warm-ish runs of
`generate(max_new_tokens=1)`; decode is timed between the steps of one generation of
`--new-tokens` tokens (from the first token's logits to the last's), not as the difference of two
generations, whose prefills' noise left it negative on a busy host.
Peak RSS is the process's `ru_maxrss` (it counts the checkpoint's file pages read while
loading); the RSS after loading is read from /proc/self/statm once the load returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import time

import torch
from transformers import LogitsProcessorList

from llavamini.model.loading import ModelSpec

logger = logging.getLogger("user_path_cpu")

QUESTION = (
    "Describe the picture in detail: the water, the sky, any buildings, boats or people, the "
    "colours, the time of day and the weather, and anything that seems unusual."
)


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--quantization", choices=("8bit", "4bit"), default=None)
    parser.add_argument("--image", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=9)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    start = time.perf_counter()
    loaded = ModelSpec(args.checkpoint, device="cpu", quantization=args.quantization).load()
    load_s = time.perf_counter() - start
    rss_loaded = rss_gib()
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "path": args.image}, {"type": "text", "text": QUESTION}],
        }
    ]
    inputs = loaded.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )

    def generate(tokens: int) -> tuple[float, list[float]]:
        """Seconds of one greedy generation of `tokens` tokens, and when each step's logits
        were ready."""
        steps = []

        def clock(input_ids, scores):
            steps.append(time.perf_counter())
            return scores

        begin = time.perf_counter()
        with torch.inference_mode():
            loaded.model.generate(
                **inputs,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )
        return time.perf_counter() - begin, steps

    first = [generate(1)[0] for _ in range(args.repeats)]
    ttft = statistics.median(first)
    steps = generate(args.new_tokens)[1]
    decode_ms = 1000 * (steps[-1] - steps[0]) / (len(steps) - 1)
    result = {
        "quantization": args.quantization,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "load_s": round(load_s, 1),
        "rss_after_load_gib": round(rss_loaded, 2),
        "ttft_s": [round(t, 1) for t in first],
        "ttft_median_s": round(ttft, 1),
        "decode_ms_per_token": round(decode_ms),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
    }
    logger.info("%s", json.dumps(result))


if __name__ == "__main__":
    main()
