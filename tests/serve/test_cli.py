"""`llavamini chat` / `python -m llavamini.serve.cli` driven through scripted stdin, one-shot
`--query`, the errors that must exit non-zero, and the reference-command shim."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llavamini.serve.session as session_module
from llavamini.data.video import MAX_VIDEO_FRAMES
from llavamini.errors import UsageError
from llavamini.eval import run_llava_mini
from llavamini.model.loading import ModelSpec
from llavamini.serve import cli, server
from tests.conftest import decode_with_placeholders, needs_torchao

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 120


@pytest.fixture
def generations(monkeypatch):
    """Every `generate` call the chat makes: `(prompt, number of visuals, answer)`."""
    calls = []
    real_generate = session_module.generate

    def recording_generate(loaded, inputs, *args, **kwargs):
        answers = real_generate(loaded, inputs, *args, **kwargs)
        ids = inputs["input_ids"][0].tolist()
        visuals = inputs["images"][0] if "images" in inputs else []
        calls.append((decode_with_placeholders(loaded.tokenizer, ids), len(visuals), answers[0]))
        return answers

    monkeypatch.setattr(session_module, "generate", recording_generate)
    return calls


def chat(monkeypatch, argv, stdin=""):
    """Run `python -m llavamini.serve.cli ARGV` in-process with `stdin` as the keyboard."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    cli.main(argv)


def base_argv(checkpoint, *extra):
    return ["--model-path", checkpoint, "--max-new-tokens", "4", *extra]


def test_chat_carries_history_and_takes_an_image_later(
    monkeypatch, capsys, generations, tiny_checkpoint, media_dir
):
    script = f"What is red?\n/image {media_dir / 'picture.png'}\nAnd in the picture?\n"
    chat(monkeypatch, base_argv(tiny_checkpoint), script)  # returns at EOF
    assert len(generations) == 2
    (first_prompt, first_visuals, first_answer), (second_prompt, second_visuals, _) = generations
    assert first_answer, "the tiny model should say something for this test to mean anything"
    assert first_visuals == 0 and "<image>" not in first_prompt
    assert "What is red?" in second_prompt and first_answer in second_prompt
    assert second_prompt.count("<image>") == 1 and second_visuals == 1
    assert second_prompt.rindex("<image>\nAnd in the picture?") > second_prompt.index(first_answer)
    out = capsys.readouterr().out
    assert out.count("ASSISTANT: ") == 2 and "(attached " in out
    assert out.endswith("USER: \n")  # the prompt at EOF, then a clean newline


def test_first_file_goes_into_the_first_turn_and_reset_forgets(
    monkeypatch, generations, tiny_checkpoint, media_dir
):
    argv = base_argv(tiny_checkpoint, "--video-file", str(media_dir / "clip.mp4"))
    chat(monkeypatch, argv, "Describe.\n/reset\nHello again.\n\nnever sent\n")
    assert [visuals for _, visuals, _ in generations] == [1, 0]
    assert "Describe." not in generations[1][0] and generations[0][0].count("<image>") == 1


def test_bad_input_inside_the_chat_is_reported_and_the_chat_goes_on(
    monkeypatch, caplog, generations, tiny_checkpoint, media_dir
):
    script = (
        f"/image {media_dir / 'missing.png'}\n"
        f"/image {media_dir / 'not_an_image.png'}\n"
        f"/video {media_dir / 'picture.png'}\n"
        "Still there?\n/exit\nnever sent\n"
    )
    chat(monkeypatch, base_argv(tiny_checkpoint), script)
    assert "missing.png" in caplog.text and "not_an_image.png" in caplog.text
    assert "wrong extension" in caplog.text
    assert [visuals for _, visuals, _ in generations] == [0]


def test_one_shot_query_prints_the_streamed_answer(
    monkeypatch, capsys, generations, tiny_checkpoint, media_dir
):
    argv = base_argv(tiny_checkpoint, "--image-file", str(media_dir / "picture.png"))
    chat(monkeypatch, argv + ["--query", "What is in the image?"], "ignored\n")
    [(prompt, visuals, answer)] = generations
    assert visuals == 1 and prompt.count("<image>\nWhat is in the image?") == 1
    assert capsys.readouterr().out.strip() == answer


def test_one_shot_query_quantized_on_a_cpu(
    monkeypatch, capsys, generations, tiny_checkpoint, media_dir
):
    """`--load-8bit --device cpu` loads with torchao and answers (`tests/model/test_quantization`
    checks the weights and the error)."""
    needs_torchao()
    argv = base_argv(tiny_checkpoint, "--image-file", str(media_dir / "picture.png"))
    chat(monkeypatch, argv + ["--load-8bit", "--device", "cpu", "--query", "What is it?"])
    [(_, visuals, answer)] = generations
    assert visuals == 1 and capsys.readouterr().out.strip() == answer


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-file", "{media}/missing.png"], "does not exist"),
        (["--image-file", "{media}/not_an_image.png"], "Cannot read image"),
        (["--video-file", "{media}/no_frames.mp4"], "no_frames.mp4"),
        (["--image-file", "https://example.com/a.png"], "URLs are not downloaded"),
        (["--max-new-tokens", "100000"], "context"),
        (["--load-4bit", "--dtype", "float32"], "keeps the unquantized weights in bfloat16"),
    ],
)
def test_bad_input_raises_a_usage_error_with_the_message(
    tiny_checkpoint, media_dir, extra, message
):
    """`chat` called from Python with the settings of the command line raises, not exits."""
    extra = [arg.format(media=media_dir) for arg in extra]
    argv = ["--model-path", tiny_checkpoint, *extra, "--query", "Hi", "--device", "cpu"]
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(UsageError, match=re.escape(message)):
        cli.chat(**args.func.arguments(args))


