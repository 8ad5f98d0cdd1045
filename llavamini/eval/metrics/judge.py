"""An LLM judge for open-ended video QA (and MMBench's fallback matcher), through any
OpenAI-compatible chat endpoint.

The judge reads a question, the correct answer and a prediction, and replies with a Python-style
dict `{'pred': 'yes' | 'no', 'score': 0..5}` (the Video-ChatGPT protocol the paper used with
gpt-3.5-turbo). Replies are read as the reference's `llavamini/eval/video/eval_video_qa.py`
reads them (`REFERENCE_VIDEO_QA`): the whole reply must be a Python literal (`ast.literal_eval`),
else it is asked again; `judgment_outcome` then turns it into the reference's tallies. The
messages are our own wording (`VideoQAPrompt`); `--judge-prompt-file` supplies others, e.g. the
reference's own, for a parity run. Settings come from flags or the environment:

- `LLAVAMINI_JUDGE_BASE_URL` (else `OPENAI_BASE_URL`): e.g. `https://api.openai.com/v1` or a
  local vLLM server `http://127.0.0.1:8000/v1`; the client POSTs to `<base>/chat/completions`.
- `LLAVAMINI_JUDGE_MODEL`: the model name, required (scores depend on the judge; it is recorded
  with every result).
- `LLAVAMINI_JUDGE_API_KEY` (else `OPENAI_API_KEY`): sent as a Bearer token when set.

Every kept reply is cached on disk, one JSON file per request, named by the SHA-256 of the
model, the messages, the temperature and the prompt version, so rerunning a scoring costs no
request (`Judge.ask` serves any prompt and reply reader; `Judge.judge` is the video-QA one).
Requests run in parallel threads; timeouts, HTTP 429/5xx and malformed replies are retried with
exponential back-off; an endpoint that refuses connections stops everything with a
`JudgeUnreachableError`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from llavamini.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

PROMPT_VERSION = "llavamini-video-qa-judge-v2"
"""Names the default judge messages and the reply reading; recorded with every result and
part of every cache key."""

CONNECT_RETRIES = 2
"""Attempts after a refused connection before the endpoint is declared unreachable."""

REFERENCE_VIDEO_QA = {
    "repository": "ictnlp/LLaVA-Mini",
    "file": "llavamini/eval/video/eval_video_qa.py",
    "commit": "47da1137f7b503be685ab5faa9f64a88b102e786",
}


@dataclass(frozen=True)
class VideoQAPrompt:
    """The judge's messages: `system`, and `user` with `{question}`, `{answer}` and
    `{prediction}` fields; `version` names them in results and cache keys."""

    system: str = (
        "You grade answers to questions about videos. You receive a question, the correct "
        "answer and a predicted answer. Decide whether the prediction means the same as the "
        "correct answer. Judge the meaning, not the wording: synonyms and paraphrases match; a "
        "wrong or contradicting detail, or an answer that misses the point, does not."
    )
    user: str = (
        "Question: {question}\n"
        "Correct answer: {answer}\n"
        "Predicted answer: {prediction}\n\n"
        "Reply with one Python dictionary and nothing else, for example "
        "{{'pred': 'yes', 'score': 4}}. 'pred' is 'yes' if the prediction matches the correct "
        "answer and 'no' otherwise; 'score' is an integer from 0 (no match) to 5 (a perfect "
        "match)."
    )
    version: str = PROMPT_VERSION


def load_video_qa_prompt(path: str | None) -> VideoQAPrompt:
    """`VideoQAPrompt` from a JSON file with `system` and `user` (the default when None)."""
    if path is None:
        return VideoQAPrompt()
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    missing = [key for key in ("system", "user") if key not in data]
    if missing:
        raise ValueError(f"{path}: a video-QA judge prompt file needs the keys {missing}.")
    return VideoQAPrompt(data["system"], data["user"], prompt_file_version(data))


def prompt_file_version(data: dict) -> str:
    """The version naming a judge prompt read from a JSON file: a digest of its content."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()
    return f"file:{digest[:16]}"


def judge_settings(options: dict, output_prefix: str) -> dict:
    """A scorer's `config_from_env` keywords (cache: `<output_prefix>.judge_cache` unless set)."""
    settings = dict(options.get("judge", {}))
    settings.setdefault("cache_dir", output_prefix + ".judge_cache")
    return settings


class JudgeError(RuntimeError):
    """A judgment could not be obtained."""


class JudgeUnreachableError(JudgeError):
    """The endpoint refuses connections or cannot be resolved: nothing can be judged."""


