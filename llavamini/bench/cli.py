"""`llavamini bench`: FLOPs, time to first token, decode speed, memory, KV cache, video encoding.

Prints the result tables (Markdown) on stdout and writes `bench.json` and `bench.png` to
`--output-dir`. Only the standard library is imported here; torch comes with `run`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)

SCALE_CHOICES = ("tiny", "small", "7b", "8b")
SECTION_CHOICES = ("flops", "paper", "timing", "fastpaths", "video")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="efficiency benchmark: FLOPs vs the paper, TTFT, decode tok/s, memory, video",
        description=__doc__,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--scale",
        choices=SCALE_CHOICES,
        default="tiny",
        help="model shapes to time: tiny/small = real depths, widths / 16 or / 8 (CPU); "
        "7b/8b = Vicuna-7B / Llama-3.1-8B with random weights (GPU). FLOPs are always "
        "counted at the real shapes.",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU)")
    parser.add_argument("--variants", nargs="+", default=None, help="default: all")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt tokens besides <image>")
    parser.add_argument("--new-tokens", type=int, default=16, help="generated tokens per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fastpath-variants",
        nargs="+",
        default=None,
        help="variants the fast paths are measured on (default: llava-1.5 mini-1)",
    )
    parser.add_argument("--video-frames", type=int, nargs="+", default=None)
    parser.add_argument("--video-chunk", type=int, default=16, help="batched video_chunk_frames")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTION_CHOICES, default=list(SECTION_CHOICES)
    )
    parser.add_argument(
        "--no-meta-check",
        action="store_true",
        help="skip recounting the real-scale FLOPs with FlopCounterMode on meta-device models",
    )
    parser.add_argument(
        "--static-cache", action="store_true", help="also time decoding with a static KV cache"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile'd decoding (with --static-cache; for GPUs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output-dir", default=os.path.join("outputs", "bench"))
    parser.add_argument(
        "--smoke", action="store_true", help="every section at the smallest sizes (seconds)"
    )
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    """`BenchOptions` from the parsed flags (`--smoke` starts from `smoke_options`)."""
    from llavamini.bench.run import BenchOptions, smoke_options

    fields = dict(
        scale=args.scale,
        device=args.device,
        dtype=args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"),
        text_tokens=args.text_tokens,
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        video_chunk=args.video_chunk,
        sections=tuple(args.sections),
        meta_check=not args.no_meta_check,
        static_cache=args.static_cache,
        compile=args.compile,
        threads=args.threads,
        output_dir=args.output_dir,
    )
    if args.variants:
        fields["variants"] = tuple(args.variants)
    if args.fastpath_variants:
        fields["fastpath_variants"] = tuple(args.fastpath_variants)
    if args.video_frames:
        fields["video_frames"] = tuple(args.video_frames)
    if args.smoke:
        explicit = {"scale", "device", "dtype", "sections", "output_dir", "threads"}
        explicit |= {"static_cache", "compile", "meta_check"}
        return smoke_options(**{k: v for k, v in fields.items() if k in explicit})
    return BenchOptions(**fields)


def run(args: argparse.Namespace) -> None:
    from llavamini.bench import report
    from llavamini.bench.run import run_benchmark

    try:
        options = options_from_args(args)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    command = " ".join(["llavamini", *sys.argv[1:]])
    results = run_benchmark(options, command)
    json_path = os.path.join(options.output_dir, "bench.json")
    png_path = os.path.join(options.output_dir, "bench.png")
    report.write_json(results, json_path)
    report.write_png(results, png_path)
    sys.stdout.write(report.render(results))
    logger.info("bench: %.0f s; wrote %s and %s", results["meta"]["seconds"], json_path, png_path)
