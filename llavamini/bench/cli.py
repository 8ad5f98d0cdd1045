"""`llavamini bench`: FLOPs, time to first token, decode speed, memory, KV cache, video encoding.

Prints the result tables (Markdown) on stdout and writes `bench.json` and `bench.png` to
`--output-dir`. The flags are `BenchArgs`' fields; `bench(BenchArgs(...))` runs the same from
Python.

`llavamini bench checkpoint --scale 8b --output-dir DIR` writes a random-weight checkpoint with
the release's config and key layout (`CheckpointArgs`, `llavamini.bench.checkpoint`), for
`--model-path` in chat, serve and `bench --model-path`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

from llavamini.bench import report
from llavamini.bench.run import BenchOptions, run_benchmark, smoke_options
from llavamini.errors import UsageError

logger = logging.getLogger(__name__)

SMOKE_KEEPS = frozenset(
    {"scale", "device", "dtype", "sections", "output_dir", "threads"}
    | {"static_cache", "compile", "meta_check", "model_path", "quantization"}
)
"""The settings `--smoke` takes from the flags; the sizes are the smoke run's own."""


@dataclass(frozen=True)
class BenchArgs:
    """What `llavamini bench` measures: its flags, turned into `BenchOptions` by `options()`
    (None: `BenchOptions`' default; `dtype` None: bfloat16 on CUDA, else float32)."""

    scale: Literal["tiny", "small", "7b", "8b"] = field(
        default="tiny",
        metadata={
            "help": "model shapes to time: tiny/small = real depths, widths / 16 or / 8 (CPU); "
            "7b/8b = Vicuna-7B / Llama-3.1-8B with random weights (GPU). FLOPs are always "
            "counted at the real shapes."
        },
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda or cuda:N"})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "default: float32 on a CPU at tiny/small scale, else bfloat16 (with "
            "--quantization: bfloat16 for the unquantized weights)"
        },
    )
    variants: tuple[str, ...] | None = field(default=None, metadata={"help": "default: all"})
    text_tokens: int = field(default=64, metadata={"help": "prompt tokens besides <image>"})
    new_tokens: int = field(default=16, metadata={"help": "generated tokens per run"})
    warmup: int = 1
    repeats: int = 3
    fastpath_variants: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "variants the fast paths are measured on (default: llava-1.5 mini-1)"},
    )
    video_frames: tuple[int, ...] | None = None
    video_chunk: int = field(default=16, metadata={"help": "batched video_chunk_frames"})
    sections: tuple[Literal["flops", "paper", "timing", "fastpaths", "video"], ...] = (
        "flops",
        "paper",
        "timing",
        "fastpaths",
        "video",
    )
    meta_check: bool = field(
        default=True,
        metadata={
            "help": "recount the real-scale FLOPs with FlopCounterMode on meta-device models"
        },
    )
    static_cache: bool = field(
        default=False, metadata={"help": "also time decoding with a static KV cache"}
    )
    compile: bool = field(
        default=False,
        metadata={"help": "also time torch.compile'd decoding (with --static-cache; for GPUs)"},
    )
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    model_path: str | None = field(
        default=None,
        metadata={
            "help": "time this checkpoint (`llavamini bench checkpoint`) instead of random "
            "weights; on a CPU one model serves its own variant and llava-1.5"
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={"choices": ("8bit", "4bit"), "help": "load --model-path quantized"},
    )
    output_dir: str = os.path.join("outputs", "bench")
    smoke: bool = field(
        default=False, metadata={"help": "every section at the smallest sizes (seconds)"}
    )

    def options(self) -> BenchOptions:
        """The `BenchOptions` of these flags (`smoke` starts from `smoke_options`); raises
        `ValueError` naming a bad flag."""
        fields = {
            name: getattr(self, name)
            for name in ("scale", "device", "text_tokens", "new_tokens", "warmup", "repeats")
            + ("video_chunk", "sections", "meta_check", "static_cache", "compile", "threads")
            + ("output_dir", "model_path", "quantization")
        }
        large = self.scale in ("7b", "8b") or self.model_path is not None
        fields["dtype"] = self.dtype or (
            "bfloat16" if self.device.startswith("cuda") or large else "float32"
        )
        for name in ("variants", "fastpath_variants", "video_frames"):
            if getattr(self, name):
                fields[name] = getattr(self, name)
        if self.smoke:
            return smoke_options(**{k: v for k, v in fields.items() if k in SMOKE_KEEPS})
        return BenchOptions(**fields)


@dataclass(frozen=True)
class CheckpointArgs:
    """What `llavamini bench checkpoint` writes (see `write_random_checkpoint`)."""

    output_dir: str = field(metadata={"help": "folder to write the checkpoint to"})
    scale: Literal["tiny", "small", "7b", "8b"] = field(
        default="8b",
        metadata={"help": "8b: the release's shapes (Llama-3.1-8B + CLIP-L/336), ~17 GB on disk"},
    )
    variant: Literal["mini-1", "llava-1.5"] = field(
        default="mini-1",
        metadata={
            "help": "mini-1: the release (1 token, 4 pre-fusion layers); llava-1.5: the "
            "same LLM and tower in LLaVA-1.5 mode (576 tokens, no compressor)"
        },
    )
    max_shard_gb: float = field(
        default=2.0, metadata={"help": "largest shard, GB (about the writer's peak memory)"}
    )
    seed: int = 0

    def __post_init__(self):
        if self.max_shard_gb <= 0:
            raise ValueError(f"--max-shard-gb must be > 0, got {self.max_shard_gb}.")


def checkpoint(args: CheckpointArgs) -> str:
    """Write a random-weight checkpoint with the release's config, keys, tokenizer-compatible
    vocabulary and processor, bfloat16, shard by shard. Returns the folder."""
    from llavamini.bench.checkpoint import write_random_checkpoint

    return write_random_checkpoint(
        args.output_dir,
        scale=args.scale,
        variant=args.variant,
        max_shard_bytes=int(args.max_shard_gb * 2**30),
        seed=args.seed,
    )


SUBCOMMANDS = {"checkpoint": checkpoint}
"""`llavamini bench SUBCOMMAND`: verbs beside the benchmark itself (`llavamini.cli`)."""


def bench(args: BenchArgs = BenchArgs()) -> dict:
    """Efficiency benchmark: FLOPs vs the paper, TTFT, decode tok/s, memory, video. Prints the
    tables, writes bench.json and bench.png; returns the results."""
    try:
        options = args.options()
    except ValueError as error:
        raise UsageError(str(error)) from error
    command = " ".join(["llavamini", *sys.argv[1:]])
    results = run_benchmark(options, command)
    json_path = os.path.join(options.output_dir, "bench.json")
    png_path = os.path.join(options.output_dir, "bench.png")
    report.write_json(results, json_path)
    report.write_png(results, png_path)
    sys.stdout.write(report.render(results))
    logger.info("bench: %.0f s; wrote %s and %s", results["meta"]["seconds"], json_path, png_path)
    return results
