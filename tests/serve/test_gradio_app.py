"""The Gradio demo built headless: the chat handler streams, carries history and uploads, and
shows errors to the user instead of failing."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from tests
gr = pytest.importorskip("gradio")

from llavamini.inference import GenerationSettings  # noqa: E402
from llavamini.serve.gradio_app import DemoChat, build_demo  # noqa: E402
from llavamini.serve.session import resolve_template  # noqa: E402

SLIDERS = (0.0, 0.7, 4)  # temperature, top p, max new tokens


@pytest.fixture(scope="module")
def chat(loaded):
    template = resolve_template(None, loaded.processor)
    return DemoChat(loaded, template, GenerationSettings(max_new_tokens=4))


def turn(chat, message, history, session, image=None, video=None):
    """All updates of one chat turn, in order."""
    return list(chat.respond(message, image, video, history, session, *SLIDERS))


def test_build_demo_returns_blocks(chat):
    assert isinstance(build_demo(chat), gr.Blocks)


def test_chat_streams_and_keeps_history_and_uploads(chat, media_dir):
    updates = turn(chat, "What is it?", [], None, image=str(media_dir / "picture.png"))
    history, session, box, image, video, error = updates[-1]
    assert error == "" and box == "" and image is None and video is None
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert "picture.png" in history[0]["content"]
    assert history[1]["content"] == session.messages[-1][1]
    assert len(session.visuals) == 1

    updates = turn(chat, "And now?", history, session, video=str(media_dir / "clip.mp4"))
    history, session, *_, error = updates[-1]
    assert error == "" and len(history) == 4 and len(session.visuals) == 2
    assert session.messages[2][1].startswith("<video>\n")  # its own placeholder, same token

    history, session, *_, error = turn(chat, "Text only.", history, session)[-1]
    assert error == "" and len(history) == 6 and len(session.visuals) == 2


@pytest.mark.parametrize(
    ("message", "upload", "shown"),
    [
        ("What is it?", "not_an_image.png", "not_an_image.png"),
        ("What is it?", "no_frames.mp4", "no_frames.mp4"),
        ("word " * 5000, None, "context"),
        ("   ", None, "Type a message"),
    ],
)
def test_errors_are_shown_and_the_conversation_is_kept(chat, media_dir, message, upload, shown):
    history, session, *_ = turn(chat, "Hello.", [], None)[-1]
    before = list(session.messages)
    path = str(media_dir / upload) if upload else None
    video = path if path and path.endswith(".mp4") else None
    image = path if path and not video else None
    history_after, session_after, box, image_after, video_after, error = turn(
        chat, message, history, session, image=image, video=video
    )[-1]
    assert shown in error
    assert history_after == history and session_after.messages == before
    assert session_after.pending == []
    assert (box, image_after, video_after) == (message, image, video)  # kept for a retry


def test_clear_starts_a_new_conversation(chat):
    history, session, box, image, video, error = chat.clear()
    assert history == [] and session.messages == [] and box == "" and error == ""
