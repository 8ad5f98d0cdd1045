"""`llavamini serve` (also `python -m llavamini.serve.server`): the OpenAI-compatible HTTP API.

    llavamini serve --model-path PATH [--host 127.0.0.1] [--port 8000] [--allowed-media-dir DIR]

`POST /v1/chat/completions` (plain or `"stream": true`) and `GET /v1/models`; see
`llavamini.serve.openai_api` for the request format. The server listens on 127.0.0.1 only unless
`--host` says otherwise, reads local media files only inside `--allowed-media-dir`, and runs one
generation at a time (later requests wait in arrival order).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from llavamini.serve.cli import add_generation_arguments, add_model_arguments

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """All `serve` flags."""
    add_model_arguments(parser, max_frames=180)
    add_generation_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--allowed-media-dir",
        default=None,
        help="folder whose files requests may name by path (default: none, data URLs only)",
    )
    parser.add_argument(
        "--served-model-name", default=None, help="model id in responses (default: folder name)"
    )
    parser.add_argument(
        "--max-media-mb", type=float, default=100.0, help="largest media file in a request"
    )
    parser.set_defaults(func=run)


def add_parser(commands) -> None:
    """Register the `serve` subcommand on the `llavamini` command."""
    parser = commands.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API (chat completions)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_server_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone parser of `python -m llavamini.serve.server`."""
    parser = argparse.ArgumentParser(
        prog="python -m llavamini.serve.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_server_arguments(parser)
    return parser


def server_config(args: argparse.Namespace):
    """`ServerConfig` from the flags; exits with a message naming a bad one."""
    from llavamini.serve.cli import check_generation_arguments, generation_settings
    from llavamini.serve.openai_api import ServerConfig, default_model_name

    check_generation_arguments(args)
    if args.num_beams != 1:
        raise SystemExit("error: --num-beams: the server streams, so it decodes with one beam")
    if args.allowed_media_dir is not None and not os.path.isdir(args.allowed_media_dir):
        raise SystemExit(f"error: --allowed-media-dir {args.allowed_media_dir!r} is not a folder")
    if args.max_media_mb <= 0:
        raise SystemExit(f"error: --max-media-mb must be > 0, got {args.max_media_mb}")
    return ServerConfig(
        model_name=args.served_model_name or default_model_name(args.model_path),
        conv_mode=args.conv_mode,
        defaults=generation_settings(args),
        fps=args.fps,
        max_frames=args.max_frames,
        allowed_media_dir=args.allowed_media_dir,
        max_media_bytes=int(args.max_media_mb * 2**20),
    )


def build_server(args: argparse.Namespace):
    """A `uvicorn.Server` serving the checkpoint named by the flags (not yet started)."""
    import uvicorn

    from llavamini.serve.cli import load_from_args
    from llavamini.serve.openai_api import create_app

    config = server_config(args)  # checks the flags before the slow model load
    loaded, template = load_from_args(args)
    app = create_app(loaded, dataclasses.replace(config, conv_mode=template.name))
    if args.host not in LOOPBACK_HOSTS:
        logger.warning(
            "Listening on %s: anyone who can reach this machine can use the model (no auth).",
            args.host,
        )
    logger.info(
        "Serving %s (conv mode %s) at http://%s:%d/v1",
        config.model_name,
        template.name,
        args.host,
        args.port,
    )
    return uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))


def run(args: argparse.Namespace) -> None:
    """The `serve` command: load the model, then serve until interrupted."""
    build_server(args).run()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llavamini.serve.server`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
