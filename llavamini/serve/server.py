"""`llavamini serve` (also `python -m llavamini.serve.server`): the OpenAI-compatible HTTP API.

    llavamini serve --model-path PATH [--host 127.0.0.1] [--port 8000] [--allowed-media-dir DIR]

`POST /v1/chat/completions` (plain or `"stream": true`) and `GET /v1/models`; see
`llavamini.serve.openai_api` for the request format. The server listens on 127.0.0.1 only unless
`--host` says otherwise, reads local media files only inside `--allowed-media-dir`, and runs one
generation at a time (later requests wait in arrival order).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

from llavamini.errors import UsageError
from llavamini.flags import standalone_main, standalone_parser
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec
from llavamini.serve.session import CHAT_DEFAULTS, CHAT_INPUTS
from llavamini.serve.startup import Address, load_chat_model

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
PROG = "python -m llavamini.serve.server"


@dataclass(frozen=True)
class ServeOptions:
    """What `serve` accepts in requests.

    Attributes:
        allowed_media_dir: the only folder whose files requests may name by path (None: data
            URLs only).
        served_model_name: model id in responses (None: the checkpoint folder's name).
        max_media_mb: largest media file in a request, in MiB.
    """

    allowed_media_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder whose files requests may name by path (default: none, data URLs only)"
        },
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "model id in responses (default: folder name)"}
    )
    max_media_mb: float = field(
        default=100.0, metadata={"help": "largest media file in a request (MiB)"}
    )

    def __post_init__(self):
        if not self.max_media_mb > 0:
            raise ValueError(f"max_media_mb must be > 0, got {self.max_media_mb}")


def server_config(
    model: ModelSpec, generation: GenerationSettings, inputs: InputSettings, options: ServeOptions
):
    """`ServerConfig` of the settings; raises `UsageError` naming a bad one."""
    # fastapi (the serve extra) is imported by the command that serves, not by `--help`.
    from llavamini.serve.openai_api import ServerConfig, default_model_name

    if generation.num_beams != 1:
        raise UsageError("--num-beams: the server streams, so it decodes with one beam")
    if options.allowed_media_dir is not None and not os.path.isdir(options.allowed_media_dir):
        raise UsageError(f"--allowed-media-dir {options.allowed_media_dir!r} is not a folder")
    return ServerConfig(
        model_name=options.served_model_name or default_model_name(model.path),
        conv_mode=inputs.conv_mode,
        defaults=generation,
        video_fps=inputs.video_fps,
        video_max_frames=inputs.video_max_frames,
        allowed_media_dir=options.allowed_media_dir,
        max_media_bytes=int(options.max_media_mb * 2**20),
    )


def build_server(
    model: ModelSpec,
    generation: GenerationSettings,
    inputs: InputSettings,
    address: Address,
    options: ServeOptions,
):
    """A `uvicorn.Server` serving the checkpoint (not yet started); `serve`'s arguments."""
    # uvicorn and fastapi (the serve extra) are imported by the command that serves.
    import uvicorn

    from llavamini.serve.openai_api import create_app

    config = server_config(model, generation, inputs, options)  # before the slow model load
    loaded, template = load_chat_model(model, inputs)
    app = create_app(loaded, dataclasses.replace(config, conv_mode=template.name))
    if address.host not in LOOPBACK_HOSTS:
        logger.warning(
            "Listening on %s: anyone who can reach this machine can use the model (no auth).",
            address.host,
        )
    logger.info(
        "Serving %s (conv mode %s) at http://%s:%d/v1",
        config.model_name,
        template.name,
        address.host,
        address.port,
    )
    return uvicorn.Server(
        uvicorn.Config(app, host=address.host, port=address.port, log_level="info")
    )


def serve(
    model: ModelSpec,
    generation: GenerationSettings = CHAT_DEFAULTS,
    inputs: InputSettings = CHAT_INPUTS,
    address: Address = Address(port=8000),
    options: ServeOptions = ServeOptions(),
) -> None:
    """The `serve` command: load the model, then serve until interrupted."""
    build_server(model, generation, inputs, address, options).run()


def build_parser():
    """The stand-alone parser of `python -m llavamini.serve.server`."""
    return standalone_parser(serve, PROG, __doc__)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llavamini.serve.server`."""
    standalone_main(serve, PROG, __doc__, argv)


if __name__ == "__main__":
    main()
