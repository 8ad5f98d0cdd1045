"""Video encoding: frames/s and peak memory of `encode_video`, batched against frame by frame.

`encode_video` runs the tower, compressor, projector and pre-fusion on `video_chunk_frames` frames
at a time (the reference looped over frames one by one); chunk 1 is that frame-by-frame baseline,
at the same config and on the same frames. Each frame is read with the same text prompt, as in
inference. What the LLM then needs grows only by its KV cache: `frames * V` positions.
"""

from __future__ import annotations

from functools import partial

import torch

from llavamini.bench.flops import kv_cache_bytes
from llavamini.bench.memory import peak_memory
from llavamini.bench.timing import make_images, make_prompt, median, time_calls
from llavamini.model import LlavaMiniForCausalLM
from llavamini.model.packing import prefusion_text_keep


def video_inputs(
    model: LlavaMiniForCausalLM, frames: int, text_tokens: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(T, parts, 3, H, W)` random frames, `(L + 1, D)` prompt embeddings, `(L + 1,)` keep."""
    config = model.config
    device, dtype = model.device, model.dtype
    input_ids = make_prompt(config, text_tokens, seed).to(device)
    keep = prefusion_text_keep(input_ids, torch.ones_like(input_ids), None)[0]
    text_embeds = model.model.embed_tokens(input_ids.clamp(min=0))[0]
    pixels = make_images(config, frames, seed).to(device, dtype)
    return pixels, text_embeds, keep


@torch.no_grad()
def encode(
    model: LlavaMiniForCausalLM,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    chunk: int,
) -> None:
    """One `encode_video` on `inputs` with `video_chunk_frames = chunk` (restored after)."""
    saved = model.config.video_chunk_frames
    model.config.video_chunk_frames = chunk
    try:
        model.model.encode_video(*inputs)
    finally:
        model.config.video_chunk_frames = saved


def encode_peak_bytes(
    model: LlavaMiniForCausalLM, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], chunk: int
) -> int:
    """Peak memory (bytes above the start) of one `encode_video` with `chunk` frames at a time."""
    with peak_memory(inputs[0].device) as memory:
        encode(model, inputs, chunk)
    return memory["peak_bytes"]


def video_benchmark(
    model: LlavaMiniForCausalLM,
    frame_counts: list[int],
    chunks: list[int],
    text_tokens: int,
    warmup: int,
    repeats: int,
    memory: bool = True,
) -> list[dict]:
    """One row per (frames, chunk): median seconds, frames/s, peak memory, and the KV cache the
    LLM would need for the video's `frames * V` tokens (bf16). The chunk settings of one frame
    count run interleaved; only the first frame count gets warm-up runs."""
    rows = []
    tokens_per_frame = model.config.num_compressed_tokens
    device = model.device
    for frames in frame_counts:
        inputs = video_inputs(model, frames, text_tokens)
        calls = {chunk: partial(encode, model, inputs, chunk) for chunk in chunks}
        first = frames == frame_counts[0]
        runs_ms = time_calls(calls, warmup if first else 0, repeats, device)
        for chunk in chunks:
            seconds = median(runs_ms[chunk]) / 1e3
            rows.append(
                {
                    "frames": frames,
                    "chunk": chunk,
                    "seconds": seconds,
                    "seconds_runs": [ms / 1e3 for ms in runs_ms[chunk]],
                    "frames_per_s": frames / seconds,
                    "peak_bytes": encode_peak_bytes(model, inputs, chunk) if memory else None,
                    "llm_kv_cache_bytes": kv_cache_bytes(model.config, frames * tokens_per_frame),
                }
            )
    return rows


def batched_speedup(rows: list[dict]) -> dict[int, float]:
    """Frames -> frames/s of the largest chunk over frames/s of chunk 1."""
    speedups = {}
    for frames in sorted({row["frames"] for row in rows}):
        by_chunk = {row["chunk"]: row["frames_per_s"] for row in rows if row["frames"] == frames}
        if 1 in by_chunk and len(by_chunk) > 1:
            speedups[frames] = by_chunk[max(by_chunk)] / by_chunk[1]
    return speedups
