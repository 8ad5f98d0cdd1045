"""Multi-process training on CPU: torchrun (gloo) through the shipped launcher, and DeepSpeed."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import REPO, run_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], nproc: int, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NPROC_PER_NODE": str(nproc),
        "MASTER_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "train" / "launch.sh"), *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip


def final_loss(output_dir: Path) -> float:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry][-1]


def test_two_process_torchrun(assets, tmp_path):
    result = launch(run_args(assets, "tiny.yaml", tmp_path, "--max_steps", "3"), nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    samples = len(json.loads(Path(assets["instruct"]).read_text()))
    # 3 steps x 8 samples per device x 2 processes: the epoch count shows both ranks trained.
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(3 * 8 * 2 / samples)
    assert (tmp_path / "model.safetensors").is_file()
    assert final_loss(tmp_path) > 0


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_zero_loads_stage1_projector_and_clip(assets, tmp_path, zero):
    """bf16 (DeepSpeed rejects fp16 on CPU); the first run JIT-compiles a comm op (~25 s).

    With learning rate 0 the saved weights must equal their sources: the stage-1 projector and
    the CLIP folder, both loaded into parameters that ZeRO-3 partitions across the 2 ranks.
    """
    torch.manual_seed(1)
    shapes = {"weight": (64, 64), "bias": (64,)}
    adapter = {
        f"model.mm_projector.{i}.{kind}": torch.randn(shape)
        for i in (0, 2)
        for kind, shape in shapes.items()
    }
    torch.save(adapter, tmp_path / "mm_projector.bin")
    config = REPO / "configs" / "deepspeed" / f"{zero}.json"
    out = tmp_path / "out"
    args = run_args(assets, "tiny.yaml", out, "--max_steps", "2", "--deepspeed", str(config),
                    "--bf16", "true", "--learning_rate", "0", "--mm_projector_lr", "0",
                    "--pretrain_mm_mlp_adapter", str(tmp_path / "mm_projector.bin"))  # fmt: skip
    result = launch(args, nproc=2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(out / "model.safetensors")
    for key, value in adapter.items():
        torch.testing.assert_close(saved[key].float(), value.to(torch.bfloat16).float())
    clip = load_file(Path(assets["clip"]) / "model.safetensors")
    prefix = "model.vision_tower.vision_tower.vision_model."
    for key, value in clip.items():
        torch.testing.assert_close(saved[prefix + key].float(), value.to(torch.bfloat16).float())
