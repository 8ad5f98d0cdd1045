"""`llavamini chat` (also `python -m llavamini.serve.cli`): chat with LLaVA-Mini in a terminal.

Interactive and multi-turn, with the answer streamed as it is generated; one-shot with
`--query`. An image or video given with `--image-file` / `--video-file` goes into the first turn;
in the chat, `/image PATH` or `/video PATH` attaches another one to the next message. An empty
line, `/exit` or Ctrl-D ends the chat.

The conv mode defaults from the checkpoint's tokenizer: `llava_llama_3_1` when it has the
Llama-3 header token `<|start_header_id|>`, else `vicuna_v1`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from llavamini.data.video import media_kind
from llavamini.errors import UsageError
from llavamini.flags import standalone_main, standalone_parser
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec
from llavamini.serve.session import CHAT_DEFAULTS, CHAT_INPUTS, ChatSession
from llavamini.serve.startup import load_chat_model

logger = logging.getLogger(__name__)

CHAT_COMMANDS = {
    "/image": "/image PATH  attach an image to your next message",
    "/video": "/video PATH  attach a video to your next message",
    "/reset": "/reset       forget the conversation and attached files",
    "/help": "/help        this list",
    "/exit": "/exit        leave (so do an empty line and Ctrl-D)",
}
"""In-chat commands: a line whose first word is one of these is not sent to the model."""

USER_LABEL, ASSISTANT_LABEL = "USER", "ASSISTANT"


@dataclass(frozen=True)
class ChatOptions:
    """What `chat` starts with.

    Attributes:
        image_file, video_file: a local file for the first message (at most one).
        query: answer this one message and return instead of chatting on stdin.
    """

    image_file: str | None = field(
        default=None, metadata={"exclusive": "media", "help": "an image for the first message"}
    )
    video_file: str | None = field(
        default=None, metadata={"exclusive": "media", "help": "a video for the first message"}
    )
    query: str | None = field(default=None, metadata={"help": "answer this one message and exit"})

    def __post_init__(self):
        if self.image_file is not None and self.video_file is not None:
            raise ValueError("give image_file or video_file, not both")


def build_parser():
    """The stand-alone parser of `python -m llavamini.serve.cli`."""
    return standalone_parser(chat, "python -m llavamini.serve.cli", __doc__)


def check_media_file(path: str, flag: str) -> None:
    """Raise `UsageError` unless `path` is a local file (checked before the slow model load)."""
    if path.startswith(("http://", "https://")):
        raise UsageError(f"{flag} {path!r}: URLs are not downloaded; download the file first")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path!r} does not exist or is not a file")


def chat(
    model: ModelSpec,
    generation: GenerationSettings = CHAT_DEFAULTS,
    inputs: InputSettings = CHAT_INPUTS,
    options: ChatOptions = ChatOptions(),
) -> None:
    """The `chat` command: load, attach the first file, then answer `options.query` once or
    chat on stdin."""
    first_file = options.image_file or options.video_file
    if first_file is not None:
        check_media_file(first_file, "--image-file" if options.image_file else "--video-file")
    loaded, template = load_chat_model(model, inputs)
    session = ChatSession(
        loaded, template, generation, fps=inputs.video_fps, max_frames=inputs.video_max_frames
    )
    if first_file is not None:
        try:
            session.attach(first_file)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(str(error)) from error
    if options.query is not None:
        answer_once(session, options.query)
    else:
        chat_loop(session)


def _writer(stdout):
    """A callback writing streamed text to `stdout` at once (no line buffering)."""

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    return write


def answer_once(session, query: str, stdout=None) -> None:
    """Stream the answer to `query` to stdout; raise `UsageError` on bad input."""
    write = _writer(stdout or sys.stdout)
    try:
        session.ask(query, on_text=write)
    except ValueError as error:
        raise UsageError(str(error)) from error
    write("\n")


def chat_loop(session, stdin=None, stdout=None) -> int:
    """Read messages line by line and stream the answers until EOF, an empty line or `/exit`.

    A bad file or a message too long for the context is reported and the chat goes on (the
    failed turn is not kept). Ctrl-C stops the current answer (dropping that turn), or at the
    prompt ends the chat. Returns the number of answered messages.
    """
    stdin = stdin or sys.stdin
    write = _writer(stdout or sys.stdout)
    logger.info(
        "Chat started: %s. Commands: %s", _first_turn_hint(session), ", ".join(CHAT_COMMANDS)
    )
    answered = 0
    while True:
        write(f"{USER_LABEL}: ")
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            line = ""
        text = line.strip()
        if not text:
            if not line:  # EOF: end the prompt line
                write("\n")
            return answered
        command = handle_command(session, text, write)
        if command == "exit":
            return answered
        if command == "handled":
            continue
        write(f"{ASSISTANT_LABEL}: ")
        try:
            session.ask(text, on_text=write)
            answered += 1
        except ValueError as error:
            logger.error("%s", error)
        except KeyboardInterrupt:
            logger.warning("Interrupted: this answer was dropped from the conversation.")
        write("\n")


def _first_turn_hint(session) -> str:
    attached = len(session.pending)
    return f"{attached} file(s) attached to your first message" if attached else "text only"


def handle_command(session, text: str, write) -> str | None:
    """Run an in-chat command. Returns 'exit', 'handled', or None when `text` is a message."""
    word, _, argument = text.partition(" ")
    if word not in CHAT_COMMANDS:
        return None
    if word == "/exit":
        return "exit"
    if word == "/help":
        write("\n".join(CHAT_COMMANDS.values()) + "\n")
    elif word == "/reset":
        session.reset()
        write("(conversation cleared)\n")
    else:
        attach_from_chat(session, word, argument, write)
    return "handled"


def attach_from_chat(session, command: str, argument: str, write) -> bool:
    """`/image PATH` or `/video PATH`; reports a bad file and returns False."""
    # Terminals quote dragged-and-dropped paths.
    path = os.path.expanduser(argument.strip().strip("'\""))
    if not path:
        logger.error("%s needs a file path: %s", command, CHAT_COMMANDS[command])
        return False
    if (command == "/video") != (media_kind(path) == "video"):
        kind = "a video" if command == "/video" else "an image"
        logger.error("%s expects %s file; %r has the wrong extension.", command, kind, path)
        return False
    try:
        session.attach(path)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return False
    write(f"(attached {path} to your next message)\n")
    return True


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llavamini.serve.cli`."""
    standalone_main(chat, "python -m llavamini.serve.cli", __doc__, argv)


if __name__ == "__main__":
    main()
