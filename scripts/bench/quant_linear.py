"""Weight-only quantization backends on one Llama-3.1-8B MLP linear (4096 -> 14336), on a CPU.

    python scripts/bench/quant_linear.py [--threads 1] [--prefill-rows 600] [--repeats 5]

For each candidate: milliseconds per call at batch 1 (a decode step) and at `--prefill-rows`
rows (a prefill), the weight's bytes, and the output's error against the bfloat16 weight
computed in float32 (relative L2 error and cosine). The input is float32 for the candidates
whose kernels take it (the compute dtype on a CPU without native bfloat16), else bfloat16.
A candidate whose kernel is missing on this machine is reported as such. Prints Markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IN_FEATURES, OUT_FEATURES = 4096, 14336


def tensor_bytes(weight: torch.Tensor) -> int:
    """Bytes a (possibly torchao-subclassed or bitsandbytes) weight holds, its scales included."""
    if hasattr(weight, "__tensor_flatten__"):
        names, _ = weight.__tensor_flatten__()
        return sum(tensor_bytes(getattr(weight, name)) for name in names)
    total = weight.untyped_storage().nbytes()
    state = getattr(weight, "quant_state", None)
    if state is not None:
        packed = state.as_dict(packed=True).values()
        total += sum(t.numel() * t.element_size() for t in packed if isinstance(t, torch.Tensor))
    scb = getattr(weight, "SCB", None)
    return total + (scb.numel() * scb.element_size() if scb is not None else 0)


def torchao_linear(weight: torch.Tensor, config, dtype: torch.dtype) -> torch.nn.Linear:
    """A linear holding `weight` in `dtype` (the activations' dtype), quantized by torchao."""
    from torchao.quantization import quantize_

    linear = torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False, dtype=dtype)
    linear.weight.data.copy_(weight)
    quantize_(linear, config)
    return linear


Candidates = dict[str, tuple[Callable[[], torch.nn.Module], torch.dtype]]


def candidates(weight: torch.Tensor) -> Candidates:
    """name -> (builds the module from the bf16 `weight`, input dtype)."""

    def plain(dtype):
        def build():
            linear = torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False, dtype=dtype)
            linear.weight.data.copy_(weight)
            return linear

        return build

    rows = {
        "float32 (no quantization)": (plain(torch.float32), torch.float32),
        "bfloat16 (no quantization)": (plain(torch.bfloat16), torch.bfloat16),
    }
    if importlib.util.find_spec("torchao"):
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
        )

        configs = {
            "torchao Int8WeightOnly": Int8WeightOnlyConfig(set_inductor_config=False),
            "torchao Int8DynActInt8Weight": Int8DynamicActivationInt8WeightConfig(
                set_inductor_config=False
            ),
            "torchao Int4WeightOnly (plain)": Int4WeightOnlyConfig(set_inductor_config=False),
            "torchao Int4 opaque (CPU tinygemm)": PrototypeInt4WeightOnlyConfig(
                group_size=128, set_inductor_config=False
            ),
        }
        for name, config in configs.items():
            for dtype, label in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
                rows[f"{name}, {label} act"] = (
                    partial(torchao_linear, weight, config, dtype),
                    dtype,
                )
    if importlib.util.find_spec("bitsandbytes"):
        import bitsandbytes as bnb

        def bnb_8bit():
            linear = bnb.nn.Linear8bitLt(
                IN_FEATURES, OUT_FEATURES, bias=False, has_fp16_weights=False
            )
            linear.weight = bnb.nn.Int8Params(
                weight.clone(), requires_grad=False, has_fp16_weights=False
            )
            return linear.to("cpu")

        def bnb_4bit(dtype):
            def build():
                linear = bnb.nn.Linear4bit(
                    IN_FEATURES, OUT_FEATURES, bias=False, compute_dtype=dtype, quant_type="nf4"
                )
                linear.weight = bnb.nn.Params4bit(
                    weight.clone(), requires_grad=False, quant_type="nf4"
                )
                return linear.to("cpu")

            return build

        rows.update(
            {
                "bitsandbytes 8-bit (LLM.int8), bf16 act": (bnb_8bit, torch.bfloat16),
                "bitsandbytes 4-bit NF4, f32 act": (bnb_4bit(torch.float32), torch.float32),
                "bitsandbytes 4-bit NF4, bf16 act": (bnb_4bit(torch.bfloat16), torch.bfloat16),
            }
        )
    return rows


def time_ms(call: Callable[[], object], repeats: int) -> float:
    call()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


@torch.inference_mode()
def measure(args: argparse.Namespace) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(OUT_FEATURES, IN_FEATURES, generator=generator) * 0.02).bfloat16()
    decode_x = torch.randn(1, IN_FEATURES, generator=generator)
    prefill_x = torch.randn(args.prefill_rows, IN_FEATURES, generator=generator)
    reference = F.linear(prefill_x, weight.float())
    rows = []
    for name, (build, dtype) in candidates(weight).items():
        if args.only and not any(word in name for word in args.only):
            continue
        try:
            module = build()
            output = module(prefill_x.to(dtype)).float()
        except Exception as error:  # a backend without a kernel for this CPU or dtype
            rows.append({"name": name, "error": f"{type(error).__name__}: {str(error)[:120]}"})
            continue
        decode_input, prefill_input = decode_x.to(dtype), prefill_x.to(dtype)
        error = (output - reference).double()
        rows.append(
            {
                "name": name,
                "decode_ms": time_ms(partial(module, decode_input), args.repeats * 4),
                "prefill_ms": time_ms(partial(module, prefill_input), args.repeats),
                "mib": tensor_bytes(module.weight) / 2**20,
                "rel_error": float(error.norm() / reference.double().norm()),
                "cosine": float(
                    F.cosine_similarity(output.double().flatten(), reference.double().flatten(), 0)
                ),
            }
        )
        logger.info("%s", rows[-1])
        del module
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"One {IN_FEATURES} -> {OUT_FEATURES} linear, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "",
        f"| backend | decode ms (1 row) | prefill ms ({args.prefill_rows} rows) | weight MiB | "
        "rel. error | cosine |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['name']} | fails: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['name']} | {row['decode_ms']:.2f} | {row['prefill_ms']:.0f} | "
            f"{row['mib']:.0f} | {row['rel_error']:.4f} | {row['cosine']:.6f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prefill-rows", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="candidates whose name contains one of these")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    sys.stdout.write(render(measure(args), args))


if __name__ == "__main__":
    main()
