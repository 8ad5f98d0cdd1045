"""Argument dataclasses shared by several commands (besides `ModelSpec` and
`GenerationSettings`): each field is one flag (`llavamini.flags`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llavamini.conversation import get_template


@dataclass(frozen=True)
class InputSettings:
    """How a conversation becomes model input: the chat template and video frame sampling.

    Attributes:
        conv_mode: chat template name (None: the checkpoint's, from its tokenizer).
        fps: video frames sampled per second (None: the checkpoint processor's, 1).
        max_frames: cap on video frames (None: the checkpoint processor's).
    """

    conv_mode: str | None = field(
        default=None,
        metadata={"help": "chat template (default: the checkpoint's, from its tokenizer)"},
    )
    fps: float | None = field(
        default=None,
        metadata={"help": "video frames per second (default: the checkpoint processor's, 1)"},
    )
    max_frames: int | None = field(
        default=None,
        metadata={"help": "cap on video frames (default: the checkpoint processor's)"},
    )

    def __post_init__(self):
        if self.conv_mode is not None:
            try:
                get_template(self.conv_mode)
            except KeyError as error:
                raise ValueError(error.args[0]) from error
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
