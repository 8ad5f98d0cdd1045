"""LLaVA-Mini as an lmms-eval model: `lmms-eval --model llava_mini --model_args pretrained=CKPT`.

`--model_args` (all but `pretrained` optional):

    pretrained=CKPT        checkpoint folder (or hub id already in the local HF cache)
    conv_mode=NAME         chat template (default: the checkpoint processor's)
    device=cpu|cuda|cuda:N|mps (default: the best available, as `llavamini eval run`)
    dtype=auto|float32|bfloat16|float16 (default: float16 on CUDA, else auto, the checkpoint's)
    batch_size=N           requests per `generate` call (default 1)
    video_fps=F, video_max_frames=N
                           video frame sampling (default 1 fps, no cap: `llavamini eval run`'s)
    attn_implementation=   sdpa (default), eager, flash_attention_2, ...

Every request becomes the user message `llavamini eval run` builds for a question (the
processor's `render`): the doc's images and videos first (lmms-eval hands PIL images and video
paths), then lmms-eval's context, which is the task's `doc_to_text` (prefix + question +
suffix). Batches are left-padded by the processor, so a batch's answers equal batch size 1's,
and with the same prompt and greedy settings they equal `llavamini eval run`'s.

Decoding follows the task's `generation_kwargs`: greedy unless `do_sample` or a temperature > 0
asks to sample; `max_new_tokens` (default 128), `top_p`, `num_beams`; generation stops at EOS or
the template's stop token, and the answer is cut at the first `until` string (lmms-eval sets
`until: ["\n\n"]` for a task that names none).

Data parallel: under `accelerate launch --num_processes N -m lmms_eval` (or `torchrun`), each
process loads the model on its own device (`cuda:LOCAL_RANK` on GPUs; the CPU is shared) and
lmms-eval's evaluator gives it every N-th doc (`rank`, `world_size`) and gathers the answers
and scores on rank 0. `batch_size` is per process. The padding requests the evaluator adds to
even out the ranks' request counts are not generated (their answers are discarded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator, simple_parse_args_string
from PIL import Image
from tqdm import tqdm

from llavamini.constants import IGNORE_INDEX
from llavamini.conversation import get_template
from llavamini.data.video import media_kind
from llavamini.eval.answers import RENAMED_SETTINGS
from llavamini.inference import GenerationSettings, generate
from llavamini.model.loading import LoadedModel, ModelSpec

logger = logging.getLogger(__name__)

GENERATION_KEYS = ("until", "max_new_tokens", "temperature", "do_sample", "top_p", "num_beams")
"""The `generation_kwargs` this model reads; others are logged once and ignored."""

PADDING_ONLY = "__padding_only__"
"""The metadata key lmms-eval's evaluator sets on the requests it adds to even out ranks."""

SHARED_DEVICES = ("cpu", "mps")
"""Device types that all the processes of a machine share (no per-process index)."""


