"""Mixed load on one server (loopback): good and hostile requests from 8 client threads.

200 requests, half of them hostile (the 12 server refusals of `tests/battery/cases.py`, about 8
times each: decompression bombs, broken images and videos, a prompt past the context, bad JSON,
paths outside the media folder), in a seeded random order: every good request (text, an image, a
video; half of them streamed, their deltas joined) gets the answer it gets alone (greedy), every
hostile one its expected 4xx and message, and the serving process's resident memory grows by at
most `RSS_GROWTH_BOUND_MB` from after a warm-up (each request once) to the end.

Measured on 2 CPU cores beside another job (tiny checkpoint), three runs: 19-35 s, RSS 474-475
MiB after the warm-up, growth 6.8 and 7.1 MiB. The bound, 100 MiB, is 14 times that, room for
allocator noise. It
catches a decoded bomb (a 20000 x 20000 RGB image is 1.1 GiB) and any leak of 1 MiB or more per
request; smaller leaks need a longer run to show.
"""

import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.battery.cases import CASES, Part, Payload, Rejected
from tests.battery.conftest import REQUEST_TIMEOUT_S, SERVER_FLAGS
from tests.battery.doors import post, server_body
from tests.conftest import running_server

logger = logging.getLogger(__name__)

REQUESTS = 200
CLIENTS = 8
RSS_GROWTH_BOUND_MB = 100
"""Largest growth of the server process's resident memory over the 200 requests."""

HOSTILE = [
    case for case in CASES if not case.slow and isinstance(case.expected["server"], Rejected)
]


def rss_mb() -> float:
    """Resident memory of this process (the server runs in it, in a thread), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def good_payloads(folder: Path) -> list[Payload]:
    """Ordinary questions: text only, an image, a video."""
    from PIL import Image

    from tests.conftest import ramp_frames, write_video

    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "red.png")
    write_video(folder / "clip.mp4", ramp_frames(6, 32, 32, step=30), fps=3)
    return [
        Payload((Part("text", "Say something."),)),
        Payload((Part("image", "red.png"), Part("text", "What colour is it?"))),
        Payload((Part("video", "clip.mp4"), Part("text", "What happens?"))),
    ]


@pytest.mark.slow
def test_mixed_load_answers_good_requests_refuses_bad_ones_and_memory_stays_bounded(
    tiny_checkpoint, tmp_path
):
    good_folder = tmp_path / "good"
    good_folder.mkdir()
    good = [server_body(payload, good_folder) for payload in good_payloads(good_folder)]
    hostile = []
    for case in HOSTILE:
        folder = tmp_path / case.id / "media"
        folder.mkdir(parents=True)
        hostile.append((case, server_body(case.build(folder), folder)))
    served = tmp_path / "served"
    served.mkdir()
    with (
        running_server(tiny_checkpoint, str(served), *SERVER_FLAGS) as url,
        httpx.Client(
            base_url=url,
            timeout=REQUEST_TIMEOUT_S,
            limits=httpx.Limits(max_connections=CLIENTS),
        ) as client,
    ):
        # Each request once, alone: the reference answers, and a warm-up for the measurement.
        expected = [post(client, body) for body in good]
        assert all(outcome.accepted for outcome in expected)
        for _, body in hostile:
            post(client, body)
        before = rss_mb()
        rng = random.Random(0)
        jobs = [("good", i % len(good), i % 2 == 1) for i in range(REQUESTS // 2)]
        jobs += [("bad", i % len(hostile), False) for i in range(REQUESTS - len(jobs))]
        rng.shuffle(jobs)

        def send(job):
            kind, index, stream = job
            body = good[index] if kind == "good" else hostile[index][1]
            return job, post(client, body, stream=stream)

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            results = list(pool.map(send, jobs, timeout=REQUESTS * REQUEST_TIMEOUT_S))
        growth = rss_mb() - before
    logger.info("RSS %.0f MiB after the warm-up, grew by %.1f MiB", before, growth)
    for (kind, index, stream), outcome in results:
        if kind == "good":
            assert outcome.accepted and outcome.detail == expected[index].detail, (stream, index)
        else:
            case = hostile[index][0]
            rejected = case.expected["server"]
            assert not outcome.accepted and outcome.status == rejected.status, case.id
            assert rejected.message in outcome.detail, case.id
    assert growth <= RSS_GROWTH_BOUND_MB, f"RSS grew by {growth:.0f} MiB"
