"""Every command's function, called from Python with a bad argument, raises an exception and
leaves the process alive: only the command line (`llavamini.cli.main`) exits."""

import inspect

import pytest

from llavamini.cli import COMMANDS, resolve
from llavamini.errors import UsageError
from llavamini.inference import GenerationSettings
from llavamini.model.loading import ModelSpec


def _verbs():
    """`command name -> function` of every command and sub-command."""
    verbs = {}
    for name in COMMANDS:
        target = resolve(name)
        if isinstance(target, dict):
            verbs.update({f"{name} {sub}": verb for sub, verb in target.items()})
            continue
        verbs[name] = target
        module = inspect.getmodule(target)
        for sub, verb in getattr(module, "SUBCOMMANDS", {}).items():
            verbs[f"{name} {sub}"] = verb
    return verbs


def _bad_arguments(name: str, tmp):
    """`(the exception, a function of the positional arguments)` of a bad call of `name`."""
    from llavamini.analysis import cli as analysis
    from llavamini.apps import demo, quickstart
    from llavamini.bench import cli as bench
    from llavamini.bench import compare
    from llavamini.eval import cli as evaluation
    from llavamini.eval.arguments import UnquantizedModel
    from llavamini.train import data_check

    model, unquantized = ModelSpec(path=str(tmp / "nope")), UnquantizedModel(path=str(tmp / "nope"))
    return {
        "quickstart": (ValueError, lambda: (quickstart.QuickstartOptions(image_size=100),)),
        "demo": (UsageError, lambda: (demo.DemoOptions(image=str(tmp / "nope.jpg")),)),
        # a folder below a file
        "tiny-assets": (OSError, lambda: (demo.TinyAssetsOptions(output_dir=f"{__file__}/a"),)),
        "train": (FileNotFoundError, lambda: ([str(tmp / "nope.yaml")],)),
        "data check": (
            FileNotFoundError,
            lambda: (
                data_check.CheckOptions(data=(str(tmp / "nope.json"),), image_folder=(str(tmp),)),
            ),
        ),
        "chat": (UsageError, lambda: (model,)),
        "serve": (UsageError, lambda: (model, GenerationSettings(num_beams=2))),
        "gradio": (UsageError, lambda: (model,)),
        "eval run": (FileNotFoundError, lambda: (evaluation.RunOptions(task="gqa"), unquantized)),
        "eval score": (
            FileNotFoundError,
            lambda: (evaluation.ScoreOptions(task="gqa", answers=str(tmp / "a.jsonl")),),
        ),
        "eval merge": (
            FileNotFoundError,
            lambda: (
                evaluation.MergeOptions(
                    inputs=(str(tmp / "a.jsonl"),), output=str(tmp / "b.jsonl")
                ),
            ),
        ),
        "analyze attention": (
            UsageError,
            lambda: (analysis.AttentionOptions(data=str(tmp / "q.jsonl")), unquantized),
        ),
        "analyze drop-vision": (
            UsageError,
            lambda: (analysis.DropVisionOptions(task="gqa"), unquantized),
        ),
        "analyze compression": (
            UsageError,
            lambda: (analysis.CompressionOptions(image=str(tmp / "x.png")), unquantized),
        ),
        "bench": (UsageError, lambda: (bench.BenchArgs(compile=True),)),
        "compare": (
            FileNotFoundError,
            lambda: (
                evaluation.RunOptions(task="gqa"),
                compare.CompareOptions(checkpoint=str(tmp / "nope"), output_dir=str(tmp / "o")),
            ),
        ),
        "bench checkpoint": (
            KeyError,
            lambda: (bench.CheckpointArgs(output_dir=str(tmp / "ckpt"), scale="huge"),),
        ),
    }.get(name)


def test_every_command_is_called_with_a_bad_argument(tmp_path):
    """`eval list` takes no argument that can be bad: it only prints the task table."""
    untested = {name for name in _verbs() if _bad_arguments(name, tmp_path) is None}
    assert untested == {"eval list"}


@pytest.mark.parametrize("name", sorted(set(_verbs()) - {"eval list"}))
def test_a_bad_argument_raises_and_the_process_lives(name, tmp_path):
    error, arguments = _bad_arguments(name, tmp_path)
    with pytest.raises(error):  # a SystemExit would fail the test (and end a caller's process)
        _verbs()[name](*arguments())
