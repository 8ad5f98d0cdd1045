"""Compatibility shim for the reference's documented one-shot command:

    python llavamini/eval/run_llava_mini.py --model-path PATH --image-file F \\
        --conv-mode llava_llama_3_1 --model-name llava-mini --query "..."

It answers through `llavamini chat --query` (`llavamini.serve.cli`); use that instead. The old
flags map as follows:
- `--model-name`: ignored with a deprecation warning (the model type comes from config.json).
- `--model-base`: refused (LoRA or projector-only checkpoints must be merged into a full one).
- `--image-file`: split on `--sep` (default ','); only the first file is used, as before.
  URLs are refused (download the file first).
- `--video-file`, `--conv-mode`, `--load-8bit`: as in `llavamini chat`; an omitted
  `--conv-mode` now comes from the tokenizer instead of the model name.
- `--temperature`, `--top_p`, `--num_beams`, `--max_new_tokens`: passed on (same defaults:
  0.0, none, 1, 512).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    """The reference script's flags."""
    parser = argparse.ArgumentParser(
        prog="llavamini/eval/run_llava_mini.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None, help="not supported")
    parser.add_argument("--model-name", default=None, help="deprecated, ignored")
    parser.add_argument("--image-file", default=None)
    parser.add_argument("--video-file", default=None)
    parser.add_argument("--query", required=True)
    parser.add_argument("--conv-mode", default=None)
    parser.add_argument("--sep", default=",")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true")
    return parser


def chat_argv(args: argparse.Namespace) -> list[str]:
    """The `llavamini chat` arguments equivalent to the reference script's; raises
    `UsageError` for flags that have no equivalent."""
    from llavamini.errors import UsageError  # here: see `main`

    if args.model_name is not None:
        warnings.warn(
            "--model-name is deprecated and ignored: the model type is read from the "
            "checkpoint's config.json. Use `llavamini chat --query` instead of this script.",
            FutureWarning,
            stacklevel=2,
        )
    if args.model_base is not None:
        raise UsageError(
            "--model-base is not supported: merge the LoRA or projector weights into a "
            "full checkpoint and pass that as --model-path."
        )
    argv = ["--model-path", args.model_path, "--query", args.query]
    argv += ["--temperature", str(args.temperature), "--max-new-tokens", str(args.max_new_tokens)]
    argv += ["--num-beams", str(args.num_beams)]
    if args.top_p is not None:
        argv += ["--top-p", str(args.top_p)]
    if args.conv_mode is not None:
        argv += ["--conv-mode", args.conv_mode]
    if args.image_file is not None:
        files = [name for name in args.image_file.split(args.sep) if name]
        if len(files) > 1:
            warnings.warn(
                f"--image-file names {len(files)} files; only the first is used, as before.",
                UserWarning,
                stacklevel=2,
            )
        argv += ["--image-file", files[0]] if files else []
    if args.video_file is not None:
        argv += ["--video-file", args.video_file]
    if args.load_8bit:
        argv.append("--load-8bit")
    return argv


def main(argv: list[str] | None = None) -> None:
    """Parse the reference's flags and answer with `llavamini chat`."""
    # Imported here: run as a script, this file first puts the checkout on sys.path (below).
    from llavamini.errors import exit_on_command_error
    from llavamini.serve.cli import main as chat_main

    with exit_on_command_error():
        chat_main(chat_argv(build_parser().parse_args(argv)))


if __name__ == "__main__":
    # Run as a script, Python puts this file's folder first on sys.path, where sibling modules
    # could shadow installed packages; the checkout's root goes there instead, so the command
    # also works from a checkout that is not pip-installed.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
