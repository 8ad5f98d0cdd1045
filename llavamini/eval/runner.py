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
`settings` names the task, model name, prompt prefix (SHA-256 and where it came from), prompt
suffix and whether the question file carries it, and every field of the `ModelSpec`, the
`GenerationSettings` and the `InputSettings` (`RunConfig.settings`). A resumed run must have the
same `settings` (`llavamini.eval.answers.settings_differences`).
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
from transformers import BatchFeature

from llavamini import inference
from llavamini.conversation import ChatTemplate, get_template
from llavamini.eval.answers import (
    AnswerWriter,
    prepare_for_resume,
    record_key,
    run_settings,
    settings_differences,
)
from llavamini.eval.sharding import get_chunk
from llavamini.eval.tasks.base import InlineImage, Question, Task
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec

logger = logging.getLogger(__name__)


REFERENCE_VIDEO_FPS = 1.0
"""Video frames sampled per second when the caller gives no `video_fps`: the reference's
evaluation."""

TASK_DEFAULT_GENERATION = GenerationSettings(max_new_tokens=None)
"""`eval run`'s decoding unless told otherwise: greedy, the task's answer length (the
reference's: 128, or 1024 for MMBench, ScienceQA and video QA)."""

DEFAULT_OUTPUT_ROOT = os.path.join("outputs", "eval")


def default_answers_file(model_id: str, task: str, num_chunks: int, chunk_idx: int) -> str:
    """`outputs/eval/<model>/<task>/answers.jsonl`, or `answers.chunk<I>-of-<N>.jsonl`."""
    name = "answers.jsonl" if num_chunks == 1 else f"answers.chunk{chunk_idx}-of-{num_chunks}.jsonl"
    return os.path.join(DEFAULT_OUTPUT_ROOT, model_id, task, name)


