"""`LlavaMiniProcessor`: messages and media -> the model's inputs, the one preprocessing path.

transformers' calling conventions (as its `LlavaProcessor`):

    processor = AutoProcessor.from_pretrained(ckpt)      # after `import llavamini`
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    answers = processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)

`inputs` holds `input_ids` `(B, L)` (left-padded by default) with one `IMAGE_TOKEN_INDEX` (-200)
per image or video, `attention_mask` `(B, L)`, and, when the batch has any media, `images`: per
sample, the pixel tensors in placeholder order, `(parts, 3, H, W)` for an image and
`(T, parts, 3, H, W)` for a video (the model's `images` argument).

Three steps, each public, are all there is; `__call__` and `apply_chat_template` compose them:

1. `render`: messages -> prompt strings with the conv mode's Jinja chat template
   (`llavamini.conversation`); transformers' content parts are joined by newlines, an image
   part written `<image>` and a video part `<video>` (`llavamini.data.messages`);
2. `process_image` / `process_video`: one image or video -> pixel tensor (the reference's
   preprocessing; the frame policy `video_fps` / `video_max_frames` of training and evaluation);
3. `model_inputs`: prompt strings + pixel tensors -> the batch (placeholders checked).

Chat, the server, evaluation, analysis and the training dataset all go through these steps.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence

import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from llavamini.conversation import (
    TEMPLATES,
    ChatTemplate,
    default_template_name,
    get_template,
    render,
    template_for_call,
)
from llavamini.data.image_processing import process_images
from llavamini.data.messages import (
    Messages,
    as_batch,
    is_batch,
    media_in_placeholder_order,
    parse_conversation,
    to_pil_image,
    to_video_frames,
)
from llavamini.data.tokenization import tokenize_batch
from llavamini.data.video import MAX_VIDEO_FRAMES, process_video
from llavamini.model.checkpoint import hub_options, resolve_checkpoint_dir
from llavamini.model.configuration_llavamini import IMAGE_ASPECT_RATIOS
from llavamini.model.image_processors import (
    PROCESSOR_CONFIG_FILE,
    PROCESSOR_SETTINGS,
    checkpoint_preprocessing,
    read_processor_config,
)

LOADER_OPTIONS = ("_from_auto", "_from_pipeline", "trust_remote_code", "code_revision", "dtype")
"""Options that `AutoProcessor` and `pipeline` pass to every `from_pretrained`, which do not
concern this processor."""

logger = logging.getLogger(__name__)


def check_video_policy(fps: float, max_frames: int | None) -> None:
    """Raise unless `fps` > 0 and `max_frames` is None or >= 1."""
    if not fps > 0:
        raise ValueError(f"video_fps must be > 0, got {fps!r}.")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"video_max_frames must be >= 1 or None, got {max_frames!r}.")


def checkpoint_conv_mode(name_or_path: str) -> str:
    """The conv mode of a checkpoint's processor (a folder, or a hub id in the local HF cache):
    `processor_config.json`'s, else the one its tokenizer implies (`default_template_name`),
    without loading the processor."""
    checkpoint_dir = resolve_checkpoint_dir(name_or_path)
    conv_mode = (read_processor_config(checkpoint_dir) or {}).get("conv_mode")
    if conv_mode is not None:
        return conv_mode
    return default_template_name(AutoTokenizer.from_pretrained(checkpoint_dir))


def render_conversation(
    conversation: Messages,
    template: ChatTemplate,
    add_generation_prompt: bool,
    tokenizer,
    number: int = 0,
) -> tuple[str, list[tuple[str, object]]]:
    """One conversation -> (its prompt string, the `(kind, source)` of its media in placeholder
    order): `LlavaMiniProcessor.render`'s step for one conversation, the only place a leading
    system message replaces the template's system prompt.

    `tokenizer` is the processor's (its special tokens; the template of 'chat_template').
    Raises `ValueError` naming conversation `number`'s malformed message and part.
    """
    messages, system, media = parse_conversation(conversation, number)
    chosen = template if system is None else dataclasses.replace(template, system=system)
    return render(chosen, messages, add_generation_prompt, tokenizer), media


class LlavaMiniProcessor(ProcessorMixin):
    """A CLIP/SigLIP image processor and a tokenizer, with the chat template of a conv mode.

    Args:
        image_processor: the encoder's (PIL) image processor.
        tokenizer: the LLM's tokenizer.
        conv_mode: a `llavamini.conversation.TEMPLATES` name (None: from the tokenizer, see
            `default_template_name`).
        image_aspect_ratio, resolution_ratio: the model config's image preprocessing ('pad' or
            'square'; N x N crops + the global view for N > 1).
        video_fps, video_max_frames: frames taken per second of video, and their cap
            (`llavamini.data.video.MAX_VIDEO_FRAMES` by default, the commands' and training's;
            None: no cap, as the reference's inference).
        padding_side: of the batches `model_inputs` builds ('left' for generation).
        chat_template: only the conv mode's own (the template follows `conv_mode`).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        conv_mode: str | None = None,
        image_aspect_ratio: str = "pad",
        resolution_ratio: int = 1,
        video_fps: float = 1.0,
        video_max_frames: int | None = MAX_VIDEO_FRAMES,
        padding_side: str = "left",
        chat_template: str | None = None,
    ):
        if conv_mode is None:
            conv_mode = default_template_name(tokenizer)
        if conv_mode not in TEMPLATES:
            raise ValueError(f"conv_mode must be one of {sorted(TEMPLATES)}, got {conv_mode!r}.")
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(
                f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, got "
                f"{image_aspect_ratio!r}."
            )
        if not isinstance(resolution_ratio, int) or resolution_ratio < 1:
            raise ValueError(f"resolution_ratio must be an integer >= 1, got {resolution_ratio!r}.")
        check_video_policy(video_fps, video_max_frames)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        own_template = get_template(conv_mode).chat_template(tokenizer)
        if chat_template is not None and chat_template != own_template:
            raise ValueError(
                "LlavaMiniProcessor's chat template follows conv_mode: pass conv_mode (one of "
                f"{sorted(TEMPLATES)}), or chat_template= to apply_chat_template for one call."
            )
        self.conv_mode = conv_mode
        self.image_aspect_ratio = image_aspect_ratio
        self.resolution_ratio = resolution_ratio
        self.video_fps = float(video_fps)
        self.video_max_frames = video_max_frames
        self.padding_side = padding_side
        super().__init__(image_processor, tokenizer, chat_template=own_template)

    @classmethod
    def from_config(cls, image_processor, tokenizer, config, **settings) -> LlavaMiniProcessor:
        """A processor with the image preprocessing of a model `config`; `settings` set the
        other fields."""
        return cls(
            image_processor,
            tokenizer,
            image_aspect_ratio=config.image_aspect_ratio,
            resolution_ratio=config.resolution_ratio,
            **settings,
        )

    @property
    def template(self) -> ChatTemplate:
        return get_template(self.conv_mode)

    def with_video_policy(self, fps: float, max_frames: int | None) -> LlavaMiniProcessor:
        """A copy that samples videos at `fps`, capped at `max_frames` (None: no cap)."""
        check_video_policy(fps, max_frames)
        processor = copy.copy(self)
        processor.video_fps, processor.video_max_frames = float(fps), max_frames
        return processor

    # ---- loading and saving ----------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> LlavaMiniProcessor:
        """The processor of a checkpoint (a folder, or a hub id in the local HF cache).

        Reads `processor_config.json` when the checkpoint has one; else (the released
        checkpoints) builds the processor from the tokenizer, the image preprocessing of the
        checkpoint or its vision tower, and the model config, and says so in one line.
        `kwargs` may set any of `PROCESSOR_SETTINGS` (`conv_mode="vicuna_v1"`, ...) and the
        hub options (`llavamini.model.checkpoint.HUB_OPTIONS`).
        """
        hub = hub_options(kwargs)
        for option in (*hub, *LOADER_OPTIONS):
            kwargs.pop(option, None)
        unknown = set(kwargs) - set(PROCESSOR_SETTINGS)
        if unknown:
            raise TypeError(
                f"LlavaMiniProcessor.from_pretrained got unknown arguments {sorted(unknown)}; "
                f"it takes {list(PROCESSOR_SETTINGS)}."
            )
        checkpoint_dir = resolve_checkpoint_dir(str(pretrained_model_name_or_path), **hub)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
        image_processor, settings, saved = checkpoint_preprocessing(
            checkpoint_dir, hub.get("cache_dir")
        )
        processor = cls(image_processor, tokenizer, **{**settings, **kwargs})
        if not saved:
            logger.warning(
                "%s has no %s: built the processor from its tokenizer and config (conv mode "
                "%s); processor.save_pretrained(...) writes one.",
                pretrained_model_name_or_path,
                PROCESSOR_CONFIG_FILE,
                processor.conv_mode,
            )
        return processor

    def save_pretrained(self, save_directory, **kwargs):
        """Write `processor_config.json` (image processor + `PROCESSOR_SETTINGS`) and the
        tokenizer.

        No `chat_template.jinja` is written: the template follows `conv_mode`, and that file
        would replace the tokenizer's own chat template when the folder is loaded again.
        """
        chat_template, self.chat_template = self.chat_template, None
        try:
            return super().save_pretrained(save_directory, **kwargs)
        finally:
            self.chat_template = chat_template

    # ---- 1. rendering ----------------------------------------------------------------------

    def render(
        self,
        conversations: Messages | Sequence[Messages],
        add_generation_prompt: bool = False,
        chat_template: str | ChatTemplate | None = None,
    ) -> tuple[list[str], list[list[tuple[str, object]]]]:
        """Conversations in transformers' chat format -> (prompt strings, per conversation the
        `(kind, source)` of its images and videos in placeholder order).

        `chat_template` is a conv mode name, a `ChatTemplate` or Jinja source for this call
        (default: the processor's). A leading system message replaces the template's system
        prompt. Raises `ValueError` naming the message and part that is malformed.
        """
        template = template_for_call(chat_template, self.template)
        rendered = [
            render_conversation(conversation, template, add_generation_prompt, self.tokenizer, i)
            for i, conversation in enumerate(as_batch(conversations))
        ]
        return [prompt for prompt, _ in rendered], [media for _, media in rendered]

    def apply_chat_template(
        self,
        conversation: Messages | Sequence[Messages],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """transformers' `apply_chat_template`: the prompt (a string, or a list for a batch of
        conversations); with `tokenize`, the `input_ids` (or, with `return_dict`, the whole
        batch of model inputs, media loaded and processed).

        `processor_kwargs` (and the keyword arguments of `model_inputs` given directly:
        `padding_side`, `add_special_tokens`, `padding`) shape the batch. Raises `TypeError`
        for options this processor does not support (tools, documents,
        `continue_final_message`, assistant masks).
        """
        options = dict(processor_kwargs or {})
        for name in ("padding_side", "add_special_tokens", "padding"):
            if name in kwargs:
                options[name] = kwargs.pop(name)
        unsupported = sorted(k for k, v in kwargs.items() if v not in (None, False))
        if unsupported:
            raise TypeError(
                f"LlavaMiniProcessor.apply_chat_template does not support {unsupported}."
            )
        options.setdefault("return_tensors", return_tensors)
        prompts, media = self.render(conversation, add_generation_prompt, chat_template)
        batched = is_batch(conversation)
        if not tokenize:
            return prompts if batched else prompts[0]
        inputs = self.model_inputs(prompts, self.process_media(media), **options)
        return inputs if return_dict else inputs["input_ids"]

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        """Decode token ids (the placeholders of a prompt left out), as the image-text-to-text
        pipeline asks."""
        rows = [[int(t) for t in row if int(t) >= 0] for row in generated_outputs]
        return self.batch_decode(rows, skip_special_tokens=skip_special_tokens, **kwargs)

    # ---- 2. media ----------------------------------------------------------------------------

    def process(self, kind: str, source) -> torch.Tensor:
        """`process_image` or `process_video` by `kind` ('image' or 'video')."""
        if kind == "image":
            return self.process_image(source)
        if kind == "video":
            return self.process_video(source)
        raise ValueError(f"Media kind must be 'image' or 'video', got {kind!r}.")

    def process_media(
        self, media: Sequence[Sequence[tuple[str, object]]]
    ) -> list[list[torch.Tensor]]:
        """Per sample, its `(kind, source)` media (as `render` returns them) -> pixel tensors."""
        return [[self.process(kind, source) for kind, source in sample] for sample in media]

    def process_image(self, image) -> torch.Tensor:
        """One image -> `(parts, 3, H, W)` float32 pixels (parts: 1, or N*N crops + global).

        `image`: a PIL image, a file path or `file://` URL, a base64 `data:` URL, or an
        `(H, W, 3)` uint8 array. Raises `FileNotFoundError` / `ValueError` naming the source.
        """
        return process_images([to_pil_image(image)], self.image_processor, self)[0]

    def process_video(self, video) -> torch.Tensor:
        """One video -> `(T, parts, 3, H, W)` float32 pixels, frames sampled at `video_fps`
        (capped at `video_max_frames`).

        `video`: a file path or `file://` URL, or decoded frames `(T, H, W, 3)` uint8 (taken as
        they are, already sampled).
        """
        frames = to_video_frames(video, self.video_fps, self.video_max_frames)
        return process_video(frames, self.image_processor, self)

    # ---- 3. the batch ------------------------------------------------------------------------

    def model_inputs(
        self,
        prompts: Sequence[str],
        visuals: Sequence[Sequence[torch.Tensor]] | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        add_special_tokens: bool = True,
        padding: bool | str = True,
    ) -> BatchFeature:
        """Rendered prompts and, per prompt, its processed images and videos in placeholder
        order -> `input_ids`, `attention_mask` (and `images` when there is any media).

        A BOS is prepended when `add_special_tokens` and the prompt does not start with it.
        Rows are padded to the longest (`padding` True or 'longest'; nothing else is
        supported). Raises `ValueError` naming the sample whose placeholders and media disagree.
        """
        if padding not in (True, "longest"):
            raise ValueError(f"padding must be True or 'longest', got {padding!r}.")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' (or None), got {return_tensors!r}.")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        visuals = [list(v) for v in visuals] if visuals is not None else [[] for _ in prompts]
        if len(visuals) != len(prompts):
            raise ValueError(f"Got media for {len(visuals)} prompts but {len(prompts)} prompts.")
        ids, mask = tokenize_batch(
            prompts, [len(v) for v in visuals], self.tokenizer, side, add_special_tokens
        )
        data = {"input_ids": ids, "attention_mask": mask}
        if any(visuals):
            data["images"] = visuals
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["images"])

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        videos=None,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        add_special_tokens: bool = True,
        padding: bool | str = True,
        **kwargs,
    ) -> BatchFeature:
        """Prompt text(s) with `<image>` / `<video>` placeholders, and their media -> the batch.

        `images` / `videos`: for one text, a list of its media (or one item); for a batch, a
        list per text, or a flat list shared out in placeholder order. The k-th `<image>` of a
        text takes its k-th image, the k-th `<video>` its k-th video (see `process_image`,
        `process_video` for the accepted forms). `padding` is always to the longest text.
        """
        if kwargs:
            raise TypeError(f"LlavaMiniProcessor got unsupported arguments {sorted(kwargs)}.")
        if text is None:
            raise ValueError("LlavaMiniProcessor needs text with a placeholder per image/video.")
        prompts = [text] if isinstance(text, str) else list(text)
        visuals = self.process_media(media_in_placeholder_order(prompts, images, videos))
        return self.model_inputs(
            prompts, visuals, padding_side, return_tensors, add_special_tokens, padding
        )

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "images"]
