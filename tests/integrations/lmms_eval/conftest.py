"""Fixtures of the lmms-eval plug-in tests, which run in .venv-lmms-eval
(scripts/setup-lmms-eval.sh), not in .venv.

Without lmms-eval these tests skip, saying so; with LLAVAMINI_REQUIRE_LMMS_EVAL=1 (.ci/run) a
missing lmms-eval fails them instead, so CI can never skip them silently.
"""

import importlib
import os

import pytest

from tests.eval.conftest import tiny_checkpoint, tiny_loaded  # noqa: F401 (shared fixtures)

REQUIRE_ENV = "LLAVAMINI_REQUIRE_LMMS_EVAL"

SKIP_REASON = (
    "lmms-eval is not installed in this environment: bash scripts/setup-lmms-eval.sh, then "
    ".venv-lmms-eval/bin/python -m pytest tests/integrations/lmms_eval"
)


def require_lmms_eval():
    """Import lmms_eval, or skip the calling test module saying why; under
    LLAVAMINI_REQUIRE_LMMS_EVAL=1 (CI) a missing lmms_eval is an error, never a skip."""
    if os.environ.get(REQUIRE_ENV) == "1":
        return importlib.import_module("lmms_eval")
    return pytest.importorskip("lmms_eval", reason=SKIP_REASON)