@dataclass(frozen=True)
class RunConfig:
    """One `llavamini eval run`: the shared settings as they are, and what only evaluation has.

    What is left to a default is settled when the config is built, once: `model`'s device and
    dtype (`ModelSpec.resolved`), `generation.max_new_tokens` (None: the task's),
    `inputs.video_fps` (None: `REFERENCE_VIDEO_FPS`), `model_id` and `answers_file`.
    `inputs.conv_mode` must be set (`llavamini.eval.arguments.run_config` sets the checkpoint's).

    Attributes:
        task: the benchmark.
        model: which checkpoint, where and how (`load_model` loads it as it is).
        inputs: chat template and video frame sampling.
        questions_file: the question file.
        visual_folder: folder that image / video paths in the question file are relative to.
        generation: decoding (default: greedy, the task's answer length).
        answers_file: where answers are appended (None: `default_answers_file`).
        model_id: `model_id` of the answer lines (None: the checkpoint folder's name).
        batch_size: questions per `generate` call.
        num_chunks, chunk_idx, shard_mode: which part of the questions this process answers.
        prompt_prefix: None for the task's default; else this text before every question.
        prompt_prefix_source: where `prompt_prefix` came from (recorded).
        num_workers: threads loading visuals ahead of generation (0: in the main thread).
        limit: answer only the first N questions of the chunk (smoke runs).
    """

    task: Task
    model: ModelSpec
    inputs: InputSettings
    questions_file: str
    visual_folder: str
    generation: GenerationSettings = TASK_DEFAULT_GENERATION
    answers_file: str | None = None
    model_id: str | None = None
    batch_size: int = 1
    num_chunks: int = 1
    chunk_idx: int = 0
    shard_mode: str = "contiguous"
    prompt_prefix: str | None = None
    prompt_prefix_source: str = "task default"
    num_workers: int = 2
    limit: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.inputs.conv_mode is None:
            raise ValueError(
                "RunConfig.inputs.conv_mode is None: name the chat template "
                "(`llavamini.eval.arguments.run_config` sets the checkpoint's)."
            )
        model_id = self.model_id or os.path.basename(os.path.normpath(self.model.path))
        settled = {
            "model": self.model.resolved(),
            "generation": self.generation.with_max_new_tokens(self.task.max_new_tokens),
            "model_id": model_id,
        }
        if self.inputs.video_fps is None:
            settled["inputs"] = dataclasses.replace(self.inputs, video_fps=REFERENCE_VIDEO_FPS)
        if self.answers_file is None:
            settled["answers_file"] = default_answers_file(
                model_id, self.task.name, self.num_chunks, self.chunk_idx
            )
        for name, value in settled.items():  # frozen: set once, here
            object.__setattr__(self, name, value)

    @property
    def prefix(self) -> str:
        return self.task.prompt_prefix if self.prompt_prefix is None else self.prompt_prefix

    @property
    def conv_mode(self) -> str:
        return self.inputs.conv_mode

    def settings(self) -> dict:
        """What determines the answers; recorded in every line and compared on resume.

        Every field of `model` (under "model", device and dtype resolved), of `generation`
        (under "generation") and of `inputs` (at the top level: conv_mode, video_fps,
        video_max_frames), each under its field's name, so a new field is recorded without an
        edit here; "model_path" and "dtype" stay at the top level too, as in records written before
        "model" (`llavamini.eval.answers.settings_differences` compares both kinds).
        """
        task = self.task
        prefix = self.prefix
        settings = {
            "task": task.name,
            "model_path": self.model.path,
            "model_id": self.model_id,
            "prompt_prefix_sha256": hashlib.sha256(prefix.encode("utf-8")).hexdigest()
            if prefix
            else None,
            "prompt_prefix_source": self.prompt_prefix_source if prefix else None,
            "prompt_suffix": task.prompt_suffix,
            "suffix_source": "question file" if task.suffix_in_file else "appended by the runner",
            "generation": dataclasses.asdict(self.generation),
            "dtype": self.model.dtype,
            "model": dataclasses.asdict(self.model),
        }
        inputs = dataclasses.asdict(self.inputs)
        clash = settings.keys() & inputs.keys()
        if clash:
            raise ValueError(f"InputSettings fields {sorted(clash)} clash with record keys.")
        return {**settings, **inputs}


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
    current = config.settings()
    for settings in run_settings(existing):
        changed = settings_differences(settings, current)
        if changed:
            raise ValueError(
                f"{config.answers_file} holds answers produced with other settings (differs in "
                f"{sorted(changed)}: {[changed[k][0] for k in sorted(changed)]} there, "
                f"{[changed[k][1] for k in sorted(changed)]} now). Use another --answers-file or "
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
    """`LoadedModel` of `config.model`, in eval mode."""
    return config.model.load()


def run_questions(config: RunConfig, loaded=None) -> str:
    """Answer this chunk's unanswered questions into `config.answers_file`; returns its path.

    Args:
        config: what to run.
        loaded: an already loaded `LoadedModel` (tests, notebooks); loaded from
            `config.model` when None and there is something to answer.
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
        loaded.model.token_reduction_applied(config.model.token_reduction),
    ):
        for batch, texts in answered:
            for question, text in zip(batch, texts, strict=True):
                writer.write(answer_record(question, text, config, metadata))
            bar.update(len(batch))
    return config.answers_file


def question_inputs(
    processor,
    batch: Sequence[Question],
    visuals: Sequence,
    task: Task,
    conv_mode: str | None,
    prefix: str | None = None,
) -> BatchFeature:
    """The processor's batch for `batch`, each question with its processed visual (or None):
    the task's conversation (`question_conversation`) rendered with `conv_mode` (None: the
    processor's) and the generation prompt."""
    conversations = [question_conversation(q, task, prefix) for q in batch]
    prompts, _ = processor.render(conversations, True, chat_template=conv_mode)
    return processor.model_inputs(prompts, [[v] if v is not None else [] for v in visuals])


def answer_batches(
    config: RunConfig, loaded, questions: Sequence[Question], template: ChatTemplate
) -> Iterator[tuple[list[Question], list[str]]]:
    """`(batch, answers)` for each batch of `questions` in order, the next batches' visuals
    loading in worker threads. The video settings are checked at the call, before the first
    batch."""
    generation = config.generation
    processor = loaded.processor.with_video_policy(
        config.inputs.video_fps, config.inputs.video_max_frames
    )

    def load_batch(batch: list[Question]) -> list:
        return [load_question_visual(q, processor, config.task) for q in batch]

    def answer(batch: list[Question], visuals: list) -> list[str]:
        inputs = question_inputs(
            processor, batch, visuals, config.task, config.conv_mode, config.prefix
        )
        return inference.generate(loaded, inputs, generation, template)

    batches = prefetched(_batches(questions, config.batch_size), load_batch, config.num_workers)
    return ((batch, answer(batch, visuals)) for batch, visuals in batches)