def process_layout(accelerator: Accelerator) -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process among the evaluation's processes.

    Accelerate's when it launched several processes. Otherwise torch.distributed's: without
    GPUs, `accelerate launch --multi_gpu` and `torchrun` start N processes whose Accelerator
    reports one (distributed type NO) while torch.distributed holds their gloo group, the one
    lmms-eval's evaluator shards and gathers over. (0, 1, 0) for a lone process.
    """
    if accelerator.num_processes > 1:
        return (
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.local_process_index,
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank
    return 0, 1, 0


def process_device(device: str | None, local_rank: int, world_size: int) -> str | None:
    """The device this process loads the model on.

    One process keeps `device` (None: the best available, `ModelSpec.resolved_device`). With
    several, each takes its machine's accelerator number `local_rank` (`cuda` or `cuda:0` ->
    `cuda:LOCAL_RANK`), as lmms-eval's own models do; a CPU or MPS device is shared.
    """
    if world_size == 1:
        return device
    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else None)
    if kind is None or kind in SHARED_DEVICES:
        return device
    return f"{kind}:{local_rank}"


def visual_parts(visuals) -> list[dict]:
    """A doc's visuals (what `doc_to_visual` returns) -> transformers' content parts.

    A PIL image becomes an image part; a path becomes a video part when its suffix is a video
    one (`llavamini.data.video.VIDEO_EXTENSIONS`), else an image part. None or [] is no media.
    Raises `ValueError` for anything else (audio, arrays).
    """
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    parts = []
    for visual in visuals:
        if isinstance(visual, Image.Image):
            parts.append({"type": "image", "image": visual})
        elif isinstance(visual, str):
            parts.append({"type": media_kind(visual), "path": visual})
        else:
            raise ValueError(
                f"LLaVA-Mini takes PIL images and image/video paths, got {type(visual).__name__}."
            )
    return parts


def user_conversation(context: str, visuals) -> list[dict]:
    """One user message: the visuals, then the context (`runner.question_conversation`'s
    layout, so the rendered prompt is the runner's)."""
    content = visual_parts(visuals) + [{"type": "text", "text": context}]
    return [{"role": "user", "content": content}]


def generation_settings(gen_kwargs: dict, default_max_new_tokens: int) -> GenerationSettings:
    """lmms-eval `generation_kwargs` -> `GenerationSettings` (greedy unless they ask to
    sample)."""
    do_sample = gen_kwargs.get("do_sample")
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    sample = bool(do_sample) if do_sample is not None else temperature > 0
    temperature = (temperature or 1.0) if sample else 0.0
    return GenerationSettings(
        max_new_tokens=int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens),
        temperature=temperature,
        top_p=gen_kwargs.get("top_p") if sample else None,
        num_beams=int(gen_kwargs.get("num_beams") or 1),
    )


def stop_strings(gen_kwargs: dict) -> list[str]:
    """The `until` strings of `generation_kwargs` as a list (a lone string is one)."""
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        return [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"generation_kwargs 'until' must be a string or a list, got {until!r}.")
    return [s for s in until if s]


def settings_key(gen_kwargs: dict | None) -> str:
    """A string equal for equal `generation_kwargs` (the batching key)."""
    return json.dumps(gen_kwargs or {}, sort_keys=True, default=str)


