"""The bad-input battery: every (hostile input, front door) pair of `tests/battery/cases.py`
meets its one expected outcome, within a time limit; the large inputs run under `-m slow`."""

import logging
import threading
import tracemalloc
from pathlib import Path

import pytest

from tests.battery.cases import CASES, DOORS, ELSEWHERE, Accepted, NotApplicable, Rejected
from tests.battery.doors import DOOR_FUNCTIONS, DoorContext, Outcome, post, server_body

logger = logging.getLogger(__name__)

DOOR_TIMEOUT_S = {False: 60, True: 300}
"""Seconds one door may take with one input (fast cases, slow cases) before it counts as a
hang."""

PAIRS = [
    pytest.param(case, door, id=f"{case.id}-{door}", marks=[pytest.mark.slow] if case.slow else [])
    for case in CASES
    for door in DOORS
    if door not in ELSEWHERE and not isinstance(case.expected[door], NotApplicable)
]


def within(seconds: float, function, *args) -> Outcome:
    """`function(*args)`, failing the test when it has not returned after `seconds` (a hang);
    its exception is raised here."""
    result: dict = {}

    def target():
        try:
            result["value"] = function(*args)
        except BaseException as error:  # handed to the test's thread, raised there
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"no outcome after {seconds} s: the door hangs")
    if "error" in result:
        raise result["error"]
    return result["value"]


def peak_mb(function, *args) -> tuple[Outcome, float]:
    """`function(*args)` and the peak of what it allocated meanwhile in Python objects and NumPy
    arrays (`tracemalloc`; every thread, the server's included), in MB."""
    tracemalloc.start()
    try:
        outcome = function(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak / 2**20


@pytest.fixture
def context(request, tmp_path, loaded, tiny_checkpoint):
    media, scratch = tmp_path / "media", tmp_path / "scratch"
    media.mkdir()
    scratch.mkdir()
    door = request.node.callspec.params["door"]
    client = request.getfixturevalue("battery_client") if door == "server" else None
    return DoorContext(media, scratch, loaded, tiny_checkpoint, client)


@pytest.mark.parametrize(("case", "door"), PAIRS)
def test_hostile_input_meets_its_expected_outcome(case, door, context, monkeypatch):
    payload = case.build(context.media)
    expected = case.expected[door]
    door_call = (DOOR_TIMEOUT_S[case.slow], DOOR_FUNCTIONS[door], payload, context, monkeypatch)
    if case.memory_mb is None:
        outcome = within(*door_call)
    else:
        outcome, peak = peak_mb(within, *door_call)
        logger.info("%s at the %s door: peak %.1f MB allocated", case.id, door, peak)
        assert peak < case.memory_mb, f"the door allocated {peak:.1f} MB at its peak"
    if isinstance(expected, Rejected):
        assert not outcome.accepted, f"accepted, expected a refusal: {outcome.detail[:300]}"
        assert expected.message in outcome.detail
        if door == "server":
            assert outcome.status == expected.status, outcome
    else:
        assert isinstance(expected, Accepted)
        assert outcome.accepted, f"refused, expected {expected.result!r}: {outcome.detail}"
        if expected.shows is not None:
            assert expected.shows in outcome.detail


def test_case_ids_are_unique_and_every_case_names_every_door():
    assert len({case.id for case in CASES}) == len(CASES)
    assert all(set(case.expected) == set(DOORS) for case in CASES)


def test_every_door_is_checked_here_or_by_the_test_named_for_it():
    assert set(DOORS) == set(DOOR_FUNCTIONS) | set(ELSEWHERE)
    assert not set(DOOR_FUNCTIONS) & set(ELSEWHERE)
    root = Path(__file__).resolve().parents[2]
    assert all((root / test).is_file() for test in ELSEWHERE.values())


STREAMED = [
    pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.slow else [])
    for case in CASES
    if isinstance(case.expected["server"], Accepted)
]


@pytest.mark.parametrize("case", STREAMED)
def test_streamed_answers_equal_plain_ones(case, tmp_path, battery_client):
    """OpenAI's contract, for every input the server accepts: the joined deltas of a streamed
    answer are the plain answer's content."""
    payload = case.build(tmp_path)
    body = server_body(payload, tmp_path)
    plain = post(battery_client, body)
    streamed = post(battery_client, body, stream=True)
    assert plain.accepted and streamed.accepted
    assert streamed.detail == plain.detail
