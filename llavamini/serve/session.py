"""`ChatSession`: one conversation (template, history, visuals) and its one generation path.

The command-line chat, the HTTP server and the Gradio demo all answer through `ChatSession.ask`,
so history, image placeholders, stop tokens and streaming behave the same everywhere.

A conversation is a list of `(role, text)` turns plus the pixel tensors of its images and videos,
in placeholder order. A visual attached with `attach` goes into the *next* user turn as one
`<image>\\n` (or `<video>\\n`) placeholder before its text (where the reference puts it), so
images can arrive at any turn, several per turn, or never (text-only chat). Media are processed
once, when attached; every turn's prompt is rendered and tokenized by the checkpoint's
`LlavaMiniProcessor` (a system prompt is its leading system message), and answered by
`llavamini.inference.generate`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import BatchFeature, TextStreamer

from llavamini.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN
from llavamini.conversation import ChatTemplate, get_template
from llavamini.data.video import MAX_VIDEO_FRAMES, media_kind
from llavamini.inference import GenerationSettings, InputSettings, generate, stop_token_ids
from llavamini.model.loading import LoadedModel

logger = logging.getLogger(__name__)

CHAT_DEFAULTS = GenerationSettings(max_new_tokens=512)
"""Greedy, up to 512 new tokens: the reference's documented command."""

CHAT_INPUTS = InputSettings(video_max_frames=MAX_VIDEO_FRAMES)
"""The chat commands' (`chat`, `serve`, `gradio`) input: the checkpoint's template and frame
rate, videos capped at `MAX_VIDEO_FRAMES`."""


def resolve_template(conv_mode: str | None, processor) -> ChatTemplate:
    """The template named `conv_mode`, or the processor's when None.

    Raises `KeyError` listing the known names for an unknown one.
    """
    name = conv_mode if conv_mode is not None else processor.conv_mode
    template = get_template(name)
    if conv_mode is None:
        logger.info("Conv mode %s (the checkpoint's; --conv-mode overrides it)", name)
    return template


class GenerationCancelled(Exception):
    """Raised inside generation when the caller cancels it (a client that went away)."""


