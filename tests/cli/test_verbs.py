"""Every command is a function over dataclasses: its command line with only the required flags
gives the function's own defaults, and `llavamini --help` imports no command module."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llavamini.cli import COMMANDS, PASS_THROUGH, main, parse, resolve
from llavamini.model.loading import ModelSpec

REPO = Path(__file__).resolve().parents[2]

MODEL = ["--model-path", "m"]
REQUIRED = {
    ("quickstart",): ([], {}),
    ("demo",): ([], {}),
    ("tiny-assets",): ([], {}),
    ("data", "check"): (
        ["--data", "a.json", "--image-folder", "f"], {"options": (("a.json",), ("f",))}
    ),
    ("chat",): (MODEL, {}),
    ("serve",): (MODEL, {}),
    ("gradio",): (MODEL, {}),
    ("eval", "run"): (["gqa", *MODEL], {"options": ("gqa",)}),
    ("eval", "score"): (["gqa", "--answers", "a.jsonl"], {"options": ("gqa", "a.jsonl")}),
    ("eval", "merge"): (["--output", "o.jsonl", "a.jsonl"], {"options": (("a.jsonl",), "o.jsonl")}),
    ("eval", "list"): ([], {}),
    ("analyze", "attention"): ([*MODEL, "--data", "d.jsonl"], {"options": ("d.jsonl",)}),
    ("analyze", "drop-vision"): ([*MODEL, "--task", "gqa"], {"options": ("gqa",)}),
    ("analyze", "compression"): ([*MODEL, "--image", "i.png"], {"options": ("i.png",)}),
    ("bench",): ([], {}),
    ("compare",): (["gqa", "--checkpoint", "c"], {"evaluation": ("gqa",), "options": ("c",)}),
}  # fmt: skip
"""Each verb: (its required arguments, the positional values of its parameters without a
default besides `model`, which is `ModelSpec("m")`)."""


def every_verb() -> list[tuple[str, ...]]:
    verbs = []
    for name in COMMANDS:
        if name in PASS_THROUGH:
            continue
        target = resolve(name)
        verbs += [(name, sub) for sub in target] if isinstance(target, dict) else [(name,)]
    return verbs


def test_every_verb_is_covered():
    assert sorted(every_verb()) == sorted(REQUIRED)


@pytest.mark.parametrize("verb", sorted(REQUIRED), ids=" ".join)
def test_the_command_line_gives_the_functions_defaults(verb):
    argv, required = REQUIRED[verb]
    function, arguments = parse([*verb, *argv])
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name not in arguments:  # Python only, e.g. an already loaded model
            assert parameter.default is not inspect.Parameter.empty
            continue
        value = arguments[parameter.name]
        if parameter.default is not inspect.Parameter.empty:
            expected = parameter.default
        elif parameter.name == "model":
            expected = ModelSpec("m")
        else:  # built from Python with the same required values
            expected = type(value)(*required[parameter.name])
        assert value == expected, (verb, parameter.name)


def _imported_after(argv: list[str]) -> set[str]:
    """The command modules imported by `llavamini ARGV` (which exits) in a fresh interpreter."""
    modules = sorted({target.partition(":")[0] for target, _ in COMMANDS.values()})
    code = (
        "import json, sys\n"
        "from llavamini.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_lists_every_command_without_importing_them(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, (_, help_text) in COMMANDS.items():
        assert name in out and help_text.split()[0] in out
    assert _imported_after(["--help"]) == set()


def test_a_command_imports_only_its_own_module():
    assert _imported_after(["eval", "list", "--help"]) == {"llavamini.eval.cli"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["chat", "--model-path", "m", "--video-max-frames", "0"],
            "--video-max-frames: video_max_frames must be",
        ),
        (["serve", "--model-path", "m", "--max-media-mb", "0"], "--max-media-mb"),
        (["chat", "--model-path", "m", "--conv-mode", "nope"], "--conv-mode: Unknown conv mode"),
        (["eval", "score", "gqa2", "--answers", "a.jsonl"], "task: Unknown evaluation task"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_flag(argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert isinstance(exit_info.value.code, str) and message in exit_info.value.code


def test_exclusive_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--model-path", "m", "--load-8bit", "--load-4bit"])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err
