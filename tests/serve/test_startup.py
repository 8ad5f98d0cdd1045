"""`chat`, `serve` and `gradio` share their start-up (`llavamini.serve.startup`): the servers do
not reach into the terminal chat's module."""

import ast
from pathlib import Path

import pytest

from llavamini.errors import UsageError
from llavamini.inference import InputSettings
from llavamini.model.loading import ModelSpec
from llavamini.serve.startup import Address, load_chat_model

SERVE = Path(__file__).resolve().parents[2] / "llavamini" / "serve"


@pytest.mark.parametrize("module", ["server.py", "gradio_app.py"])
def test_the_servers_start_from_the_shared_module(module):
    tree = ast.parse((SERVE / module).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "llavamini.serve.startup" in imported
    assert "llavamini.serve.cli" not in imported


def test_a_checkpoint_that_does_not_load_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="nowhere"):
        load_chat_model(ModelSpec(str(tmp_path / "nowhere"), device="cpu"), InputSettings())


def test_a_port_out_of_range_is_refused():
    with pytest.raises(ValueError, match="port"):
        Address(port=70000)
