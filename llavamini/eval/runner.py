"""Answer a task's questions with a checkpoint: sharded, batched, resumable.

`run_questions(config)`:

1. reads the task's question file and takes chunk `chunk_idx` of `num_chunks`;
2. reads the answer file if it exists, cuts off a partial last line left by a killed run, checks
   that its answers were produced with the same settings, and skips the questions it answers;
3. checks that every remaining question's image or video exists (before loading the model);
4. loads the model and answers the rest in batches (`inference.generate` left-pads, so a batch's
   answers equal batch-size-1 answers), loading the next batches' visuals in worker threads, and
   appends each answer durably (`answers.AnswerWriter`).

Each answer line's `metadata` is `{"settings": {...}, "batch_size": B, "chunk": "I/N"}`;
`settings` names the task, checkpoint, model name, template, prompt prefix (SHA-256 and where
it came from), prompt suffix and whether the question file carries it, decoding settings, dtype
and, for videos, fps and frame cap. A resumed run must have the same `settings`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm import tqdm

from llavamini import inference
from llavamini.conversation import ChatTemplate, get_template
from llavamini.eval.answers import AnswerWriter, prepare_for_resume, record_key, run_settings
from llavamini.eval.sharding import get_chunk
from llavamini.eval.tasks.base import InlineImage, Question, Task
from llavamini.inference import GenerationSettings
from llavamini.model.loading import ModelSpec
from llavamini.model.reduction import TokenReduction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """One `llavamini eval run`.

    Attributes:
        task: the benchmark.
        model_path: checkpoint folder (or hub id in the local cache).
        answers_file: where answers are appended.
        questions_file: the question file.
        visual_folder: folder that image / video paths in the question file are relative to.
        conv_mode: chat template name.
        batch_size: questions per `generate` call.
        num_chunks, chunk_idx, shard_mode: which part of the questions this process answers.
        max_new_tokens: None for the task's default (the reference's).
        temperature, top_p, num_beams: decoding (temperature 0 = greedy, the default).
        fps, max_frames: video frame sampling (reference: 1 fps, no cap).
        prompt_prefix: None for the task's default; else this text before every question.
        prompt_prefix_source: where `prompt_prefix` came from (recorded).
        model_name: `model_id` of the answer lines (default: the checkpoint folder's name).
        device, dtype, attn_implementation: model placement and precision.
        token_reduction: a training-free vision-token reduction (None: none), applied to the
            model for this run (`llavamini.model.reduction`).
        num_workers: threads loading visuals ahead of generation (0: in the main thread).
        limit: answer only the first N questions of the chunk (smoke runs).
    """

    task: Task
    model_path: str
    answers_file: str
    questions_file: str
    visual_folder: str
    conv_mode: str = "llava_llama_3_1"
    batch_size: int = 1
    num_chunks: int = 1
    chunk_idx: int = 0
    shard_mode: str = "contiguous"
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    fps: float = 1.0
    max_frames: int | None = None
    prompt_prefix: str | None = None
    prompt_prefix_source: str = "task default"
    model_name: str | None = None
    device: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    token_reduction: TokenReduction | None = None
    num_workers: int = 2
    limit: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}.")
        self.generation()  # decoding settings are checked once, here, as for chat and serve

    def generation(self) -> GenerationSettings:
        """The decoding settings (`max_new_tokens`: the task's default when None)."""
        return GenerationSettings(**self.settings()["generation"])

    @property
    def prefix(self) -> str:
        return self.task.prompt_prefix if self.prompt_prefix is None else self.prompt_prefix

    @property
    def model_id(self) -> str:
        return self.model_name or os.path.basename(os.path.normpath(self.model_path))

    def settings(self) -> dict:
        """What determines the answers; recorded in every line and compared on resume."""
        task = self.task
        settings = {
            "task": task.name,
            "model_path": self.model_path,
            "model_id": self.model_id,
            "conv_mode": self.conv_mode,
            "prompt_prefix_sha256": hashlib.sha256(self.prefix.encode("utf-8")).hexdigest()
            if self.prefix
            else None,
            "prompt_prefix_source": self.prompt_prefix_source if self.prefix else None,
            "prompt_suffix": task.prompt_suffix,
            "suffix_source": "question file" if task.suffix_in_file else "appended by the runner",
            "generation": {
                "max_new_tokens": self.max_new_tokens or task.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "num_beams": self.num_beams,
            },
            "dtype": self.dtype,
        }
        if self.token_reduction is not None:  # absent otherwise: older answer files resume
            settings["token_reduction"] = dataclasses.asdict(self.token_reduction)
        if task.modality == "video":
            settings.update(fps=self.fps, max_frames=self.max_frames)
        return settings


def pending_questions(config: RunConfig) -> tuple[list[Question], int, int]:
    """This chunk's questions not yet answered in the answer file.

    Returns:
        (questions to answer, size of the chunk, answers already there).
    """
    questions = config.task.read_questions(config.questions_file, config.visual_folder)
    seen = set()
    for question in questions:
        if question.key in seen:
            raise ValueError(
                f"{config.questions_file}: question_id {question.question_id!r} with the same "
                f"prompt appears twice."
            )
        seen.add(question.key)
    chunk = get_chunk(questions, config.num_chunks, config.chunk_idx, config.shard_mode)
    if config.limit is not None:
        chunk = chunk[: config.limit]
    existing = prepare_for_resume(config.answers_file)
    _check_same_settings(existing, config)
    done = {record_key(record) for record in existing}
    outside = done - {question.key for question in chunk}
    if outside:
        raise ValueError(
            f"{config.answers_file} answers {len(outside)} questions outside chunk "
            f"{config.chunk_idx}/{config.num_chunks} of {config.questions_file}: it belongs to "
            f"another chunk or question file."
        )
    return [q for q in chunk if q.key not in done], len(chunk), len(done)


def _check_same_settings(existing: Sequence[dict], config: RunConfig) -> None:
    found = run_settings(existing)
    current = config.settings()
    for settings in found:
        if settings != current:
            changed = sorted(
                k for k in set(settings) | set(current) if settings.get(k) != current.get(k)
            )
            raise ValueError(
                f"{config.answers_file} holds answers produced with other settings (differs in "
                f"{changed}: {[settings.get(k) for k in changed]} there, "
                f"{[current.get(k) for k in changed]} now). Use another --answers-file or "
                f"--overwrite."
            )


def check_visuals_exist(questions: Sequence[Question]) -> None:
    """Raise listing the image or video files that are missing (before any model loading)."""
    missing = [q for q in questions if isinstance(q.visual, str) and not os.path.isfile(q.visual)]
    if missing:
        examples = "; ".join(f"question {q.question_id!r}: {q.visual}" for q in missing[:5])
        raise FileNotFoundError(
            f"{len(missing)} of {len(questions)} questions have no image/video file, e.g. "
            f"{examples}. Check --visual-folder (and --data-root)."
        )


def question_media(question: Question, task: Task) -> tuple[str, str] | None:
    """`(kind, source)` of a question's visual: 'image' or 'video' (the task's modality) and its
    path, or a base64 `data:` URL for an inline image; None for a text-only question."""
    if question.visual is None:
        return None
    if isinstance(question.visual, InlineImage):
        return "image", "data:image;base64," + question.visual.base64
    return task.modality, question.visual


def question_conversation(question: Question, task: Task, prefix: str) -> list[dict]:
    """The question as one user message in transformers' chat format: its image or video and
    then its text (see `Task.question_text`)."""
    media = question_media(question, task)
    content = [{"type": media[0], "url": media[1]}] if media is not None else []
    content.append({"type": "text", "text": task.question_text(question, prefix)})
    return [{"role": "user", "content": content}]


def load_question_visual(question: Question, processor, task: Task):
    """The pixel tensor of a question's visual: `(parts, 3, H, W)` for an image,
    `(T, parts, 3, H, W)` for a video; None for a text-only question. Errors name the
    question."""
    media = question_media(question, task)
    if media is None:
        return None
    try:
        return processor.process(*media)
    except (OSError, ValueError) as error:
        raise ValueError(f"Question {question.question_id!r}: {error}") from error


def _batches(items: Sequence, size: int) -> list[list]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def prefetched(
    batches: Sequence[list], load: Callable, workers: int
) -> Iterator[tuple[list, list]]:
    """Yield `(batch, load(batch))`, loading up to `workers` batches ahead in threads."""
    if workers <= 0:
        for batch in batches:
            yield batch, load(batch)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque = deque()
        upcoming = iter(batches)
        for batch in upcoming:
            queue.append((batch, pool.submit(load, batch)))
            if len(queue) > workers:
                break
        while queue:
            batch, future = queue.popleft()
            following = next(upcoming, None)
            if following is not None:
                queue.append((following, pool.submit(load, following)))
            yield batch, future.result()


def answer_record(question: Question, text: str, config: RunConfig, metadata: dict) -> dict:
    """One line of the answer file (LLaVA's schema plus the task's extra fields)."""
    record = {
        "question_id": question.question_id,
        "prompt": question.prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex,
        "model_id": config.model_id,
    }
    record.update(question.extra)
    record["metadata"] = metadata
    return record


def load_model(config: RunConfig):
    """`LoadedModel` of the checkpoint on the configured device and dtype, in eval mode."""
    spec = ModelSpec(config.model_path, config.device, config.dtype, config.attn_implementation)
    return spec.load()


def run_questions(config: RunConfig, loaded=None) -> str:
    """Answer this chunk's unanswered questions into `config.answers_file`; returns its path.

    Args:
        config: what to run.
        loaded: an already loaded `LoadedModel` (tests, notebooks); loaded from
            `config.model_path` when None and there is something to answer.
    """
    template = get_template(config.conv_mode)
    todo, chunk_size, done = pending_questions(config)
    logger.info(
        "%s chunk %d/%d: %d questions, %d already answered in %s, %d to go.",
        config.task.name,
        config.chunk_idx,
        config.num_chunks,
        chunk_size,
        done,
        config.answers_file,
        len(todo),
    )
    if not todo:
        if not os.path.exists(config.answers_file):
            AnswerWriter(config.answers_file).close()  # an empty chunk still leaves its file
        return config.answers_file
    check_visuals_exist(todo)
    loaded = loaded if loaded is not None else load_model(config)
    settings = config.settings()
    metadata = {
        "settings": settings,
        "batch_size": config.batch_size,
        "chunk": f"{config.chunk_idx}/{config.num_chunks}",
    }
    logger.info("Settings: %s", settings)
    answered = answer_batches(config, loaded, todo, template)
    description = f"{config.task.name} [{config.chunk_idx}/{config.num_chunks}]"
    with (
        AnswerWriter(config.answers_file) as writer,
        tqdm(total=chunk_size, initial=done, desc=description, unit="q") as bar,
        loaded.model.token_reduction_applied(config.token_reduction),
    ):
        for batch, texts in answered:
            for question, text in zip(batch, texts, strict=True):
                writer.write(answer_record(question, text, config, metadata))
            bar.update(len(batch))
    return config.answers_file


def answer_batches(
    config: RunConfig, loaded, questions: Sequence[Question], template: ChatTemplate
) -> Iterator[tuple[list[Question], list[str]]]:
    """`(batch, answers)` for each batch of `questions` in order, the next batches' visuals
    loading in worker threads. The decoding and video settings are checked at the call, before
    the first batch."""
    generation = config.generation()
    processor = loaded.processor.with_video_policy(config.fps, config.max_frames)

    def load_batch(batch: list[Question]) -> list:
        return [load_question_visual(q, processor, config.task) for q in batch]

    def answer(batch: list[Question], visuals: list) -> list[str]:
        conversations = [question_conversation(q, config.task, config.prefix) for q in batch]
        prompts, _ = processor.render(conversations, True, chat_template=config.conv_mode)
        per_sample = [[v] if v is not None else [] for v in visuals]
        inputs = processor.model_inputs(prompts, per_sample)
        return inference.generate(loaded, inputs, generation, template)

    batches = prefetched(_batches(questions, config.batch_size), load_batch, config.num_workers)
    return ((batch, answer(batch, visuals)) for batch, visuals in batches)
