"""Token ids and strings shared by the model, the data pipeline and the prompts (LLaVA values)."""

IGNORE_INDEX = -100
"""Label value that the loss ignores."""

IMAGE_TOKEN_INDEX = -200
"""Input id that marks where an image's (or a video's) vision tokens are spliced in."""

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_VIDEO_TOKEN = "<video>"

SHORT_ANSWER = "Answer the question using a single word or phrase."
"""LLaVA's answer-format suffix for short-answer questions (VQAv2, GQA, ... and the quickstart)."""
