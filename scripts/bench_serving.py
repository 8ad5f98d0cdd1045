"""Serving throughput of an OpenAI-compatible LLaVA-Mini server: requests/s and tokens/s at
several numbers of concurrent clients.

Works against `vllm serve CKPT` (the plug-in) and `llavamini serve --model-path CKPT` alike: each
client sends image questions (`/v1/chat/completions`, a base64 PNG) one after another; a level
of concurrency runs until `--requests-per-client` requests per client have been answered. Tokens
are the servers' own `usage.completion_tokens`. Prints one JSON line per level, e.g.

    python scripts/bench_serving.py --base-url http://127.0.0.1:8000/v1 --model CKPT \\
        --image playground/data/tiny/data/images/000000.png --concurrency 1 8 32

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


async def client(
    http: httpx.AsyncClient, url: str, body: dict, count: int, offset: int
) -> tuple[int, int]:
    """`count` requests in a row -> (requests answered, completion tokens)."""
    answered = tokens = 0
    for number in range(count):
        question = QUESTIONS[(offset + number) % len(QUESTIONS)]
        messages = [dict(body["messages"][0])]
        messages[0]["content"] = [*messages[0]["content"][:1], {"type": "text", "text": question}]
        response = await http.post(url, json={**body, "messages": messages})
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
    parser.add_argument("--image", required=True, help="a PNG file sent with every question")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--label", default="", help="copied into each output line")
    args = parser.parse_args()
    with open(args.image, "rb") as f:
        data_url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": QUESTIONS[0]},
        ]}],  # fmt: skip
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
    }
    for concurrency in args.concurrency:
        result = asyncio.run(level(args, body, concurrency))
        print(json.dumps({"label": args.label, **result}), flush=True)


if __name__ == "__main__":
    main()
