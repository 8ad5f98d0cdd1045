"""What the chat, serve and gradio commands share to start: loading the model with its chat
template, and where a server listens."""

from __future__ import annotations

from dataclasses import dataclass, field

from llavamini.conversation import ChatTemplate
from llavamini.errors import UsageError
from llavamini.inference import InputSettings
from llavamini.model.loading import LoadedModel, ModelLoadError, ModelSpec
from llavamini.serve.session import resolve_template


@dataclass(frozen=True)
class Address:
    """Where a server listens (`serve`, `gradio`): loopback unless `host` says otherwise."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (loopback)"})
    port: int = field(default=8000, metadata={"help": "TCP port"})

    def __post_init__(self):
        if not 0 <= self.port < 2**16:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")


def load_chat_model(model: ModelSpec, inputs: InputSettings) -> tuple[LoadedModel, ChatTemplate]:
    """`(LoadedModel, ChatTemplate)` of `model` (`ModelSpec.load`) and `inputs.conv_mode` (None:
    the checkpoint's); raises `UsageError` when the checkpoint does not load."""
    try:
        loaded = model.load()
    except (FileNotFoundError, ValueError, ModelLoadError) as error:
        raise UsageError(str(error)) from error
    return loaded, resolve_template(inputs.conv_mode, loaded.processor)
