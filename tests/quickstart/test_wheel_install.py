"""`pip install .` (not editable) carries what the quickstart reads: its recipes ship as package
data, so `llavamini quickstart --smoke` runs from a wheel install, away from the repository."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_smoke_runs_from_a_wheel_install(tmp_path):
    target, workdir = tmp_path / "site", tmp_path / "work"
    workdir.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, timeout=600,
    )  # fmt: skip
    assert (target / "llavamini" / "configs" / "train" / "quickstart_stage1.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, not the checkout
    result = subprocess.run(
        [sys.executable, "-c", "import llavamini.cli, sys; sys.argv[0] = 'llavamini'; "
         "print(llavamini.cli.__file__); llavamini.cli.main(['quickstart', '--smoke'])"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(str(target))
    assert (workdir / "outputs" / "quickstart" / "results.json").is_file()
