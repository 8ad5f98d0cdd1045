"""`llavamini bench --smoke` runs every section and writes its JSON and PNG; the timed generation
path gives `generate`'s tokens; the CPU peak-memory tracker counts new tensors only."""

import argparse
import json

import pytest
import torch

from llavamini.bench.memory import TensorPeak
from llavamini.bench.timing import GenerationCase, generation_run
from llavamini.cli import build_parser
from llavamini.errors import UsageError
from tests.conftest import make_model, random_images

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench_parser() -> argparse.ArgumentParser:
    """The `llavamini` parser with the `bench` subcommand's flags."""
    return build_parser("bench")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("bench")
    args = bench_parser().parse_args(["bench", "--smoke", "--output-dir", str(output_dir)])
    return args, output_dir


def test_smoke_writes_json_png_and_tables(smoke_run, capsys):
    args, output_dir = smoke_run
    args.func(args)
    stdout = capsys.readouterr().out
    results = json.loads((output_dir / "bench.json").read_text())
    assert (output_dir / "bench.png").read_bytes()[:8] == PNG_SIGNATURE

    expected = {"meta", "flops", "paper_comparison", "timing", "fast_paths", "video", "targets"}
    assert expected <= set(results)
    assert {"cpu", "cpu_cores", "torch", "transformers"} <= set(results["meta"]["machine"])
    flops = results["flops"]["models"]["llama-3.1-8b"]["mini-1"]
    components = ("vision_tower", "projector", "compressor", "prefusion", "llm_prefill")
    assert set(components) | {"decode_token", "prefill_total", "kv_cache_bytes_per_image"} <= set(
        flops
    )
    assert flops["meta_check"] is True
    assert flops["kv_cache_bytes_per_image"] == 128 * 1024  # one token, Llama-3.1-8B, bf16
    timing = results["timing"]["variants"]
    assert set(timing) == {"llava-1.5", "mini-1"}
    for result in timing.values():
        assert result["ttft_ms"] > 0 and result["decode_tokens_per_s"] > 0
        assert set(components) <= set(result["components_ms"])
        assert result["peak_bytes"] > 0
    assert timing["mini-1"]["ttft_speedup"] > 0
    assert {row["path"] for row in results["fast_paths"]} >= {
        "attention kernel",
        "dtype",
        "compressor attention weights",
    }
    video = results["video"]
    assert {(row["frames"], row["chunk"]) for row in video["rows"]} == {(2, 1), (2, 2)}
    assert set(video["batched_speedup"]) == {"2"}  # JSON keys are strings
    for title in ("FLOPs per component", "Against the paper", "Time to first token", "Video"):
        assert title in stdout


def test_smoke_rejects_bad_options(tmp_path):
    args = bench_parser().parse_args(["bench", "--compile", "--output-dir", str(tmp_path)])
    with pytest.raises(UsageError, match="--compile needs --static-cache"):
        args.func(args)


def test_timed_generation_gives_generates_tokens():
    """The prefill + decode loop that is timed is greedy generation, token for token."""
    model = make_model(seed=1)
    ids = torch.tensor([[5, 6, -200, 7, 8, 9]])
    images = random_images(1)
    case = GenerationCase(model=model, input_ids=ids, images=images, new_tokens=6)
    run = generation_run(case)
    expected = model.generate(
        inputs=ids, images=images, max_new_tokens=6, min_new_tokens=6, do_sample=False
    )
    assert run.tokens == expected[0].tolist()
    assert run.prompt_length == 5 + model.config.num_compressed_tokens
    static = GenerationCase(
        model=model, input_ids=ids, images=images, new_tokens=6, static_cache=True
    )
    assert generation_run(static).tokens == run.tokens
    assert generation_run(static).tokens == run.tokens  # the cache is reused, reset


def test_tensor_peak_counts_new_tensors_not_views():
    weight = torch.randn(256, 256)  # 256 KiB, made before: not counted
    with TensorPeak() as tracker:
        weight.t()  # a view of it: not counted
        product = weight @ weight  # 256 KiB
        total = product + 1  # 256 KiB more while both live
        del product, total
        kept = torch.ones(4)
    assert tracker.peak_bytes == 2 * 256 * 256 * 4
    assert tracker.live_bytes == kept.numel() * 4 == 16