class MalformedReplyError(JudgeError):
    """The endpoint answered, but not with a usable judgment."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask the judge.

    Attributes:
        base_url: OpenAI-compatible API root (the part before `/chat/completions`).
        model: judge model name, recorded with every result.
        api_key: Bearer token, or None for endpoints without authentication.
        cache_dir: folder of cached judgments.
        workers: parallel requests.
        retries: attempts per judgment after the first one.
        timeout_s: seconds per request.
        backoff_s: first wait between attempts (doubled each time).
        temperature: sampling temperature of the judge (0: greedy, as the paper).
    """

    base_url: str
    model: str
    api_key: str | None
    cache_dir: str
    workers: int = 8
    retries: int = 5
    timeout_s: float = 60.0
    backoff_s: float = 2.0
    temperature: float = 0.0


def config_from_env(
    cache_dir: str,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    **options,
) -> JudgeConfig:
    """A `JudgeConfig` from explicit values, else the environment; raises naming what is unset."""
    env = os.environ
    base_url = base_url or env.get("LLAVAMINI_JUDGE_BASE_URL") or env.get("OPENAI_BASE_URL")
    model = model or env.get("LLAVAMINI_JUDGE_MODEL")
    api_key = api_key or env.get("LLAVAMINI_JUDGE_API_KEY") or env.get("OPENAI_API_KEY")
    if not base_url:
        raise JudgeError(
            "No judge endpoint: set LLAVAMINI_JUDGE_BASE_URL (e.g. https://api.openai.com/v1 or "
            "http://127.0.0.1:8000/v1) or pass --judge-base-url."
        )
    if not model:
        raise JudgeError(
            "No judge model: set LLAVAMINI_JUDGE_MODEL (the paper used gpt-3.5-turbo; scores "
            "change with the judge, so it is always named explicitly) or pass --judge-model."
        )
    return JudgeConfig(base_url.rstrip("/"), model, api_key or None, cache_dir, **options)


def build_messages(
    question: str, answer: str, prediction: str, prompt: VideoQAPrompt | None = None
) -> list[dict]:
    """The chat messages of one judgment."""
    prompt = prompt or VideoQAPrompt()
    user = prompt.user.format(question=question, answer=answer, prediction=prediction)
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]


def cache_key(model: str, messages: list[dict], temperature: float, version: str = "") -> str:
    """SHA-256 of everything that determines a cached value (`version`: how replies are read)."""
    blob = json.dumps(
        {"model": model, "messages": messages, "temperature": temperature, "version": version},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def parse_judgment(reply: str) -> str:
    """The reply, if the reference would keep it: it must be one Python literal as a whole
    (`ast.literal_eval`; no prose around it). Raises `MalformedReplyError` otherwise."""
    try:
        ast.literal_eval(reply)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
        raise MalformedReplyError(f"not a Python literal: {reply[:200]!r}") from error
    return reply


def judgment_outcome(reply: str) -> dict:
    """What the reference's tally takes from a kept reply: `score` = int(reply['score']) and
    `pred` = "yes" if "yes" is in the lower-cased reply['pred'], else "no" if "no" is, else
    None. Where the reference's tally fails part-way (no such key, not a number, not a
    dict), the parts it had not reached yet are None; the reply still counts towards the
    mean score's denominator, as there."""
    value = ast.literal_eval(reply)
    outcome: dict = {"pred": None, "score": None}
    try:
        outcome["score"] = int(value["score"])
        pred = value["pred"].lower()
    except (TypeError, KeyError, IndexError, ValueError, AttributeError, OverflowError):
        return outcome
    if "yes" in pred:
        outcome["pred"] = "yes"
    elif "no" in pred:
        outcome["pred"] = "no"
    return outcome


class JudgmentCache:
    """One JSON file per judgment under `root/<key[:2]>/<key>.json`, written atomically."""

    def __init__(self, root: str):
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], key + ".json")

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as file:
            return json.load(file)

    def put(self, key: str, record: dict) -> None:
        # A killed process never leaves half a cache entry behind (a partial entry would be read
        # back as a broken judgment, or fail the whole scoring).
        with atomic_write(self._path(key)) as file:
            json.dump(record, file, ensure_ascii=False)


