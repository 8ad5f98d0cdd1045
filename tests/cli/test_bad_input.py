"""Bad command-line input ends with one line naming what was wrong, not a traceback."""

import pytest

from llavamini.apps.tiny import build_tiny_checkpoint
from llavamini.cli import main


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "run", "synthetic", "--questions", "q.jsonl", "--answers-file", "a.jsonl"],
        ["analyze", "drop-vision", "--task", "synthetic"],
        ["analyze", "attention", "--data", "q.jsonl"],
    ],
    ids=["eval-run", "drop-vision", "attention"],
)
def test_a_checkpoint_that_is_not_there_is_named(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "image": "x.png", "text": "Hi?"}\n')
    (tmp_path / "x.png").write_bytes(b"")
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--model-path", missing])
    printed = capsys.readouterr()
    message = str(exit_info.value.code) + printed.err + printed.out
    assert exit_info.value.code != 0 and "no-such-checkpoint" in message
    assert "neither a folder nor a hub id" in message


@pytest.mark.parametrize(
    "flag, value", [("--image-size", "100"), ("--stage1-steps", "0"), ("--stage2-steps", "-1")]
)
def test_quickstart_refuses_bad_sizes_and_budgets(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", flag, value])
    assert exit_info.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--num-beams", "0"], "num_beams must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size: batch_size must be at least 1"),
    ],
)
def test_eval_run_checks_generation_settings_before_anything(flags, message, tmp_path, capsys):
    """The same `GenerationSettings` checks as chat and serve, before any file is read."""
    checkpoint = build_tiny_checkpoint(str(tmp_path / "ckpt"), image_size=56)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "run", "gqa", "--model-path", checkpoint, *flags])
    assert message in str(exit_info.value)


@pytest.mark.parametrize(
    ("command", "old", "new"),
    [
        (["chat", "--model-path", "CKPT"], ["--fps", "2"], "--video-fps"),
        (["serve", "--model-path", "CKPT"], ["--max-frames", "8"], "--video-max-frames"),
        (["eval", "run", "gqa", "--model-path", "CKPT"], ["--fps", "1"], "--video-fps"),
    ],
)
def test_a_renamed_flag_names_its_new_name(command, old, new, capsys):
    """Flags of the video settings before their rename exit naming the flag that replaced them
    (before anything is loaded: the checkpoint need not exist)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, *old])
    assert exit_info.value.code == 2
    assert f"{old[0]} was renamed {new}" in capsys.readouterr().err
