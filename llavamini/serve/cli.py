"""`llavamini chat` (also `python -m llavamini.serve.cli`): chat with LLaVA-Mini in a terminal.

Interactive and multi-turn, with the answer streamed as it is generated; one-shot with
`--query`. An image or video given with `--image-file` / `--video-file` goes into the first turn;
in the chat, `/image PATH` or `/video PATH` attaches another one to the next message. An empty
line, `/exit` or Ctrl-D ends the chat.

The conv mode defaults from the checkpoint's tokenizer: `llava_llama_3_1` when it has the
Llama-3 header token `<|start_header_id|>`, else `vicuna_v1`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from llavamini.cli import add_device_arguments

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


def add_model_arguments(parser: argparse.ArgumentParser, max_frames: int | None = None) -> None:
    """Flags that choose and load the model (shared by chat, serve and the Gradio demo)."""
    parser.add_argument("--model-path", required=True, help="checkpoint folder or cached hub id")
    parser.add_argument(
        "--conv-mode",
        default=None,
        help="chat template (default: the checkpoint processor's)",
    )
    add_device_arguments(parser)
    quantization = parser.add_mutually_exclusive_group()
    quantization.add_argument("--load-8bit", action="store_true", help="bitsandbytes 8-bit (GPU)")
    quantization.add_argument("--load-4bit", action="store_true", help="bitsandbytes 4-bit (GPU)")
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="video frames per second of video (default: the checkpoint's processor's, 1)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=max_frames,
        help=f"cap on video frames (default: {max_frames or 'the checkpoint processor’s'})",
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags (the defaults of the reference's documented command)."""
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with T > 0)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument(
        "--num-beams", type=int, default=1, help="beam search (> 1 prints answers unstreamed)"
    )


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """All `chat` flags."""
    add_model_arguments(parser)
    add_generation_arguments(parser)
    media = parser.add_mutually_exclusive_group()
    media.add_argument("--image-file", default=None, help="an image for the first message")
    media.add_argument("--video-file", default=None, help="a video for the first message")
    parser.add_argument("--query", default=None, help="answer this one message and exit")
    parser.set_defaults(func=run)


def add_parser(commands) -> None:
    """Register the `chat` subcommand on the `llavamini` command."""
    parser = commands.add_parser(
        "chat",
        help="chat with a LLaVA-Mini checkpoint about images and videos (streamed, multi-turn)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_chat_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone parser of `python -m llavamini.serve.cli`."""
    parser = argparse.ArgumentParser(
        prog="python -m llavamini.serve.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_chat_arguments(parser)
    return parser


def check_generation_arguments(args: argparse.Namespace) -> None:
    """Exit with a message naming the flag when a decoding or video setting is out of range."""
    generation_settings(args)
    if args.max_frames is not None and args.max_frames < 1:
        raise SystemExit(f"error: --max-frames must be >= 1, got {args.max_frames}")
    if args.fps is not None and args.fps <= 0:
        raise SystemExit(f"error: --fps must be > 0, got {args.fps}")


def check_media_file(path: str, flag: str) -> None:
    """Exit unless `path` is a local file (checked before the slow model load)."""
    if path.startswith(("http://", "https://")):
        raise SystemExit(
            f"error: {flag} {path!r}: URLs are not downloaded; download the file first"
        )
    if not os.path.isfile(path):
        raise SystemExit(f"error: {flag} {path!r} does not exist or is not a file")


def generation_settings(args: argparse.Namespace):
    """`GenerationSettings` from the decoding flags (validated there, as for evaluation);
    exits naming the flags when one is out of range."""
    from llavamini.inference import GenerationSettings

    try:
        return GenerationSettings(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            num_beams=args.num_beams,
        )
    except ValueError as error:
        flags = "--max-new-tokens / --temperature / --top-p / --num-beams"
        raise SystemExit(f"error: {flags}: {error}") from error


def load_from_args(args: argparse.Namespace):
    """`(LoadedModel, ChatTemplate)` from the model flags; exits with a message on failure."""
    from llavamini.conversation import get_template
    from llavamini.model.loading import ModelLoadError, ModelSpec
    from llavamini.serve.session import resolve_template

    if args.conv_mode is not None:  # checked before the slow model load
        try:
            get_template(args.conv_mode)
        except KeyError as error:
            raise SystemExit(f"error: --conv-mode: {error.args[0]}") from error
    quantization = "8bit" if args.load_8bit else "4bit" if args.load_4bit else None
    try:
        spec = ModelSpec(args.model_path, args.device, args.dtype, quantization=quantization)
        loaded = spec.load()
    except (FileNotFoundError, ValueError, ModelLoadError) as error:
        raise SystemExit(f"error: {error}") from error
    return loaded, resolve_template(args.conv_mode, loaded.processor)


def run(args: argparse.Namespace) -> None:
    """The `chat` command: load, attach the first file, then answer once or chat."""
    from llavamini.serve.session import ChatSession

    check_generation_arguments(args)
    first_file = args.image_file or args.video_file
    if first_file is not None:
        check_media_file(first_file, "--image-file" if args.image_file else "--video-file")
    loaded, template = load_from_args(args)
    session = ChatSession(
        loaded, template, generation_settings(args), fps=args.fps, max_frames=args.max_frames
    )
    if first_file is not None:
        try:
            session.attach(first_file)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"error: {error}") from error
    if args.query is not None:
        answer_once(session, args.query)
    else:
        chat_loop(session)


def _writer(stdout):
    """A callback writing streamed text to `stdout` at once (no line buffering)."""

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    return write


def answer_once(session, query: str, stdout=None) -> None:
    """Stream the answer to `query` to stdout; exit non-zero with the message on bad input."""
    write = _writer(stdout or sys.stdout)
    try:
        session.ask(query, on_text=write)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
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
    from llavamini.data.video import media_kind

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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