class Judge:
    """Asks the judge (or its cache) about (question, answer, prediction) triples."""

    def __init__(
        self,
        config: JudgeConfig,
        client: httpx.Client | None = None,
        prompt: VideoQAPrompt | None = None,
    ):
        self.config = config
        self.prompt = prompt or VideoQAPrompt()
        self.cache = JudgmentCache(config.cache_dir)
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.client = client or httpx.Client(timeout=config.timeout_s, headers=headers)
        self.requests_sent = 0
        self.cache_hits = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def summary(self, prompt_version: str) -> dict:
        """Who judged and how often it was asked, for a score's JSON."""
        config = self.config
        return {
            "model": config.model,
            "base_url": config.base_url,
            "temperature": config.temperature,
            "prompt_version": prompt_version,
            "requests_sent": self.requests_sent,
            "cache_hits": self.cache_hits,
            "cache_dir": config.cache_dir,
        }

    def _post(self, messages: list[dict]) -> str:
        """One request -> the reply's text; raises httpx errors or `MalformedReplyError`."""
        url = f"{self.config.base_url}/chat/completions"
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
        }
        with self._lock:
            self.requests_sent += 1
        response = self.client.post(url, json=body)
        if response.status_code == 429 or response.status_code >= 500:
            raise httpx.HTTPStatusError(
                f"HTTP {response.status_code}", request=response.request, response=response
            )
        if response.status_code != 200:
            # 401, 404, 400: retrying will not help; say what the server said.
            raise JudgeError(
                f"Judge endpoint {url} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            return response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise MalformedReplyError(
                f"not an OpenAI chat completion: {response.text[:200]!r}"
            ) from error

    def judge(self, question: str, answer: str, prediction: str) -> dict:
        """`judgment_outcome` of one video-QA triple, from the cache or the endpoint (see
        `ask` for the errors)."""
        messages = build_messages(question, answer, prediction, self.prompt)
        reply = self.ask(messages, parse_judgment, prompt_version=self.prompt.version)
        return judgment_outcome(reply)

    def ask(
        self,
        messages: list[dict],
        parse: Callable[[str], Any],
        prompt_version: str = PROMPT_VERSION,
    ) -> Any:
        """`parse(reply)` for one request, from the cache or the endpoint.

        Args:
            messages: the chat messages.
            parse: reply text -> the value to return and cache; raises `MalformedReplyError`
                for a reply worth retrying.
            prompt_version: names the prompt, recorded in the cache entry.

        Raises:
            JudgeUnreachableError: the endpoint refuses connections (after the retries).
            JudgeError: every attempt timed out, failed or was malformed.
        """
        key = cache_key(self.config.model, messages, self.config.temperature, prompt_version)
        cached = self.cache.get(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return cached["judgment"]
        last_error: Exception | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self._post(messages)
                judgment = parse(reply)
            except httpx.ConnectError as error:
                last_error = error
                # A refused connection rarely heals in seconds: give up early, loudly.
                if attempt >= min(self.config.retries, CONNECT_RETRIES):
                    break
                continue
            except (httpx.TimeoutException, httpx.HTTPStatusError, MalformedReplyError) as error:
                last_error = error
                logger.debug("Judge attempt %d failed: %s", attempt + 1, error)
                continue
            except httpx.TransportError as error:
                last_error = error
                continue
            record = {"model": self.config.model, "prompt_version": prompt_version}
            record.update(messages=messages, reply=reply, judgment=judgment)
            self.cache.put(key, record)
            return judgment
        if isinstance(last_error, httpx.ConnectError):
            raise JudgeUnreachableError(
                f"Cannot reach the judge endpoint {self.config.base_url} "
                f"({type(last_error).__name__}: {last_error}). Check LLAVAMINI_JUDGE_BASE_URL "
                f"and that the server is up."
            ) from last_error
        raise JudgeError(
            f"No usable judgment after {self.config.retries + 1} attempts: "
            f"{type(last_error).__name__}: {last_error}"
        ) from last_error

    def judge_many(
        self,
        items: Sequence[tuple[str, str, str]],
        on_done: Callable[[], None] | None = None,
    ) -> list[dict | JudgeError]:
        """Judge `(question, answer, prediction)` triples in parallel, in order.

        A triple that fails is returned as its `JudgeError`; an unreachable endpoint raises
        `JudgeUnreachableError` at once (the remaining requests are cancelled).
        """
        results: list[dict | JudgeError | None] = [None] * len(items)

        def task(index: int) -> None:
            try:
                results[index] = self.judge(*items[index])
            except JudgeUnreachableError:
                raise
            except JudgeError as error:
                results[index] = error
            if on_done is not None:
                on_done()

        with ThreadPoolExecutor(max_workers=max(1, self.config.workers)) as pool:
            futures = [pool.submit(task, i) for i in range(len(items))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise future.exception()
        return results
