"""Nothing lost on a crash: checkpoints are complete or absent, `auto` resumes from the newest
complete one with the losses of an uninterrupted run, and skipped bad samples are reported."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llavamini.train.checkpointing import COMPLETE_FILE, missing_parts, resolve_resume
from llavamini.train.train import train
from llavamini.utils.atomic import atomic_write
from tests.train.conftest import REPO, run_args
from tests.train.test_distributed import free_port

SAVE_EVERY_2 = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                "--per_device_train_batch_size", "4",
                "--lr_scheduler_type", "constant")  # fmt: skip


def logged_losses(output_dir: Path) -> dict[int, float]:
    """`{step: loss}` of a finished run, from its `trainer_state.json`."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def hidden_entries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


@pytest.fixture(scope="module")
def whole(assets, tmp_path_factory) -> Path:
    """An uninterrupted run saving checkpoints 2 and 4."""
    out = tmp_path_factory.mktemp("whole")
    train(run_args(assets, "tiny.yaml", out, *SAVE_EVERY_2))
    return out


def test_checkpoints_and_the_final_model_are_complete_and_leave_no_staging(whole):
    for step in (2, 4):
        checkpoint = whole / f"checkpoint-{step}"
        assert missing_parts(str(checkpoint)) == []
        listed = json.loads((checkpoint / COMPLETE_FILE).read_text())["files"]
        assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= set(listed)
    assert hidden_entries(whole) == []
    assert (whole / "config.json").is_file() and (whole / "model.safetensors").is_file()
    assert logged_losses(whole).keys() == {1, 2, 3, 4}


def test_save_total_limit_keeps_only_complete_checkpoints(assets, tmp_path):
    train(run_args(assets, "tiny.yaml", tmp_path, *SAVE_EVERY_2, "--save_total_limit", "1"))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4"]
    assert missing_parts(str(tmp_path / "checkpoint-4")) == [] and hidden_entries(tmp_path) == []


def half_written_copy(source: Path, target: Path, keep_marker: bool) -> None:
    """`target`: checkpoint `source` as a kill during its save leaves it (weights truncated)."""
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    (target / "trainer_state.json").unlink()
    if not keep_marker:
        (target / COMPLETE_FILE).unlink()


