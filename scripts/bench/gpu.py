"""GPU checks that the CPU runs cannot do, for `scripts/bench/gpu.sh`: one Markdown file of results.

    python scripts/bench/gpu.py attention RESULTS.md   flash-attn 2 vs SDPA, bf16, 8B shapes
    python scripts/bench/gpu.py video RESULTS.md       encode_video chunking and peak memory

`attention`: the Llama-3.1-8B + CLIP-L/336 LLaVA-Mini (random weights, `llavamini.bench.configs`)
in bfloat16, greedy tokens and TTFT with `attn_implementation` SDPA against flash_attention_2
(pre-fusion's last layer on the read rows relies on flash-attn aligning a query block after a KV
cache bottom-right; the tokens must agree). Skipped, and said so, without flash_attn.

`video`: frames/s and peak CUDA memory of `encode_video` at 64 frames for the chunk chosen by
device (`video_chunk_size`) against frame by frame and chunks of 32, and peak memory at 8, 64
and 512 frames with the chosen chunk (it must not grow with the number of frames).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from llavamini import LlavaMiniForCausalLM
from llavamini.bench.configs import build_config
from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.model.packing import prefusion_text_keep

DEVICE = "cuda"


def build(attention: str) -> LlavaMiniForCausalLM:
    torch.manual_seed(0)
    config = build_config("8b", "mini-1")
    config._attn_implementation = attention
    with torch.device(DEVICE):
        model = LlavaMiniForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def prompt(tokens: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (1, tokens + 1), generator=generator)
    ids[0, 5] = IMAGE_TOKEN_INDEX
    return ids.to(DEVICE)


def images(count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(count, 1, 3, 336, 336, generator=generator).to(DEVICE, torch.bfloat16)


def cuda_ms(fn, repeats: int = 5) -> float:
    """Median wall time in ms of `fn` after two warm-up calls, synchronised."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def attention_section() -> list[str]:
    lines = ["## flash-attn 2 vs SDPA (8B shapes, mini-1, bf16, random weights)", ""]
    if importlib.util.find_spec("flash_attn") is None:
        return lines + ["flash_attn is not installed: skipped.", ""]
    ids, image = prompt(), images(1)
    rows = []
    tokens = {}
    for attention in ("sdpa", "flash_attention_2"):
        model = build(attention)

        def generate(new_tokens, model=model):
            return model.generate(
                inputs=ids, images=image, do_sample=False, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=0,
            )  # fmt: skip

        with torch.no_grad():
            tokens[attention] = generate(16)[0].tolist()
            ttft = cuda_ms(lambda generate=generate: generate(1))
        rows.append(f"| {attention} | {ttft:.1f} | {tokens[attention][:8]} |")
        del model
        torch.cuda.empty_cache()
    same = tokens["sdpa"] == tokens["flash_attention_2"]
    return lines + [
        "| attention | TTFT ms (median of 5) | first greedy tokens |",
        "|---|---|---|",
        *rows,
        "",
        f"Greedy tokens (16) {'equal' if same else 'DIFFER'}.",
        "",
    ]


def video_section() -> list[str]:
    model = build("sdpa")
    ids = prompt(32)[0]
    embeds = model.model.embed_tokens(ids.clamp(min=0))
    keep = prefusion_text_keep(ids[None], torch.ones_like(ids)[None], None)[0]
    lines = ["## Video: encode_video on CUDA (8B shapes, mini-1, bf16)", ""]
    lines += ["| frames | chunk | ms | frames/s | peak MiB over the weights |", "|---" * 5 + "|"]
    weights = torch.cuda.memory_allocated()
    for frames, chunk in ((64, None), (64, 1), (64, 32), (8, None), (512, None)):
        video = images(frames)
        model.config.video_chunk_frames = chunk
        chosen = model.model.video_chunk_size(video)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            ms = cuda_ms(lambda video=video: model.model.encode_video(video, embeds, keep), 2)
        peak = (torch.cuda.max_memory_allocated() - weights - video.nbytes) / 2**20
        label = f"{chosen} (auto)" if chunk is None else str(chunk)
        lines.append(f"| {frames} | {label} | {ms:.0f} | {frames / ms * 1000:.1f} | {peak:.0f} |")
        del video
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=("attention", "video"))
    parser.add_argument("results")
    args = parser.parse_args()
    lines = attention_section() if args.section == "attention" else video_section()
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
