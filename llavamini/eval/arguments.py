"""Argument dataclasses of the commands that answer benchmark questions (`eval run`, `analyze
drop-vision`) and the `RunConfig` they make."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated

from llavamini.eval.runner import TASK_DEFAULT_GENERATION, RunConfig
from llavamini.eval.tasks import get_task
from llavamini.eval.tasks.base import DEFAULT_DATA_ROOT, Task
from llavamini.flags import only
from llavamini.inference import GenerationSettings, InputSettings
from llavamini.model.loading import ModelSpec
from llavamini.model.processing_llavamini import checkpoint_conv_mode

TASK_HELP = "task name (see `llavamini eval list`)"

UnquantizedModel = Annotated[ModelSpec, only("path", "device", "dtype", "attn_implementation")]
"""The `ModelSpec` of the analysis commands, which load the checkpoint unquantized."""


def task_max_new_tokens():
    """The `max_new_tokens` field of commands whose default answer length is the task's."""
    return field(
        default=None,
        metadata={
            "aliases": ["--max_new_tokens"],
            "help": "default: the reference's for the task (128, or 1024 for MMBench, "
            "ScienceQA and video QA)",
        },
    )


def check_task(name: str) -> Task:
    """The task called `name`; `ValueError` listing the known names otherwise."""
    try:
        return get_task(name)
    except KeyError as error:
        raise ValueError(error.args[0]) from error


@dataclass(frozen=True)
class TaskFiles:
    """Where a task's files are; each None is the task's own under `data_root` (LLaVA's
    `eval.zip` layout).

    Attributes:
        data_root: the eval.zip root (None: playground/data/eval).
        questions: question file.
        visual_folder: folder that image / video paths in the question file are relative to.
        annotations: labels file or folder (scoring).
    """

    data_root: str | None = field(
        default=None, metadata={"help": "LLaVA eval.zip root (default: playground/data/eval)"}
    )
    questions: str | None = field(
        default=None,
        metadata={
            "aliases": ["--question-file"],
            "help": "question file (default: the task's in the data root)",
        },
    )
    visual_folder: str | None = field(
        default=None,
        metadata={
            "aliases": ["--image-folder", "--video-dir"],
            "help": "images/videos folder (default: the task's in the data root)",
        },
    )
    annotations: str | None = field(
        default=None,
        metadata={"help": "labels file or folder (default: the task's in the data root)"},
    )

    @property
    def root(self) -> str:
        return self.data_root or DEFAULT_DATA_ROOT

    def questions_file(self, task: Task, scoring: bool = False) -> str:
        """The question file (`scoring`: the one the scorer reads, when the task has one)."""
        default = task.score_questions or task.questions if scoring else task.questions
        return self.questions or task.path(self.root, default)

    def visual_folder_of(self, task: Task) -> str:
        return self.visual_folder or task.path(self.root, task.visual_folder)

    def annotations_of(self, task: Task) -> str | None:
        return self.annotations or task.path(self.root, task.annotations)


def run_config(
    task: Task,
    model: ModelSpec,
    files: TaskFiles,
    inputs: InputSettings,
    generation: GenerationSettings = TASK_DEFAULT_GENERATION,
    *,
    loaded=None,
    model_name: str | None = None,
    **fields,
) -> RunConfig:
    """The `RunConfig` answering `task` with `model`, `generation` and `inputs` as they are,
    the question file and visual folder from `files`.

    Args:
        inputs: `conv_mode` None is the checkpoint's: `loaded`'s processor's when given, else
            read from `model.path` (`checkpoint_conv_mode`).
        loaded: the already loaded model the run will use, if any.
        model_name: the answers' `model_id` (None: the checkpoint folder's name).
        fields: the other `RunConfig` fields (`answers_file`, `batch_size`, ...).
    """
    if inputs.conv_mode is None:
        conv_mode = (
            loaded.processor.conv_mode if loaded is not None else checkpoint_conv_mode(model.path)
        )
        inputs = dataclasses.replace(inputs, conv_mode=conv_mode)
    return RunConfig(
        task=task,
        model=model,
        inputs=inputs,
        questions_file=files.questions_file(task),
        visual_folder=files.visual_folder_of(task),
        generation=generation,
        model_id=model_name,
        **fields,
    )
