"""The LLM judge against a fake OpenAI-compatible server on loopback, and video-QA scoring."""

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llavamini.eval.cli import build_parser
from llavamini.eval.metrics.judge import (
    Judge,
    JudgeConfig,
    JudgeError,
    JudgeUnreachableError,
    MalformedReplyError,
    config_from_env,
    judgment_outcome,
    parse_judgment,
)
from tests.eval.helpers import answer, write_json, write_jsonl

MODEL = "fake-judge-1"


class FakeJudgeServer:
    """`POST /v1/chat/completions` on 127.0.0.1, replying by a rule on the prediction text.

    A prediction that contains the correct answer gets `{'pred': 'yes', 'score': 4}`, else
    `{'pred': 'no', 'score': 1}`. Markers in the prediction script misbehaviour: SLOW (the first
    request sleeps past the client's timeout), GARBAGE (the first reply is prose), ALWAYSBAD
    (every reply is prose), BUSY (the first reply is HTTP 503).
    """

    def __init__(self, delay_s: float = 4.0):
        self.requests: list[dict] = []
        self.delay_s = delay_s
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                status, content = server.reply(body)
                payload = json.dumps({"choices": [{"message": {"content": content}}]})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def seen(self, marker: str) -> int:
        with self._lock:
            return sum(marker in r["messages"][1]["content"] for r in self.requests)

    def reply(self, body):
        user = body["messages"][1]["content"]
        answer_text = re.search(r"Correct answer: (.*)\n", user).group(1)
        prediction = re.search(r"Predicted answer: (.*)\n", user).group(1)
        first = self.seen(prediction) == 1
        if "SLOW" in prediction and first:
            time.sleep(self.delay_s)
        if "BUSY" in prediction and first:
            return 503, "busy"
        if "ALWAYSBAD" in prediction or ("GARBAGE" in prediction and first):
            return 200, "I think the prediction is quite good."
        if answer_text.lower() in prediction.lower():
            return 200, "{'pred': 'yes', 'score': 4}"
        return 200, "{'pred': 'no', 'score': 1}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def judge_server():
    server = FakeJudgeServer()
    yield server
    server.close()


def _config(url, tmp_path, model=MODEL, **overrides):
    options = dict(workers=4, retries=3, timeout_s=2.0, backoff_s=0.01)
    options.update(overrides)
    return JudgeConfig(url, model, "secret", str(tmp_path / "cache"), **options)


def test_replies_are_read_as_the_reference_reads_them():
    """Kept only when the whole reply is a Python literal; then tallied field by field."""
    for bad in ("yes, 4", 'Result: {"pred": "No", "score": "2"}.', "{'pred': 'yes',"):
        with pytest.raises(MalformedReplyError):
            parse_judgment(bad)
    cases = {
        "{'pred': 'yes', 'score': 5}": {"pred": "yes", "score": 5},
        ' {"pred": "No", "score": "2"}': {"pred": "no", "score": 2},
        "{'pred': 'Yes.', 'score': 4.8}": {"pred": "yes", "score": 4},
        "{'pred': 'not sure', 'score': 3}": {"pred": "no", "score": 3},  # "no" in "not"
        "{'pred': 'maybe', 'score': 9}": {"pred": None, "score": 9},
        "{'pred': 'yes', 'score': 'high'}": {"pred": None, "score": None},
        "{'score': 2}": {"pred": None, "score": 2},
        "[1, 2]": {"pred": None, "score": None},
    }
    for reply, outcome in cases.items():
        assert judgment_outcome(parse_judgment(reply)) == outcome, reply


def test_judge_retries_timeouts_busy_and_malformed_replies(judge_server, tmp_path):
    judge = Judge(_config(judge_server.url, tmp_path))
    items = [
        ("what is the man doing?", "riding", "The man is riding a horse SLOW."),
        ("what is it?", "dog", "It is a dog GARBAGE."),
        ("who sings?", "woman", "A man sings BUSY."),
    ]
    results = judge.judge_many(items)
    judge.close()
    assert results == [
        {"pred": "yes", "score": 4},
        {"pred": "yes", "score": 4},
        {"pred": "no", "score": 1},
    ]
    for marker in ("SLOW", "GARBAGE", "BUSY"):
        assert judge_server.seen(marker) == 2  # one failed attempt, one retry
    assert judge_server.requests[0]["model"] == MODEL
    assert judge_server.requests[0]["temperature"] == 0.0


def test_judgments_are_cached_on_disk(judge_server, tmp_path):
    items = [("q?", "cat", "a cat"), ("q2?", "dog", "a fish")]
    first = Judge(_config(judge_server.url, tmp_path))
    assert first.judge_many(items) == [{"pred": "yes", "score": 4}, {"pred": "no", "score": 1}]
    assert first.requests_sent == 2
    again = Judge(_config(judge_server.url, tmp_path))
    assert again.judge_many(items) == [{"pred": "yes", "score": 4}, {"pred": "no", "score": 1}]
    assert again.requests_sent == 0 and again.cache_hits == 2
    other_model = Judge(_config(judge_server.url, tmp_path, model="another-judge"))
    other_model.judge_many(items[:1])
    assert other_model.requests_sent == 1  # the judge model is part of the cache key