@dataclass(frozen=True)
class Reply:
    """One answer and what it cost.

    Attributes:
        text: the answer, special tokens removed, stripped.
        prompt_tokens: prompt length in text tokens (each image or video placeholder counts as
            one, although the model sees its vision tokens there).
        completion_tokens: tokens generated, the end token included.
        finish_reason: 'stop' (an end token) or 'length' (`max_new_tokens` reached).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class _CallbackStreamer(TextStreamer):
    """Hands finished pieces of text to a callback, counts the new tokens, and aborts generation
    (by raising from `put`, the only hook `generate` calls per token) once `cancel` is set.

    The pieces join to the answer `generate` returns, which is stripped: leading whitespace is
    dropped and trailing whitespace held back until more text follows it (OpenAI's contract:
    joined stream deltas equal the message content)."""

    def __init__(
        self,
        tokenizer,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event | None,
    ):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.cancel = cancel
        self.new_tokens = 0
        self.last_token: int | None = None
        self.started = False
        self.held = ""

    def put(self, value: torch.Tensor) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise GenerationCancelled("generation cancelled by the caller")
        if not self.next_tokens_are_prompt:
            flat = value.reshape(-1)
            self.new_tokens += flat.numel()
            if flat.numel():
                self.last_token = int(flat[-1])
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        text = self.held + text if self.started else text.lstrip()
        piece = text.rstrip()
        self.held = text[len(piece) :]
        if piece:
            self.started = True
            if self.on_text is not None:
                self.on_text(piece)


class ChatSession:
    """A conversation with a loaded LLaVA-Mini. Not thread-safe: one `ask` at a time.

    Args:
        loaded: model and processor (`ModelSpec.load`).
        template: the chat template (`resolve_template`).
        settings: decoding settings for every `ask` (public: change it between turns).
        fps: video frames taken per second of video (None: the processor's, the training and
            evaluation policy).
        max_frames: cap on video frames (None: the processor's; the reference's has no cap).
        system: the system prompt, in place of the template's (None: the template's own).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        template: ChatTemplate,
        settings: GenerationSettings = CHAT_DEFAULTS,
        fps: float | None = None,
        max_frames: int | None = None,
        system: str | None = None,
    ):
        self.loaded = loaded
        self.template = template
        self.system = system
        self.settings = settings
        processor = loaded.processor
        self.processor = processor.with_video_policy(
            processor.video_fps if fps is None else fps,
            processor.video_max_frames if max_frames is None else max_frames,
        )
        self.messages: list[tuple[str, str]] = []
        """Turns so far, `(role, text)`, user texts with their `<image>`/`<video>` placeholders."""
        self.visuals: list[torch.Tensor] = []
        """Pixel tensors of the images and videos in `messages`, in placeholder order."""
        self.pending: list[torch.Tensor] = []
        """Visuals attached for the next user turn."""

    def attach(self, path: str, kind: str | None = None) -> torch.Tensor:
        """Load an image or video file (`kind`, else by extension) for the next user turn.

        Raises `FileNotFoundError` or `ValueError` naming the file; nothing is attached then.
        """
        visual = self.processor.process(kind or media_kind(path), path)
        self.pending.append(visual)
        return visual

    def add_turn(self, role: str, text: str) -> None:
        """Append a past turn without generating (to replay a conversation, as the HTTP API
        does); a user turn takes the pending visuals."""
        if role == "user":
            self.messages.append(("user", self._user_text(text)))
            self.visuals.extend(self.pending)
            self.pending = []
        elif role == "assistant":
            self.messages.append(("assistant", text))
        else:
            raise ValueError(f"A turn's role must be 'user' or 'assistant', got {role!r}.")

    def reset(self) -> None:
        """Forget the conversation and any attached visuals."""
        self.messages, self.visuals, self.pending = [], [], []

    def prompt(self, text: str) -> tuple[str, list[torch.Tensor]]:
        """The rendered prompt and the visuals that `ask(text)` would send to the model."""
        turns = self.messages + [("user", self._user_text(text))]
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        conversation = system + [{"role": role, "content": content} for role, content in turns]
        prompts, _ = self.processor.render([conversation], True, self.template)
        return prompts[0], self.visuals + self.pending

    def model_inputs(self, text: str) -> BatchFeature:
        """The processor's batch that `ask(text)` would send to the model."""
        prompt, visuals = self.prompt(text)
        logger.debug("Prompt (%d visuals): %r", len(visuals), prompt)
        return self.processor.model_inputs([prompt], [visuals])

    def ask(
        self,
        text: str,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Reply:
        """Answer `text` (with the pending visuals) in the context of the conversation so far.

        Args:
            text: the user's message, without `<image>` (attach visuals instead).
            on_text: called with each finished piece of the answer as it is generated (with
                beam search, once with the whole answer).
            cancel: when set during generation, `GenerationCancelled` is raised.

        The turn joins the history only when generation succeeds: after an error (a prompt
        longer than the context, say) or a cancellation the conversation is as before, pending
        visuals included. Raises `ValueError` for bad input.
        """
        visuals = self.visuals + self.pending
        inputs = self.model_inputs(text)
        tokenizer = self.processor.tokenizer
        prompt_tokens = inputs["input_ids"].shape[1]
        # Transformers streamers do not support beam search; such answers arrive in one piece.
        streaming = self.settings.num_beams == 1
        streamer = _CallbackStreamer(tokenizer, on_text, cancel) if streaming else None
        answer = generate(self.loaded, inputs, self.settings, self.template, streamer=streamer)[0]
        if streamer is None:
            if on_text is not None:
                on_text(answer)
            new_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
            stopped = new_tokens < self.settings.max_new_tokens
        else:
            new_tokens = streamer.new_tokens
            stopped = streamer.last_token in stop_token_ids(tokenizer, self.template)
        self.messages.append(("user", self._user_text(text)))
        self.messages.append(("assistant", answer))
        self.visuals, self.pending = visuals, []
        return Reply(answer, prompt_tokens, new_tokens, "stop" if stopped else "length")

    def _user_text(self, text: str) -> str:
        """`text` after one `<image>\\n` (`<video>\\n`) per pending image (video); rejects a
        literal placeholder, which would ask for a visual that was never attached."""
        for token in (DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN):
            if token in text:
                raise ValueError(
                    f"The message contains {token!r}, which marks where an attached image or "
                    f"video goes: attach them instead (/image PATH in the chat, image_url parts "
                    f"in the API)."
                )
        placeholders = [
            DEFAULT_VIDEO_TOKEN if visual.dim() == 5 else DEFAULT_IMAGE_TOKEN
            for visual in self.pending
        ]
        return "".join(token + "\n" for token in placeholders) + text
