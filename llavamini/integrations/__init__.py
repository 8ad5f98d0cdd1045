"""Plug-ins that let other tools drive LLaVA-Mini.

Nothing here imports a third-party tool at `import llavamini` time: each plug-in module imports
its tool when it is itself imported, and the entry points below only name it.
"""

from __future__ import annotations

LMMS_EVAL_MODEL_ID = "llava_mini"
LMMS_EVAL_ALIASES = ("llavamini",)
LMMS_EVAL_CLASS_PATH = "llavamini.integrations.lmms_eval.LlavaMini"


def lmms_eval_manifest():
    """The `lmms_eval.models` entry point: `--model llava_mini` (or `llavamini`).

    lmms-eval calls this while it builds its model registry, so only its `ModelManifest` is
    imported here: the plug-in class (and torch) are imported when the model is asked for.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=LMMS_EVAL_MODEL_ID,
        simple_class_path=LMMS_EVAL_CLASS_PATH,
        aliases=LMMS_EVAL_ALIASES,
    )
