"""`llavamini bench checkpoint`: a random checkpoint with the release's layout, written shard by
shard, that loads with no missing or unexpected key (at the `tiny` scale: real depths, widths / 16).
"""

import json

import pytest
import torch
from transformers import AutoProcessor

from llavamini.bench.checkpoint import INDEX_FILE, plan_shards, write_random_checkpoint
from llavamini.bench.configs import build_config
from llavamini.bench.memory import TensorPeak
from llavamini.bench.run import CaseFactory, run_benchmark, smoke_options, timing_section
from llavamini.cli import parse
from llavamini.model import LlavaMiniForCausalLM
from llavamini.model.checkpoint import stored_keys
from llavamini.model.loading import ModelSpec
from tests.conftest import needs_torchao

SHARD_BYTES = 8 * 2**20


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(folder, peak bytes of the tensors the writer created) for a tiny mini-1 checkpoint."""
    folder = tmp_path_factory.mktemp("bench-checkpoint") / "mini-1"
    with TensorPeak() as peak:
        write_random_checkpoint(str(folder), scale="tiny", max_shard_bytes=SHARD_BYTES)
    return folder, peak.peak_bytes


def test_loads_with_every_key_and_the_release_fields(written):
    folder, _ = written
    loaded = ModelSpec(str(folder), device="cpu").load()  # strict: a missing key raises
    model = loaded.model
    assert stored_keys(str(folder)) == set(model.state_dict())
    assert model.dtype == torch.bfloat16
    config = model.config
    assert (config.compressor_size, config.prefusion_layer_num) == (1, 4)
    assert config.architectures == ["LlavaMiniLlamaForCausalLM"]
    tokenizer = loaded.tokenizer
    assert len(tokenizer) == config.vocab_size
    assert max(tokenizer.get_vocab().values()) == config.vocab_size - 1
    # Random weights pick any id: each decodes to text, and no text encodes to the filler ids.
    last = config.vocab_size - 1
    assert tokenizer.decode([last]) == f" t{last}"
    assert max(tokenizer(f"a t{last} picture").input_ids) < 512
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor.float()).all(), name
    q_proj = model.model.layers[0].self_attn.q_proj.weight.float()
    assert q_proj.std().item() == pytest.approx(config.initializer_range, rel=0.1)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "LlavaMiniProcessor"
    assert (folder / "processor_config.json").exists()


def test_written_shard_by_shard(written):
    """Several shards, and the writer never held much more than one: the peak of the tensors
    it created is a fraction of the checkpoint."""
    folder, peak_bytes = written
    index = json.loads((folder / INDEX_FILE).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 4
    total = index["metadata"]["total_size"]
    assert sum((folder / name).stat().st_size for name in shards) >= total
    largest_unit = max(u.nbytes() for s in plan_shards(meta_model(), 1) for u in s)
    assert peak_bytes <= 2 * SHARD_BYTES + largest_unit
    assert peak_bytes < total / 2


def meta_model() -> LlavaMiniForCausalLM:
    with torch.device("meta"):
        return LlavaMiniForCausalLM._from_config(
            build_config("tiny", "mini-1"), dtype=torch.bfloat16
        )


def test_llava_1_5_variant_through_the_command_line(tmp_path):
    verb, arguments = parse(
        [
            "bench",
            "checkpoint",
            "--scale",
            "tiny",
            "--variant",
            "llava-1.5",
            "--output-dir",
            str(tmp_path),
        ]
    )
    verb(**arguments)
    model = ModelSpec(str(tmp_path), device="cpu").load().model
    assert model.model.compressor is None and len(model.model.prefusion_layers) == 0


def test_bench_shares_one_quantized_model_between_variants(written):
    """`bench --model-path --quantization` on a CPU: LLaVA-1.5 mode runs on the LLaVA-Mini
    model's own weights (576 vision tokens, no compressor), never on a second copy."""
    needs_torchao()
    folder, _ = written
    options = smoke_options(
        model_path=str(folder), quantization="4bit", sections=("timing",), threads=1
    )
    factory = CaseFactory(options, keep=True, shared=True)
    llava, mini = factory("llava-1.5"), factory("mini-1")
    assert llava.model is mini.model
    assert mini.model.model.compressor is not None
    assert factory("llava-1.5").model.model.compressor is None
    results = run_benchmark(options)["timing"]
    assert results["shared_model"] and results["load_s"] > 0
    assert results["process_peak_rss_bytes"] > 0
    tokens = {name: row["prompt_tokens"] for name, row in results["variants"].items()}
    assert tokens == {"llava-1.5": 576 + 16, "mini-1": 1 + 16}
    with pytest.raises(ValueError, match="needs its own weights"):
        factory("mini-4")


def test_shared_model_rows_describe_each_variant():
    """With one model for both variants, each row's FLOPs, KV cache and peak memory are those
    of its own variant, not of the variant timed last (LLaVA-1.5 mode's 576 tokens)."""
    options = smoke_options(sections=("timing",), threads=1)
    rows = timing_section(options, CaseFactory(options, keep=True, shared=True))["variants"]
    mini, llava = rows["mini-1"], rows["llava-1.5"]
    assert mini["kv_cache_bytes"] * 576 == llava["kv_cache_bytes"]
    assert mini["prefill_gflops"] < llava["prefill_gflops"] / 4
