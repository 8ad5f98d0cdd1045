"""Logits of the quantized model against bfloat16 on the same inputs, one model in memory at a time.

    python scripts/bench/quant_error.py CKPT [--quantization 8bit 4bit] [--text-tokens 128]

Loads CKPT in bfloat16 on the CPU, computes the logits at every position of one random prompt
(`--text-tokens` ids and one image; LLaVA-Mini's LLM sees them all, so >= 100 positions), frees
the model, then does the same for each quantization. Prints, per quantization: the mean and
least cosine of the logits per position, max |diff| over the reference logits' standard
deviation, and top-1 agreement, with each load's time and the process's peak RSS. At the 8B
size the bfloat16 pass needs ~17 GB; run it with nothing else large on the machine.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time

import torch
import torch.nn.functional as F

from llavamini.bench.memory import process_peak_rss_bytes
from llavamini.bench.timing import make_images, make_prompt
from llavamini.model.loading import QUANTIZATION_SKIP_MODULES, ModelSpec
from llavamini.utils.allocator import release_freed_memory

logger = logging.getLogger(__name__)


def logits_of(
    path: str, quantization: str | None, text_tokens: int, noise: float = 0.0
) -> tuple[torch.Tensor, float]:
    """(`(positions, vocab)` float32 logits, load seconds) of one load of `path`. `noise` > 0
    (unquantized only): every linear that quantization would convert adds Gaussian noise of that
    size relative to its output's RMS, the error of a quantized linear without its library."""
    started = time.perf_counter()
    model = ModelSpec(path, device="cpu", dtype="bfloat16", quantization=quantization).load().model
    seconds = time.perf_counter() - started
    if noise:
        generator = torch.Generator().manual_seed(0)

        def perturb(module, inputs, output):
            rms = output.float().pow(2).mean().sqrt()
            error = torch.randn(output.shape, generator=generator) * (noise * rms)
            return output + error.to(output.dtype)

        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.startswith(
                tuple(QUANTIZATION_SKIP_MODULES)
            ):
                module.register_forward_hook(perturb)
    ids = make_prompt(model.config, text_tokens)
    with torch.inference_mode():  # not while loading: the weights would be inference tensors
        logits = model(input_ids=ids, images=make_images(model.config)).logits[0].float()
    del model
    gc.collect()
    release_freed_memory()  # kept by glibc since the model was built (llavamini/utils/allocator.py)
    return logits, seconds


def compare(quantized: torch.Tensor, reference: torch.Tensor) -> dict:
    cosine = F.cosine_similarity(quantized.double(), reference.double(), dim=-1)
    return {
        "positions": reference.shape[0],
        "mean_cosine": cosine.mean().item(),
        "least_cosine": cosine.min().item(),
        "max_abs_diff_over_std": ((quantized - reference).abs().max() / reference.std()).item(),
        "top1_agreement": (quantized.argmax(-1) == reference.argmax(-1)).float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--quantization", nargs="*", default=["8bit", "4bit"])
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--noise",
        type=float,
        nargs="*",
        default=[],
        help="also bfloat16 with this relative Gaussian error on each linear's output that "
        "quantization converts (e.g. 0.009 and 0.1, int8's and int4's error per linear): how much "
        "the model itself amplifies an error of that size",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    reference, seconds = logits_of(args.checkpoint, None, args.text_tokens)
    lines = [
        f"bfloat16: loaded in {seconds:.1f} s, peak RSS {process_peak_rss_bytes() / 2**30:.2f} GiB",
        "",
        "| quantization | positions | mean cosine | least cosine | max abs diff / std | top-1 "
        "agreement | load s |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [(q, q, 0.0) for q in args.quantization]
    runs += [(f"bfloat16 + {noise:g} noise", None, noise) for noise in args.noise]
    for label, quantization, noise in runs:
        logits, seconds = logits_of(args.checkpoint, quantization, args.text_tokens, noise)
        row = compare(logits, reference)
        logger.info("%s: %s", label, row)
        lines.append(
            f"| {label} | {row['positions']} | {row['mean_cosine']:.5f} | "
            f"{row['least_cosine']:.5f} | {row['max_abs_diff_over_std']:.2f} | "
            f"{row['top1_agreement']:.3f} | {seconds:.1f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
