"""Serving throughput of an OpenAI-compatible LLaVA-Mini server: requests/s and tokens/s at
several numbers of concurrent clients.

Works against `vllm serve CKPT` (the plug-in) and `llavamini serve --model-path CKPT` alike: each
client sends image questions (`/v1/chat/completions`, base64 PNGs) one after another; a level
of concurrency runs until `--requests-per-client` requests per client have been answered. Tokens
are the servers' own `usage.completion_tokens`. Prints one JSON line per level, e.g.

    python scripts/bench_serving.py --base-url http://127.0.0.1:8000/v1 --model CKPT \\
        --image playground/data/tiny/data/images/000000.png --concurrency 1 8 32

`--mix one-image two-image multi-turn` cycles each client through those request kinds (`KINDS`):
one image and a question; two images (the first two `--image` files, or one twice) and a
question; a three-turn chat with an image in turns 1 and 3.

Use a checkpoint whose answers run to `--max-tokens` (a randomly initialised tiny one does), or
tokens/s compares answers of different lengths.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import time

import httpx

logger = logging.getLogger("bench_serving")

QUESTIONS = [
    "What is unusual about this image?",
    "Describe the picture in detail.",
    "What colour is at the top left?",
    "How many shapes are there?",
]


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def one_image(urls: list[str], question: str) -> list[dict]:
    return [{"role": "user", "content": [_image_part(urls[0]), {"type": "text", "text": question}]}]


def two_images(urls: list[str], question: str) -> list[dict]:
    images = [_image_part(urls[0]), _image_part(urls[1 % len(urls)])]
    return [{"role": "user", "content": [*images, {"type": "text", "text": question}]}]


def multi_turn(urls: list[str], question: str) -> list[dict]:
    """Three user turns, images in the first and the third."""
    return [
        *one_image(urls, "Describe the picture."),
        {"role": "assistant", "content": "It shows a few shapes on a plain background."},
        {"role": "user", "content": "Which colour stands out?"},
        {"role": "assistant", "content": "The red one."},
        *one_image(urls[1 % len(urls) :], question),
    ]


KINDS = {"one-image": one_image, "two-image": two_images, "multi-turn": multi_turn}
"""Request kinds: `(image data URLs, question) -> messages`."""


async def client(
    http: httpx.AsyncClient, url: str, body: dict, count: int, offset: int
) -> tuple[int, int]:
    """`count` requests in a row, cycling through `body["mix"]` kinds and the questions ->
    (requests answered, completion tokens)."""
    answered = tokens = 0
    request = {k: v for k, v in body.items() if k not in ("mix", "urls")}
    for number in range(count):
        question = QUESTIONS[(offset + number) % len(QUESTIONS)]
        kind = body["mix"][(offset + number) % len(body["mix"])]
        messages = KINDS[kind](body["urls"], question)
        response = await http.post(url, json={**request, "messages": messages})
        response.raise_for_status()
        answered += 1
        tokens += response.json()["usage"]["completion_tokens"]
    return answered, tokens


async def level(args, body: dict, concurrency: int) -> dict:
    """One level of concurrency -> its measurements."""
    url = args.base_url.rstrip("/") + "/chat/completions"
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as http:
        await client(http, url, body, 1, 0)  # warm-up, not counted
        start = time.perf_counter()
        results = await asyncio.gather(
            *(client(http, url, body, args.requests_per_client, c) for c in range(concurrency))
        )
        seconds = time.perf_counter() - start
    requests = sum(r for r, _ in results)
    tokens = sum(t for _, t in results)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2),
        "mean_tokens": round(tokens / requests, 1),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument(
        "--image", required=True, nargs="+", help="PNG files sent with the questions (see --mix)"
    )
    parser.add_argument(
        "--mix", nargs="+", choices=list(KINDS), default=["one-image"],
        help="request kinds each client cycles through",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--label", default="", help="copied into each output line")
    args = parser.parse_args()
    urls = []
    for path in args.image:
        with open(path, "rb") as f:
            urls.append("data:image/png;base64," + base64.b64encode(f.read()).decode())
    body = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "mix": args.mix,
        "urls": urls,
    }
    for concurrency in args.concurrency:
        result = asyncio.run(level(args, body, concurrency))
        print(json.dumps({"label": args.label, "mix": args.mix, **result}), flush=True)


if __name__ == "__main__":
    main()