def test_missing_checkpoint_raises_a_usage_error_naming_it(tmp_path):
    with pytest.raises(UsageError, match="nowhere"):
        cli.chat(ModelSpec(path=str(tmp_path / "nowhere")), options=cli.ChatOptions(query="Hi"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-file", "{media}/missing.png"], "error: --image-file"),  # raised by `chat`
        (["--conv-mode", "llava_v0"], "Unknown conv mode"),  # refused by the settings' flags
        (["--top-p", "1.5"], "--top-p"),
    ],
)
def test_the_command_exits_non_zero_with_the_message(
    monkeypatch, tiny_checkpoint, media_dir, extra, message
):
    extra = [arg.format(media=media_dir) for arg in extra]
    argv = ["--model-path", tiny_checkpoint, *extra, "--query", "Hi", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_info:
        chat(monkeypatch, argv)
    assert isinstance(exit_info.value.code, str)  # SystemExit(str) prints it and exits with 1
    assert message in exit_info.value.code


def test_shim_maps_the_reference_flags(tiny_checkpoint, media_dir):
    legacy = run_llava_mini.build_parser().parse_args(
        [
            "--model-path", tiny_checkpoint,
            "--image-file", f"{media_dir / 'picture.png'},other.png",
            "--conv-mode", "llava_llama_3_1",
            "--model-name", "llava-mini",
            "--query", "Hi",
            "--top_p", "0.9",
            "--max_new_tokens", "7",
        ]
    )  # fmt: skip
    with (
        pytest.warns(FutureWarning, match="--model-name"),
        pytest.warns(UserWarning, match="first"),
    ):
        argv = run_llava_mini.chat_argv(legacy)
    args = cli.build_parser().parse_args(argv)
    assert args.image_file == str(media_dir / "picture.png") and args.max_new_tokens == 7
    assert (args.top_p, args.temperature, args.num_beams) == (0.9, 0.0, 1)
    assert args.conv_mode == "llava_llama_3_1" and args.query == "Hi"
    with pytest.raises(SystemExit, match="--model-base"):
        run_llava_mini.main(["--model-path", "x", "--model-base", "y", "--query", "Hi"])


def test_documented_commands_run_as_subprocesses(tiny_checkpoint, media_dir):
    """The reference's documented command (the shim, run as a script) and `python -m
    llavamini.serve.cli` with a piped conversation, run side by side."""
    shim = [
        sys.executable, "llavamini/eval/run_llava_mini.py",
        "--model-path", tiny_checkpoint,
        "--image-file", str(media_dir / "picture.png"),
        "--conv-mode", "llava_llama_3_1",
        "--model-name", "llava-mini",
        "--query", "What is unusual about this image?",
        "--max_new_tokens", "4",
    ]  # fmt: skip
    module = [sys.executable, "-m", "llavamini.serve.cli", *base_argv(tiny_checkpoint)]
    runs = [
        subprocess.Popen(
            command,
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for command in (shim, module)
    ]
    try:
        shim_out, shim_err = runs[0].communicate("", timeout=SUBPROCESS_TIMEOUT_S)
        chat_out, chat_err = runs[1].communicate("Hello\nAgain\n", timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        for run in runs:
            run.kill()
    assert runs[0].returncode == 0, shim_err
    assert "--model-name is deprecated" in shim_err
    assert shim_out.strip() and shim_out.endswith("\n")  # the answer, on its own line
    assert runs[1].returncode == 0, chat_err
    assert chat_out.count("ASSISTANT: ") == 2 and chat_out.endswith("USER: \n")


def test_subcommands_register_on_the_llavamini_command(tiny_checkpoint):
    """`chat`, `serve` and `gradio` as `llavamini.cli` registers them."""
    from llavamini.cli import build_parser
    from llavamini.serve import gradio_app

    def parse(*argv):
        return build_parser(argv[0]).parse_args(argv)

    chat_args = parse("chat", "--model-path", tiny_checkpoint, "--query", "Hi")
    assert chat_args.func.function is cli.chat and chat_args.temperature == 0.0
    assert chat_args.max_new_tokens == 512 and chat_args.video_max_frames == MAX_VIDEO_FRAMES
    serve_args = parse("serve", "--model-path", tiny_checkpoint)
    assert (serve_args.host, serve_args.port, serve_args.allowed_media_dir) == (
        "127.0.0.1",
        8000,
        None,
    )
    assert serve_args.func.function is server.serve
    assert serve_args.video_max_frames == MAX_VIDEO_FRAMES
    gradio_args = parse("gradio", "--model-path", "x")
    assert gradio_args.func.function is gradio_app.gradio and gradio_args.host == "127.0.0.1"
    with pytest.raises(SystemExit):  # one file kind at a time
        parse("chat", "--model-path", "x", "--image-file", "a", "--video-file", "b")