def test_a_reply_that_stays_malformed_is_reported_not_cached(judge_server, tmp_path):
    judge = Judge(_config(judge_server.url, tmp_path, retries=2))
    results = judge.judge_many([("q?", "cat", "cat ALWAYSBAD"), ("q?", "cat", "a cat")])
    assert isinstance(results[0], JudgeError) and "3 attempts" in str(results[0])
    assert results[1] == {"pred": "yes", "score": 4}
    assert judge_server.seen("ALWAYSBAD") == 3
    assert Judge(_config(judge_server.url, tmp_path)).cache.get("nothing") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_fails_fast_with_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    judge = Judge(_config(url, tmp_path, retries=5))
    start = time.monotonic()
    with pytest.raises(JudgeUnreachableError, match=re.escape(url)):
        judge.judge_many([("q?", "a", "b")] * 3)
    assert time.monotonic() - start < 5


def test_missing_judge_settings_are_named(monkeypatch, tmp_path):
    for name in ("LLAVAMINI_JUDGE_BASE_URL", "OPENAI_BASE_URL", "LLAVAMINI_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(JudgeError, match="LLAVAMINI_JUDGE_BASE_URL"):
        config_from_env(str(tmp_path))
    monkeypatch.setenv("LLAVAMINI_JUDGE_BASE_URL", "http://127.0.0.1:1/v1/")
    with pytest.raises(JudgeError, match="LLAVAMINI_JUDGE_MODEL"):
        config_from_env(str(tmp_path))
    monkeypatch.setenv("LLAVAMINI_JUDGE_MODEL", MODEL)
    config = config_from_env(str(tmp_path))
    assert config.base_url == "http://127.0.0.1:1/v1" and config.model == MODEL


def _msvd_files(tmp_path):
    folder = tmp_path / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    folder.mkdir(parents=True)
    questions = [
        {"video_name": "vid1", "question": "what is the man riding?", "question_id": "v_0"},
        {"video_name": "vid1", "question": "who is riding?", "question_id": "v_1"},
        {"video_name": "vid2", "question": "what is the dog doing?", "question_id": "v_2"},
        {"video_name": "vid3", "question": "what is sliced?", "question_id": "v_3"},
    ]
    gold = [{"answer": "horse"}, {"answer": "boy"}, {"answer": "running"}, {"answer": "onion"}]
    write_json(folder / "test_q.json", questions)
    write_json(folder / "test_a.json", gold)
    answers = [
        answer("v_0", "The man is riding a horse SLOW.", questions[0]["question"]),
        answer("v_1", "A woman is riding GARBAGE.", questions[1]["question"]),
        answer("v_2", "The dog is running.", questions[2]["question"]),
    ]  # v_3 unanswered: not judged, not counted
    return write_jsonl(folder / "answers.jsonl", answers)


def _score_args(argv):
    parser = build_parser()
    return parser.parse_args(argv)


def test_msvd_score_end_to_end_then_from_the_cache(judge_server, tmp_path, capsys):
    answers_path = _msvd_files(tmp_path)
    argv = [
        "score",
        "msvd_qa",
        "--answers",
        answers_path,
        "--data-root",
        str(tmp_path),
        "--judge-base-url",
        judge_server.url,
        "--judge-model",
        MODEL,
        "--judge-timeout",
        "0.5",
        "--judge-backoff",
        "0.01",
        "--judge-retries",
        "3",
    ]
    args = _score_args(argv)
    result = args.func(args)
    printed = json.loads(capsys.readouterr().out)
    assert printed == result
    assert (result["yes"], result["no"], result["missing"]) == (2, 1, 1)
    assert result["accuracy"] == pytest.approx(200 / 3)
    assert result["score"] == pytest.approx((4 + 1 + 4) / 3)
    assert result["judge"]["model"] == MODEL
    assert result["judge"]["requests_sent"] == 5  # 3 judgments, 2 of them retried once
    with open(result["output"]) as file:
        assert json.load(file)["accuracy"] == result["accuracy"]

    requests_before = len(judge_server.requests)
    rerun = args.func(_score_args(argv))
    assert rerun["accuracy"] == result["accuracy"]
    assert rerun["judge"]["requests_sent"] == 0 and rerun["judge"]["cache_hits"] == 3
    assert len(judge_server.requests) == requests_before


def test_msvd_score_stops_on_judge_failures_unless_allowed(judge_server, tmp_path, capsys):
    folder = tmp_path / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    folder.mkdir(parents=True)
    write_json(
        folder / "test_q.json",
        [
            {"video_name": "a", "question": "what?", "question_id": 1},
            {"video_name": "b", "question": "who?", "question_id": 2},
        ],
    )
    write_json(
        folder / "test_a.json",
        [{"answer": "cat", "question_id": 1}, {"answer": "dog", "question_id": 2}],
    )
    answers_path = write_jsonl(
        folder / "answers.jsonl",
        [
            answer(1, "a cat", "what?"),
            answer(2, "ALWAYSBAD", "who?"),
        ],
    )
    argv = [
        "score",
        "msvd_qa",
        "--answers",
        answers_path,
        "--data-root",
        str(tmp_path),
        "--judge-base-url",
        judge_server.url,
        "--judge-model",
        MODEL,
        "--judge-backoff",
        "0.01",
        "--judge-retries",
        "1",
    ]
    args = _score_args(argv)
    with pytest.raises(JudgeError, match="1 of 2 judgments failed"):
        args.func(args)
    allowed = _score_args(argv + ["--allow-judge-failures"])
    result = allowed.func(allowed)
    assert result["judge_failed"] == 1 and result["accuracy"] == 100.0
