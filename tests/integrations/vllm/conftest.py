"""vLLM plug-in tests: they run in .venv-vllm (`bash scripts/setup-vllm.sh`), where vLLM is.

In any other environment (the default suite runs in .venv, whose transformers vLLM does not
accept) they are skipped with a message, unless LLAVAMINI_REQUIRE_VLLM=1 (set by .ci/run), which
turns a missing vLLM into an error so that CI never skips them silently.

Fixtures: a tiny checkpoint trained by `llavamini train` (LLM head size 32, which vLLM's CPU
attention needs), its transformers reference, and vLLM engines over it, each built once.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
REQUIRED = os.environ.get("LLAVAMINI_REQUIRE_VLLM") == "1"

if importlib.util.find_spec("vllm") is None:
    if REQUIRED:
        raise RuntimeError(
            "LLAVAMINI_REQUIRE_VLLM=1 but vllm is not importable: run these tests with "
            ".venv-vllm/bin/python (bash scripts/setup-vllm.sh creates it)."
        )

SKIP_REASON = (
    "vllm is not importable here: run these tests with .venv-vllm/bin/python -m pytest "
    "tests/integrations/vllm (bash scripts/setup-vllm.sh creates .venv-vllm)"
)


ENGINE_ARGS = dict(
    dtype="float32",  # the transformers reference runs in float32: identical greedy tokens
    enforce_eager=True,  # no torch.compile: seconds to start instead of minutes on a CPU
    max_model_len=512,
    max_num_seqs=8,
    seed=0,
    gpu_memory_utilization=0.2,  # on the CPU backend: the share of RAM it may reserve
    kv_cache_memory_bytes=1 << 27,
    enable_prefix_caching=True,
)
"""vLLM engine settings of the tests (small: the machine is shared)."""


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A tiny LLaVA-Mini written by `llavamini train configs/train/tiny.yaml` on the tiny
    assets (a few seconds on a CPU)."""
    from llavamini.apps.tiny import build_tiny_assets

    root = tmp_path_factory.mktemp("vllm-tiny")
    assets = build_tiny_assets(str(root / "assets"), image_size=56, num_train=32, num_val=4)
    output = root / "checkpoint"
    command = [
        sys.executable, "-m", "llavamini.cli", "train", str(REPO / "configs/train/tiny.yaml"),
        "--model_name_or_path", assets["llm"], "--vision_tower", assets["clip"],
        "--data_path", assets["instruct"], "--image_folder", str(Path(assets["instruct"]).parent),
        "--output_dir", str(output), "--disable_tqdm", "true",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=root, capture_output=True)
    return str(output)


@pytest.fixture(scope="session")
def reference(checkpoint):
    """`(processor, model)`: the transformers model of the checkpoint, for reference answers."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    import llavamini  # noqa: F401

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    return processor, model


@pytest.fixture(scope="session")
def llm(checkpoint):
    """A vLLM engine over the checkpoint, prefill unchunked within 2048 tokens a step."""
    from vllm import LLM

    engine = LLM(checkpoint, **ENGINE_ARGS, max_num_batched_tokens=2048)
    yield engine
    engine.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def chunked_llm(checkpoint):
    """A vLLM engine that prefills 32 tokens a step: every prompt (about 100 tokens) is
    prefilled in several chunks, and its blocks of 32 (the CPU backend's smallest) go to the
    prefix cache."""
    from vllm import LLM

    engine = LLM(checkpoint, **ENGINE_ARGS, max_num_batched_tokens=32, block_size=32)
    yield engine
    engine.llm_engine.engine_core.shutdown()