def test_auto_skips_half_written_checkpoints_and_a_path_to_one_is_an_error(whole, tmp_path, caplog):
    for step in (2, 4):
        shutil.copytree(whole / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    half_written_copy(whole / "checkpoint-4", tmp_path / "checkpoint-6", keep_marker=False)
    half_written_copy(whole / "checkpoint-4", tmp_path / "checkpoint-8", keep_marker=True)
    caplog.set_level(logging.INFO, logger="llavamini")
    assert resolve_resume("auto", str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-8 (incomplete: missing model.safetensors (" in caplog.text
    assert "checkpoint-6 (incomplete: missing checkpoint_complete.json and" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoint-4'}" in caplog.text
    with pytest.raises(ValueError, match=r"checkpoint-8 is an incomplete .* missing model\."
                       r"safetensors \(\d+ of \d+ bytes\), trainer_state\.json"):  # fmt: skip
        resolve_resume(str(tmp_path / "checkpoint-8"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="checkpoint-10 is not a folder"):
        resolve_resume(str(tmp_path / "checkpoint-10"), str(tmp_path))
    assert resolve_resume("auto", str(tmp_path / "absent")) is None


def test_a_kill_during_a_save_resumes_from_the_previous_checkpoint(
    assets, whole, tmp_path, monkeypatch, caplog
):
    """In process: the save of checkpoint-4 dies with its weights half-written (as a SIGKILL
    leaves them; the slow tests below really kill a subprocess)."""
    import transformers.modeling_utils

    class Killed(Exception):
        pass

    real_save = transformers.modeling_utils.safe_save_file

    def die_half_written(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if "checkpoint-4" in filename:
            os.truncate(filename, os.path.getsize(filename) // 2)
            raise Killed

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", die_half_written)
    with pytest.raises(Killed):
        train(run_args(assets, "tiny.yaml", tmp_path, *SAVE_EVERY_2))
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint-4").exists() and hidden_entries(tmp_path) == [
        ".checkpoint-4.partial"
    ]
    # Also a checkpoint-4 half-written by hand (by a save without staging): skipped, replaced.
    half_written_copy(whole / "checkpoint-4", tmp_path / "checkpoint-4", keep_marker=False)
    caplog.set_level(logging.INFO, logger="llavamini")
    resumed = train(
        run_args(assets, "tiny.yaml", tmp_path, *SAVE_EVERY_2, "--resume_from_checkpoint", "auto")
    )
    assert ".checkpoint-4.partial (an interrupted save or removal)" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in caplog.text
    assert resumed.state.global_step == 4 and hidden_entries(tmp_path) == []
    assert missing_parts(str(tmp_path / "checkpoint-4")) == []
    expected = logged_losses(whole)
    torch.testing.assert_close(
        [logged_losses(tmp_path)[s] for s in (3, 4)], [expected[s] for s in (3, 4)],
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


def test_skipped_samples_in_two_dataloader_workers_are_reported(assets, tmp_path, caplog):
    records = json.loads(Path(assets["instruct"]).read_text())
    bad = [{**records[0], "id": f"bad-{i}", "image": f"images/missing-{i}.png"} for i in (1, 2)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records[:14] + bad))
    caplog.set_level(logging.INFO, logger="llavamini")
    train(run_args(assets, "tiny.yaml", tmp_path / "out", "--data_path", str(data),
                   "--image_folder", str(Path(assets["instruct"]).parent),
                   "--dataloader_num_workers", "2", "--on_bad_sample", "skip"))  # fmt: skip
    assert "Skipped 2 bad samples" in caplog.text
    assert "bad-1 (" in caplog.text and "bad-2 (" in caplog.text
    listed = json.loads((tmp_path / "out" / "skipped_samples.json").read_text())
    assert sorted(name.split(" ")[0] for name in listed) == ["bad-1", "bad-2"]
    assert all(name.endswith(": missing media") for name in listed)


def test_atomic_write_keeps_the_old_content_when_the_writer_fails(tmp_path):
    path = tmp_path / "cache.json"
    with atomic_write(str(path)) as file:
        file.write("old")
    with pytest.raises(RuntimeError), atomic_write(str(path)) as file:
        file.write("half of the new")
        raise RuntimeError
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["cache.json"]


KILLER = '''"""`python -m llavamini.train ARGS`, which SIGKILLs itself at POINT (first argument)."""
import os
import signal
import sys
import time

point, args = sys.argv[1], sys.argv[2:]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "between-saves":
    from transformers import TrainerCallback

    import llavamini.train.train as train_module

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                die()

    original = train_module.LlavaMiniTrainer.__init__

    def with_killer(self, *a, **k):
        original(self, *a, **k)
        self.add_callback(KillAtStep3())

    train_module.LlavaMiniTrainer.__init__ = with_killer
elif point == "during-save":
    import transformers.modeling_utils as modeling_utils

    real_save = modeling_utils.safe_save_file

    def half_written(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if "checkpoint-4" in filename:
            os.truncate(filename, os.path.getsize(filename) // 2)
            die()

    modeling_utils.safe_save_file = half_written
elif point == "between-ranks":
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    real_save = TorchCheckpointEngine.save

    def rank1_dies(self, state_dict, path):
        if "global_step4" in path and "optim_states" in path and os.environ["RANK"] == "1":
            partner = path.replace("rank_1", "rank_0")
            while not os.path.exists(partner):
                time.sleep(0.05)
            time.sleep(0.5)
            die()
        return real_save(self, state_dict, path)

    TorchCheckpointEngine.save = rank1_dies
elif point != "none":
    raise SystemExit(f"unknown point {point}")

from llavamini.train.train import main

main(args)
'''


def run_killable(script: Path, point: str, args: list[str], nproc: int = 1):
    """Run the training under `script` in a subprocess (torchrun with `nproc` > 1)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_port", str(free_port())]  # fmt: skip
    else:
        launcher = [sys.executable]
    return subprocess.run(
        [*launcher, str(script), point, *args],
        env=env, capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip


def kill_resume_compare(
    assets, tmp_path, point: str, extra: tuple = (), nproc: int = 1, after_kill=None
) -> str:
    """An uninterrupted run, a run killed at `point` (then checked by `after_kill(output_dir,
    killed process)`), its resume with `auto`: the losses after the resume point must be the
    uninterrupted run's, exactly. Returns the resume's log."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    args = (*SAVE_EVERY_2, *extra)
    reference = run_killable(script, "none", run_args(assets, "tiny.yaml", tmp_path / "whole",
                                                      *args), nproc)  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "killed"
    killed = run_killable(script, point, run_args(assets, "tiny.yaml", out, *args), nproc)
    assert killed.returncode != 0, "the run was not killed"
    if nproc == 1:
        assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    if after_kill is not None:
        after_kill(out, killed)
    resume_args = run_args(assets, "tiny.yaml", out, *args, "--resume_from_checkpoint", "auto")
    resumed = run_killable(script, "none", resume_args, nproc)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in resumed.stderr
    expected, got = logged_losses(tmp_path / "whole"), logged_losses(out)
    assert got.keys() == {1, 2, 3, 4}
    # The same losses to the last digit: the resumed run is the uninterrupted one.
    assert [got[3], got[4]] == [expected[3], expected[4]]
    assert missing_parts(str(out / "checkpoint-4")) == [] and hidden_entries(out) == []
    return resumed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("point", ["between-saves", "during-save"])
def test_sigkill_then_auto_resume_reaches_the_uninterrupted_losses(assets, tmp_path, point):
    log = kill_resume_compare(assets, tmp_path, point)
    if point == "during-save":
        assert ".checkpoint-4.partial (an interrupted save or removal)" in log


@pytest.mark.slow
def test_sigkill_between_two_ranks_writes_under_deepspeed_zero2(assets, tmp_path):
    """Rank 1 dies while rank 0 has written its ZeRO-2 optimizer shard of step 4."""

    def rank0_wrote_rank1_did_not(out, killed):
        assert "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
        shards = sorted(p.name for p in out.glob(".checkpoint-4.partial/*/global_step4/*optim*"))
        assert len(shards) == 1 and "rank_0" in shards[0], shards

    config = REPO / "configs" / "deepspeed" / "zero2.json"
    log = kill_resume_compare(assets, tmp_path, "between-ranks",
                              ("--deepspeed", str(config), "--bf16", "true"), nproc=2,
                              after_kill=rank0_wrote_rank1_did_not)  # fmt: skip
    assert ".checkpoint-4.partial (an interrupted save or removal)" in log


def test_final_model_files_are_replaced_all_or_nothing(tmp_path, monkeypatch):
    """`publish_files`: the new save replaces the old one's files (stale shards included), and
    a kill midway leaves no `config.json`, never a loadable mixture of the two saves."""
    from llavamini.train import checkpointing

    def make(folder: Path, files: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)

    new = {"model-00001-of-00002.safetensors": "new", "model-00002-of-00002.safetensors": "new",
           "model.safetensors.index.json": "new", "config.json": "new"}  # fmt: skip
    old = {"model.safetensors": "old", "config.json": "old", "run_config.yaml": "run"}
    make(tmp_path / "out", old)
    make(tmp_path / "out" / "checkpoint-2", {"trainer_state.json": "{}"})
    make(tmp_path / "staged", new)
    real_replace, calls = os.replace, []

    def killed_after_one(source, target):
        calls.append(target)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(checkpointing.os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.publish_files(str(tmp_path / "staged"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "config.json").exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "staged")
    make(tmp_path / "staged", new)
    checkpointing.publish_files(str(tmp_path / "staged"), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == sorted([*new, "run_config.yaml", "checkpoint-2"])
    assert all((tmp_path / "out" / name).read_text() == "new" for name in new)
    assert not (tmp_path / "staged").exists()