def cut_at(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any of `stops`, stripped."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()


class LlavaMini(lmms):
    """LLaVA-Mini checkpoint behind lmms-eval's `lmms` interface (see the module docstring).

    Args:
        pretrained: checkpoint folder or cached hub id.
        conv_mode: chat template name (None: the checkpoint processor's).
        device, dtype, attn_implementation: model placement and precision.
        batch_size: requests per generate call in each process (int or a string of one).
        video_fps, video_max_frames: video frame sampling (`InputSettings`'s names).
        max_new_tokens: the budget when a task's `generation_kwargs` set none.
        loaded: an already loaded `LoadedModel` (tests, notebooks) instead of `pretrained`.
        reduction, reduction_tokens: a training-free vision-token reduction and its budget
            (`ModelSpec.reduction`; docs/token_reduction.md).
        kwargs: lmms-eval's other options (`max_batch_size`, ...), logged and ignored.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        conv_mode: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        video_fps: float = 1.0,
        video_max_frames: int | None = None,
        max_new_tokens: int = 128,
        attn_implementation: str | None = None,
        loaded: LoadedModel | None = None,
        reduction: str | None = None,
        reduction_tokens: int | str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if loaded is None and not pretrained:
            raise ValueError("llava_mini needs --model_args pretrained=CHECKPOINT.")
        renamed = sorted(kwargs.keys() & RENAMED_SETTINGS.keys())
        if renamed:
            raise ValueError(
                f"llava_mini's model_args {renamed} are now "
                f"{[RENAMED_SETTINGS[name] for name in renamed]}."
            )
        ignored = {k: v for k, v in kwargs.items() if v is not None}
        if ignored:
            logger.warning("llava_mini ignores the options %s.", ignored)
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            message = "batch_size must be an integer >= 1 ('auto' is not supported)"
            raise ValueError(f"{message}, got {batch_size!r}.")
        self.batch_size_per_call = int(batch_size)
        self.accelerator = Accelerator()
        self._rank, self._world_size, local_rank = process_layout(self.accelerator)
        if loaded is None:
            dtype = str(dtype).removeprefix("torch.") if dtype is not None else None
            device = process_device(device, local_rank, self._world_size)
            tokens = int(reduction_tokens) if reduction_tokens not in (None, "None", "") else None
            loaded = ModelSpec(
                pretrained,
                device,
                dtype,
                attn_implementation,
                reduction=reduction or None,
                reduction_tokens=tokens,
            ).load()
        loaded.model.eval()
        self.loaded = loaded
        self.conv_mode = conv_mode or loaded.processor.conv_mode
        self.template = get_template(self.conv_mode)
        max_frames = None if video_max_frames in (None, "None", "") else int(video_max_frames)
        self.processor = loaded.processor.with_video_policy(float(video_fps), max_frames)
        self.default_max_new_tokens = int(max_new_tokens)
        self._warned_keys: set[str] = set()
        logger.info(
            "llava_mini: %s, conv mode %s, batch size %d, on %s (process %d of %d).",
            pretrained,
            self.conv_mode,
            self.batch_size_per_call,
            loaded.model.device,
            self._rank,
            self._world_size,
        )

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """The model of `--model_args` (`arg_string`) and lmms-eval's `--batch_size`,
        `--max_batch_size` and `--device` (`additional_config`); `--model_args` win.

        lmms-eval's own version passes both and fails on a duplicate keyword, and its CLI always
        sets `--batch_size` (default 1), so `batch_size=N` in `--model_args` would never work.
        """
        args = simple_parse_args_string(arg_string)
        extra = {
            k: v for k, v in (additional_config or {}).items() if v is not None and k not in args
        }
        return cls(**args, **extra)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_call

    @property
    def device(self) -> torch.device:
        return self.loaded.model.device

    # ---- inputs ------------------------------------------------------------------------------

    def _doc_visuals(self, doc_to_visual: Callable, doc_id: int, task: str, split: str):
        return doc_to_visual(self.task_dict[task][split][doc_id])

    def model_inputs(self, conversations: Sequence[list[dict]]):
        """Conversations -> the processor's left-padded batch, with the generation prompt."""
        prompts, media = self.processor.render(conversations, True, chat_template=self.conv_mode)
        return self.processor.model_inputs(prompts, self.processor.process_media(media))

    def answer(self, conversations: Sequence[list[dict]], gen_kwargs: dict) -> list[str]:
        """Answers to a batch of conversations under one set of `generation_kwargs`."""
        unknown = set(gen_kwargs) - set(GENERATION_KEYS) - self._warned_keys
        if unknown:
            logger.warning("llava_mini ignores the generation_kwargs %s.", sorted(unknown))
            self._warned_keys |= unknown
        settings = generation_settings(gen_kwargs, self.default_max_new_tokens)
        with torch.inference_mode():
            texts = generate(self.loaded, self.model_inputs(conversations), settings, self.template)
        stops = stop_strings(gen_kwargs)
        return [cut_at(text, stops) for text in texts]

    # ---- lmms-eval's interface ---------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request `(context, gen_kwargs, doc_to_visual, doc_id, task, split)`,
        in the requests' order.

        Requests with equal `gen_kwargs` are batched `batch_size` at a time, longest context
        first (lmms-eval's `Collator`, as its own models batch). The evaluator's padding
        requests answer "" without generating: no rank waits for them (the model is not wrapped
        for collective forward passes, as DDP would), the evaluator discards their answers, and
        its response cache never stores an empty one.
        """
        answers = [""] * len(requests)
        work = [i for i, request in enumerate(requests) if not request.metadata.get(PADDING_ONLY)]
        collator = Collator(
            [requests[i].args for i in work],
            sort_fn=lambda args: (-len(args[0]), args[0]),
            group_fn=lambda args: {"generation_kwargs": settings_key(args[1])},
            grouping=True,
        )
        texts = []
        progress = tqdm(total=len(work), desc="llava_mini", unit="q", disable=self.rank != 0)
        for batch in collator.get_batched(n=self.batch_size_per_call):
            gen_kwargs = dict(batch[0][1] or {})
            conversations = []
            for context, _, doc_to_visual, doc_id, task, split in batch:
                visuals = self._doc_visuals(doc_to_visual, doc_id, task, split)
                conversations.append(user_conversation(context, visuals))
            for args, text in zip(batch, self.answer(conversations, gen_kwargs), strict=True):
                texts.append(text)
                self.cache_hook.add_partial("generate_until", (args[0], gen_kwargs), text)
            progress.update(len(batch))
        progress.close()
        for i, text in zip(work, collator.get_original(texts), strict=True):
            answers[i] = text
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request `(context, continuation, doc_to_visual, doc_id, task, split)`: the sum of
        the log-probabilities of the continuation's tokens after the prompt of `context` (with
        the doc's visuals), and whether each of them is the most likely token there.

        `continuation` may be a string or the task's `doc_to_target` (called on the doc). Its
        tokens are the tokenizer's for the continuation alone (no BOS), appended to the
        prompt's, so no token straddles the two.
        """
        results = []
        progress = tqdm(requests, desc="llava_mini loglikelihood", unit="q", disable=self.rank != 0)
        for request in progress:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            visuals = self._doc_visuals(doc_to_visual, doc_id, task, split)
            result = self.continuation_logprob(
                user_conversation(context, visuals), str(continuation)
            )
            results.append(result)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
        return results

    def continuation_logprob(
        self, conversation: list[dict], continuation: str
    ) -> tuple[float, bool]:
        """(sum of log P(continuation tokens | prompt), all of them greedy) for one
        conversation, the assistant's answer starting right after the generation prompt.

        The continuation goes in as `labels`, as in training: LLaVA-Mini's pre-fusion mixes the
        prompt's text into the vision tokens, and labelled tokens are kept out of it, as the
        answer is absent when the vision tokens are made for generation.
        """
        inputs = self.model_inputs([conversation])
        target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not target:
            return 0.0, True
        prompt_ids = inputs["input_ids"]
        target_ids = torch.tensor([target], dtype=prompt_ids.dtype)
        input_ids = torch.cat([prompt_ids, target_ids], dim=1).to(self.device)
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids], dim=1)
        labels = labels.to(self.device)
        attention_mask = torch.ones_like(input_ids)
        with torch.inference_mode():
            if "images" in inputs:
                embeds, attention_mask, labels, position_ids = self.model.model.embed_multimodal(
                    input_ids, attention_mask, labels, inputs["images"]
                )
                logits = self.model(
                    inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids
                ).logits
            else:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        # The logits at position p predict the token at p + 1.
        predicted = labels[0, 1:] != IGNORE_INDEX
        if int(predicted.sum()) != len(target):
            raise ValueError(
                f"The prompt and its continuation ({input_ids.shape[1]} tokens) exceed the "
                "model's tokenizer_model_max_length: the continuation was cut."
            )
        logprobs = logits[0, :-1][predicted].float().log_softmax(dim=-1)
        wanted = labels[0, 1:][predicted]
        logprob = logprobs.gather(1, wanted[:, None]).sum().item()
        greedy = bool((logprobs.argmax(dim=-1) == wanted).all())
        return float(logprob), greedy

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Per request `(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)`,
        the answers of each round.

        Round 0 answers the context with the doc's visuals; each later round asks the task's
        `doc_to_text(doc, previous_output=..., round_idx=..., previous_round_info=...)` for
        `(visuals, context, terminal, previous outputs, round info)` and stops when `terminal`
        is true. Each round is one user message, as lmms-eval's multi-round tasks build the
        history into the context. Requests run one at a time (rounds depend on answers).
        """
        results = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            doc = self.task_dict[task][split][doc_id]
            visuals = doc_to_visual(doc)
            round_answers: list[str] = []
            round_info = None
            round_idx = 0
            while True:
                if round_idx > 0:
                    visuals, context, terminal, _, round_info = doc_to_text(
                        doc,
                        previous_output=list(round_answers),
                        round_idx=round_idx,
                        previous_round_info=round_info,
                    )
                    if terminal:
                        break
                (text,) = self.answer([user_conversation(context, visuals)], gen_kwargs)
                round_answers.append(text)
                round_idx += 1
            results.append(round_answers)
            self.cache_hook.add_partial(
                "generate_until_multi_round", (request.args[0], gen_kwargs), round_answers
            )
        return results
