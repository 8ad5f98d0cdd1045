"""`ChatSession`: history, visuals per turn, streaming, failures that leave the conversation as
it was, and the conv-mode default."""

import threading

import pytest

from llavamini.conversation import default_template_name
from llavamini.inference import GenerationSettings
from llavamini.serve.session import (
    ChatSession,
    GenerationCancelled,
    _CallbackStreamer,
    resolve_template,
)

SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture
def session(loaded):
    return ChatSession(loaded, resolve_template(None, loaded.processor), SHORT)


class _NoLlama3Tokens:
    """A tokenizer without `<|start_header_id|>`: unknown tokens map to `unk_token_id`."""

    unk_token_id = 0

    def convert_tokens_to_ids(self, token):
        return self.unk_token_id


def test_conv_mode_default_follows_the_tokenizer(loaded):
    assert default_template_name(loaded.tokenizer) == "llava_llama_3_1"
    assert default_template_name(_NoLlama3Tokens()) == "vicuna_v1"
    with_template = _NoLlama3Tokens()
    with_template.chat_template = "{{ messages }}"  # e.g. a Qwen tokenizer
    assert default_template_name(with_template) == "chat_template"
    assert resolve_template("vicuna_v1", loaded.processor).name == "vicuna_v1"
    with pytest.raises(KeyError, match="llava_llama_3_1"):
        resolve_template("llava_v0", loaded.processor)


def test_history_carries_answers_and_images_join_later_turns(session, media_dir):
    pieces = []
    first = session.ask("What is red?", on_text=pieces.append)
    assert first.text, "the tiny model should say something for this test to mean anything"
    assert "".join(pieces).strip() == first.text
    assert session.visuals == [] and "<image>" not in session.messages[0][1]

    session.attach(str(media_dir / "picture.png"))
    prompt, visuals = session.prompt("And this one?")
    assert "What is red?" in prompt and first.text in prompt
    assert prompt.count("<image>") == 1 and len(visuals) == 1
    session.ask("And this one?")
    assert session.messages[2] == ("user", "<image>\nAnd this one?")
    assert len(session.visuals) == 1 and session.pending == []

    session.attach(str(media_dir / "clip.mp4"))
    session.ask("Now a video.")
    assert [v.dim() for v in session.visuals] == [4, 5]  # image (parts,3,H,W), video (T,...)
    assert len(session.messages) == 6
    prompt = session.prompt("bye")[0]
    assert prompt.count("<image>") == 1 and prompt.count("<video>") == 1


def test_a_failed_turn_leaves_the_conversation_unchanged(session, media_dir):
    session.ask("hello")
    session.attach(str(media_dir / "picture.png"))
    before = (list(session.messages), len(session.pending))
    session.settings = GenerationSettings(max_new_tokens=10**6)
    with pytest.raises(ValueError, match="context"):
        session.ask("too long")
    with pytest.raises(ValueError, match="<image>"):
        session.ask("a literal <image> asks for a picture never attached")
    cancel = threading.Event()
    cancel.set()
    session.settings = SHORT
    with pytest.raises(GenerationCancelled):
        session.ask("cancelled", cancel=cancel)
    assert (session.messages, len(session.pending)) == before


def test_bad_files_are_named_and_not_attached(session, media_dir):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        session.attach(str(media_dir / "missing.png"))
    with pytest.raises(ValueError, match="not_an_image.png"):
        session.attach(str(media_dir / "not_an_image.png"))
    with pytest.raises(ValueError, match="no_frames.mp4"):
        session.attach(str(media_dir / "no_frames.mp4"))
    assert session.pending == []


def test_reply_counts_tokens_and_says_why_it_stopped(session):
    reply = session.ask("Count to three.")
    assert 1 <= reply.completion_tokens <= SHORT.max_new_tokens
    assert reply.finish_reason in ("stop", "length")
    if reply.finish_reason == "length":
        assert reply.completion_tokens == SHORT.max_new_tokens
    assert reply.prompt_tokens > 10


def test_beam_search_answers_in_one_piece(loaded):
    beams = GenerationSettings(max_new_tokens=4, num_beams=2)
    session = ChatSession(loaded, resolve_template(None, loaded.processor), beams)
    pieces = []
    reply = session.ask("hello", on_text=pieces.append)
    assert pieces == [reply.text]
    assert session.messages[-1] == ("assistant", reply.text)


def test_replayed_turns_render_like_asked_ones(session, media_dir):
    session.attach(str(media_dir / "picture.png"))
    session.add_turn("user", "What is it?")
    session.add_turn("assistant", "A square.")
    prompt, visuals = session.prompt("Sure?")
    assert prompt.index("<image>\nWhat is it?") < prompt.index("A square.") < prompt.index("Sure?")
    assert len(visuals) == 1
    with pytest.raises(ValueError, match="role"):
        session.add_turn("system", "no")


def test_streamed_pieces_join_to_the_stripped_answer(loaded):
    """The pieces a streamer hands out join to `generate`'s answer, which is stripped: no
    leading space (the first token of a Llama answer often carries one), no trailing one."""
    pieces = []
    streamer = _CallbackStreamer(loaded.tokenizer, pieces.append, None)
    decoded = ["", " ", " c", " of", "% ", "", "tax ", " yeH", " \n"]
    for text in decoded:
        streamer.on_finalized_text(text)
    streamer.on_finalized_text("", stream_end=True)
    assert "".join(pieces) == "".join(decoded).strip() == "c of% tax  yeH"
    assert all(pieces)  # no empty deltas
