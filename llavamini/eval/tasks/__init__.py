"""The task registry: a plain dict from exact task name to `Task`.

Each benchmark module exposes a `TASKS` tuple; `build_registry` joins them and refuses two
tasks with one name. `get_task(name)` is an exact lookup whose error lists the known names.
"""

from __future__ import annotations

from collections.abc import Iterable

from llavamini.eval.tasks import (
    gqa,
    mmbench,
    mme,
    pope,
    scienceqa,
    seed,
    synthetic,
    textvqa,
    video_qa,
    vqav2,
)
from llavamini.eval.tasks.base import Task


def build_registry(tasks: Iterable[Task]) -> dict[str, Task]:
    """Name -> task; raises `ValueError` on a duplicate name."""
    registry: dict[str, Task] = {}
    for task in tasks:
        if task.name in registry:
            raise ValueError(f"Two evaluation tasks are named {task.name!r}.")
        registry[task.name] = task
    return registry


TASKS: dict[str, Task] = build_registry(
    task
    for module in (vqav2, gqa, mmbench, video_qa, textvqa, pope, mme, seed, scienceqa, synthetic)
    for task in module.TASKS
)


def get_task(name: str) -> Task:
    """The task called exactly `name`; `KeyError` listing the known names otherwise."""
    if name not in TASKS:
        raise KeyError(f"Unknown evaluation task {name!r}; known: {', '.join(sorted(TASKS))}.")
    return TASKS[name]
