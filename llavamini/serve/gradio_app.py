"""A single-process Gradio demo: upload an image or a video, chat, see answers stream.

    python -m llavamini.serve.gradio_app --model-path PATH [--host 127.0.0.1] [--port 7860]

Needs the `serve` extra (gradio). Unlike the reference's controller / worker / web-server trio,
the model lives in this process, and when something fails (an unreadable file, a prompt longer
than the context) the real error is shown under the chat instead of a generic network error.
Each browser session has its own `ChatSession`; an uploaded file goes into the next message.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.flags import standalone_main
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec
from llavamini.serve.session import CHAT_DEFAULTS, CHAT_INPUTS, ChatSession
from llavamini.serve.startup import Address, load_chat_model

logger = logging.getLogger(__name__)

Outputs = tuple[list, object, str, None, None, str]
"""What a chat turn updates: chatbot messages, session, message box, image, video, error text."""


class DemoChat:
    """The demo's handlers, bound to one loaded model (shared by all browser sessions; Gradio
    runs one chat turn at a time, see `build_demo`).

    Args:
        loaded: model and processor.
        template: the chat template.
        defaults: the sliders' starting decoding settings.
        video_fps: video frames per second of video (None: the checkpoint processor's).
        video_max_frames: cap on video frames (None: the checkpoint processor's).
    """

    def __init__(
        self,
        loaded,
        template,
        defaults=None,
        video_fps: float | None = None,
        video_max_frames: int | None = MAX_VIDEO_FRAMES,
    ):
        self.loaded = loaded
        self.template = template
        self.defaults = defaults or CHAT_DEFAULTS
        self.video_fps = video_fps
        self.video_max_frames = video_max_frames

    def new_session(self):
        """An empty conversation."""
        return ChatSession(
            self.loaded,
            self.template,
            self.defaults,
            fps=self.video_fps,
            max_frames=self.video_max_frames,
        )

    def respond(
        self,
        message: str,
        image: str | None,
        video: str | None,
        history: list | None,
        session,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> Iterator[Outputs]:
        """One chat turn: attach the uploads, stream the answer, or show what went wrong.

        Yields `(chat messages, session, message box, image box, video box, error text)`; on
        success the message box and uploads are cleared (they went into this turn), on failure
        they are kept and the conversation is unchanged.
        """
        history = list(history or [])
        session = session or self.new_session()
        text = (message or "").strip()
        if not text:
            yield history, session, message, image, video, "Type a message first."
            return
        session.settings = GenerationSettings(
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            top_p=float(top_p) if temperature > 0 else None,
        )
        error = self._attach_uploads(session, image, video)
        if error:
            yield history, session, message, image, video, error
            return
        shown = history + [{"role": "user", "content": _with_upload_names(text, image, video)}]
        answer, error = "", ""
        for piece, error in _stream_answer(session, text):
            if error:
                break
            answer += piece
            yield shown + [{"role": "assistant", "content": answer}], session, "", None, None, ""
        if error:
            session.pending = []  # the failed turn's uploads are not kept either
            yield history, session, message, image, video, error
            return
        final = session.messages[-1][1]
        yield shown + [{"role": "assistant", "content": final}], session, "", None, None, ""

    @staticmethod
    def _attach_uploads(session, image: str | None, video: str | None) -> str:
        """Attach the uploaded files; on failure none is attached and the error is returned."""
        for path in (image, video):
            if not path:
                continue
            try:
                session.attach(path)
            except (FileNotFoundError, ValueError) as error:
                session.pending = []
                return f"Cannot use {os.path.basename(path)}: {error}"
        return ""

    def clear(self) -> Outputs:
        """A new, empty conversation."""
        return [], self.new_session(), "", None, None, ""


def _with_upload_names(text: str, image: str | None, video: str | None) -> str:
    names = [os.path.basename(path) for path in (image, video) if path]
    return "".join(f"[{name}] " for name in names) + text


def _stream_answer(session, text: str) -> Iterator[tuple[str, str]]:
    """Run `session.ask` on a thread and yield `(new text, '')` as it streams, and last
    `('', error message)` when it failed."""
    pieces: queue.Queue = queue.Queue()
    failure: list[str] = []

    def work() -> None:
        try:
            session.ask(text, on_text=pieces.put)
        except ValueError as error:
            failure.append(str(error))
        except Exception as error:  # shown to the user, who would otherwise see nothing
            logger.exception("Generation failed")
            failure.append(f"Internal error: {type(error).__name__}: {error}")
        finally:
            pieces.put(None)

    worker = threading.Thread(target=work, name="llavamini-demo-generate", daemon=True)
    worker.start()
    # The worker always ends the stream with None, so this loop ends when generation does.
    while (piece := pieces.get()) is not None:
        yield piece, ""
    worker.join()
    if failure:
        yield "", failure[0]


def build_demo(chat: DemoChat, title: str = "LLaVA-Mini"):
    """The Gradio app (`gr.Blocks`) for `chat`; `.launch()` it, or call `chat.respond`."""
    import gradio as gr  # the serve extra: optional, and slow to import

    defaults = chat.defaults
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nUpload an image or a video; it goes into your next message.")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image")
                video = gr.Video(label="Video")
                temperature = gr.Slider(0.0, 1.0, value=defaults.temperature, label="Temperature")
                top_p = gr.Slider(0.05, 1.0, value=defaults.top_p or 0.7, label="Top p")
                max_new_tokens = gr.Slider(
                    1, 1024, value=defaults.max_new_tokens, step=1, label="Max output tokens"
                )
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="Chat", height=480)
                error = gr.Markdown()
                message = gr.Textbox(placeholder="Ask about the image or video", label="Message")
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    clear = gr.Button("New conversation")
        inputs = [message, image, video, chatbot, session, temperature, top_p, max_new_tokens]
        outputs = [chatbot, session, message, image, video, error]
        # One turn at a time across all users: the model is shared and not thread-safe.
        for trigger in (message.submit, send.click):
            trigger(chat.respond, inputs, outputs, concurrency_limit=1, concurrency_id="model")
        clear.click(chat.clear, None, outputs)
    return demo


@dataclass(frozen=True)
class GradioOptions:
    """Gradio's own settings. `share`: also open a public gradio.live link."""

    share: bool = field(default=False, metadata={"help": "also open a public gradio.live link"})


def gradio(
    model: ModelSpec,
    generation: GenerationSettings = CHAT_DEFAULTS,
    inputs: InputSettings = CHAT_INPUTS,
    address: Address = Address(port=7860),
    options: GradioOptions = GradioOptions(),
) -> None:
    """Load the model and serve the demo until interrupted."""
    loaded, template = load_chat_model(model, inputs)
    chat = DemoChat(loaded, template, generation, inputs.video_fps, inputs.video_max_frames)
    demo = build_demo(chat).queue()
    demo.launch(server_name=address.host, server_port=address.port, share=options.share)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llavamini.serve.gradio_app`."""
    standalone_main(gradio, "python -m llavamini.serve.gradio_app", __doc__, argv)


if __name__ == "__main__":
    main()
