"""The whole benchmark: FLOPs at real scale, the paper comparison, timings, fast paths, video.

`run_benchmark(options)` returns one results dict (written as JSON by the CLI); each section is a
function of the options. On a CPU all variants' models stay in memory and their runs interleave;
on a GPU (real 7B/8B shapes) the variants are built and timed one at a time. On a CPU at a real
scale, or with `model_path` (a checkpoint, e.g. from `llavamini bench checkpoint`, loaded with
`quantization` if given), one LLaVA-Mini model serves every variant: LLaVA-1.5 mode is the same
LLM and tower with the compressor and pre-fusion switched off (`SharedModel`), so the weights
are held once.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import transformers
from torch import nn

from llavamini.bench import fastpaths
from llavamini.bench.configs import SCALES, VARIANTS, baseline_of, build_config, image_parts
from llavamini.bench.flopcount import meta_flops
from llavamini.bench.flops import (
    PAPER_TEXT_TOKENS,
    compare_with_paper,
    count_flops,
    kv_cache_bytes,
    prompt_lengths,
)
from llavamini.bench.memory import process_peak_rss_bytes
from llavamini.bench.targets import targets
from llavamini.bench.timing import (
    GenerationCase,
    build_model,
    generation_peak_memory,
    make_images,
    make_prompt,
    time_cases,
    time_components,
)
from llavamini.bench.video import batched_speedup, video_benchmark
from llavamini.model import LlavaMiniForCausalLM
from llavamini.model.loading import ModelSpec

logger = logging.getLogger(__name__)

SECTIONS = ("flops", "paper", "timing", "fastpaths", "video")


@dataclass
class BenchOptions:
    """What `llavamini bench` runs (the CLI flags map onto these fields)."""

    scale: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"
    variants: tuple[str, ...] = tuple(VARIANTS)
    flops_llms: tuple[str, ...] = ("vicuna-7b", "llama-3.1-8b")
    text_tokens: int = 64
    """Prompt tokens besides the image placeholder."""
    new_tokens: int = 16
    """Generated tokens per timed run (the first comes from the prefill)."""
    warmup: int = 1
    repeats: int = 3
    fastpath_variants: tuple[str, ...] = ("llava-1.5", "mini-1")
    video_variant: str = "mini-1"
    video_frames: tuple[int, ...] = (4, 16)
    video_chunk: int = 16
    """The batched setting of `video_chunk_frames`, compared with 1 (frame by frame)."""
    sections: tuple[str, ...] = SECTIONS
    meta_check: bool = True
    """Recount the real-scale FLOPs with FlopCounterMode on meta-device models."""
    static_cache: bool = False
    compile: bool = False
    threads: int | None = None
    model_path: str | None = None
    """A LLaVA-Mini checkpoint to time instead of random weights (its scale is its own)."""
    quantization: str | None = None
    """'8bit' or '4bit' (`ModelSpec.quantization`); needs `model_path`."""
    seed: int = 0
    output_dir: str = os.path.join("outputs", "bench")
    smoke: bool = False

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"--scale {self.scale!r}: expected one of {list(SCALES)}.")
        unknown = set(self.variants) | set(self.fastpath_variants) | {self.video_variant}
        unknown -= set(VARIANTS)
        if unknown:
            raise ValueError(f"Unknown variants {sorted(unknown)}: expected {list(VARIANTS)}.")
        if set(self.sections) - set(SECTIONS):
            raise ValueError(f"--sections {self.sections}: expected a subset of {SECTIONS}.")
        if self.new_tokens < 2:
            raise ValueError("--new-tokens must be >= 2 (one from the prefill, one decoded).")
        if self.compile and not self.static_cache:
            raise ValueError(
                "--compile needs --static-cache (compiled decoding needs fixed shapes)."
            )
        if self.quantization is not None and self.model_path is None:
            raise ValueError(
                "--quantization needs --model-path: write a checkpoint first with "
                "`llavamini bench checkpoint --scale 8b --output-dir DIR`."
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: CUDA is not available on this machine.")


def smoke_options(**overrides) -> BenchOptions:
    """Every section at the smallest sizes: seconds on a CPU (tests and a quick look)."""
    fields = dict(
        variants=("llava-1.5", "mini-1"),
        flops_llms=("llama-3.1-8b",),
        text_tokens=16,
        new_tokens=3,
        warmup=0,
        repeats=1,
        fastpath_variants=("mini-1",),
        video_frames=(2,),
        video_chunk=2,
        smoke=True,
    )
    fields.update(overrides)
    return BenchOptions(**fields)


def machine_info(device: torch.device) -> dict:
    """CPU model and cores (and the GPU when used), threads and library versions."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):  # other processes on the machine skew wall-clock timings
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def flops_section(options: BenchOptions) -> dict:
    """Analytic FLOPs, LLM tokens and KV cache per image at the real shapes, for each LLM and
    variant; with `meta_check`, whether FlopCounterMode on a meta-device model agrees exactly."""
    models = {}
    for llm in options.flops_llms:
        scale = "7b" if llm == "vicuna-7b" else "8b"
        rows = {}
        for variant in options.variants:
            config = build_config(scale, variant, llm=llm)
            counts = count_flops(config, options.text_tokens)
            lengths = prompt_lengths(config, options.text_tokens)
            counts["llm_tokens"] = lengths.llm
            counts["prefusion_tokens"] = lengths.prefusion if config.prefusion_layer_num else 0
            counts["paper_convention"] = count_flops(config, options.text_tokens, "paper")
            counts["kv_cache_bytes_per_image"] = kv_cache_bytes(
                config, config.vision_token_count(image_parts(config))
            )
            counts["meta_check"] = None
            if options.meta_check:
                meta = meta_flops(config, options.text_tokens)
                counts["meta_check"] = all(meta[k] == counts[k] for k in meta)
            rows[variant] = counts
        models[llm] = rows
    return {"text_tokens": options.text_tokens, "convention": "executed", "models": models}


def paper_section() -> dict:
    return {
        "llm": "vicuna-7b",
        "text_tokens": PAPER_TEXT_TOKENS,
        "rows": compare_with_paper("vicuna-7b", PAPER_TEXT_TOKENS),
    }


class SharedModel:
    """One LLaVA-Mini model (compressor and pre-fusion layers) that also runs as the variants
    that differ from it only in those: LLaVA-1.5 mode (no compressor, no pre-fusion) and the
    model itself. `use(variant)` switches the modules and config fields in place."""

    def __init__(self, model: LlavaMiniForCausalLM, variant: str):
        self.model, self.variant = model, variant
        inner = model.model
        self.modules = (inner.compressor, inner.prefusion_layers)
        self.fields = VARIANTS[variant].overrides()

    def supports(self, variant: str) -> bool:
        spec = VARIANTS[variant].overrides()
        return variant == self.variant or (
            spec["compressor_type"] == "none"
            and spec["prefusion_layer_num"] == 0
            and spec["resolution_ratio"] == self.fields["resolution_ratio"]
        )

    def use(self, variant: str) -> None:
        if not self.supports(variant):
            raise ValueError(
                f"Variant {variant!r} needs its own weights; one model ({self.variant}) serves "
                f"only itself and LLaVA-1.5 mode here: pass --variants {self.variant} llava-1.5."
            )
        inner, config = self.model.model, self.model.config
        own = variant == self.variant
        inner.compressor = self.modules[0] if own else None
        inner.prefusion_layers = self.modules[1] if own else nn.ModuleList()
        for name, value in VARIANTS[variant].overrides().items():
            setattr(config, name, value)


@dataclass
class CaseFactory:
    """Builds a variant's model and inputs at the benchmark's scale; on a CPU keeps them, so that
    timing, fast paths and video share one model per variant. With `shared` (see the module
    docstring) one model serves the variants it supports, switched before each run."""

    options: BenchOptions
    keep: bool
    shared: bool = False
    cases: dict[str, GenerationCase] = field(default_factory=dict)
    shared_model: SharedModel | None = None
    load_seconds: float | None = None
    load_peak_rss_bytes: int | None = None

    def __call__(self, variant: str) -> GenerationCase:
        if variant in self.cases:
            case = self.cases[variant]
        else:
            case = self.new_case(variant)
        if case.prepare is not None:
            case.prepare()
        return case

    def model(self, variant: str) -> tuple[LlavaMiniForCausalLM, Callable[[], None] | None]:
        """The model `variant` runs on, and what switches it to `variant` (None: its own)."""
        options = self.options
        device, dtype = torch.device(options.device), getattr(torch, options.dtype)
        if not self.shared:
            return build_model(
                build_config(options.scale, variant), device, dtype, options.seed
            ), None
        if self.shared_model is None:
            started = time.perf_counter()
            if options.model_path:
                spec = ModelSpec(
                    options.model_path,
                    device=options.device,
                    dtype=None if options.quantization else options.dtype,
                    quantization=options.quantization,
                )
                model = spec.load().model
            else:
                model = build_model(
                    build_config(options.scale, "mini-1"), device, dtype, options.seed
                )
            self.load_seconds = time.perf_counter() - started
            self.load_peak_rss_bytes = process_peak_rss_bytes()
            own = next(
                (
                    name
                    for name, spec in VARIANTS.items()
                    if all(getattr(model.config, k) == v for k, v in spec.overrides().items())
                ),
                None,
            )
            if own is None:
                raise ValueError(
                    f"--model-path {options.model_path}: its compressor and pre-fusion fields "
                    f"match none of the benchmark's variants {list(VARIANTS)}."
                )
            self.shared_model = SharedModel(model, own)
        shared = self.shared_model
        shared.use(variant)
        return shared.model, partial(shared.use, variant)

    def new_case(self, variant: str) -> GenerationCase:
        options = self.options
        device = torch.device(options.device)
        model, prepare = self.model(variant)
        config = model.config
        case = GenerationCase(
            model=model,
            input_ids=make_prompt(config, options.text_tokens, options.seed).to(device),
            images=make_images(config, 1, options.seed).to(device, model.dtype),
            new_tokens=options.new_tokens,
            prepare=prepare,
            clock_components=device.type == "cpu",
        )
        if self.keep:
            self.cases[variant] = case
        return case


def variant_details(case: GenerationCase, result, options: BenchOptions) -> dict:
    """`result` (a `GenerationResult`) with per-component times (clocked in separate runs where
    the timed runs were not clocked), peak memory, analytic FLOPs and KV cache per image."""
    if case.prepare is not None:  # a shared model is left as the last variant timed
        case.prepare()
    config = case.model.config
    bytes_per_value = torch.finfo(case.model.dtype).bits // 8
    details = result.to_dict()
    if not details["components_ms"]:
        details["components_ms"] = time_components(case, max(1, options.repeats))
    details["peak_bytes"] = generation_peak_memory(
        case.model, case.input_ids, case.images, options.new_tokens
    )["peak_bytes"]
    details["prefill_gflops"] = count_flops(config, options.text_tokens)["prefill_total"] / 1e9
    details["kv_cache_bytes"] = kv_cache_bytes(
        config, config.vision_token_count(case.images.shape[1]), bytes_per_value
    )
    return details


def timing_section(options: BenchOptions, factory: CaseFactory) -> dict:
    """TTFT, decode tokens/s, components, memory for each variant at `options.scale`."""
    results = {}
    if factory.keep:
        cases = {variant: factory(variant) for variant in options.variants}
        generation = time_cases(cases, options.warmup, options.repeats)
        for variant, case in cases.items():
            results[variant] = variant_details(case, generation[variant], options)
    else:
        for variant in options.variants:
            case = factory(variant)
            generation = time_cases({variant: case}, options.warmup, options.repeats)[variant]
            results[variant] = variant_details(case, generation, options)
            del case
            release_memory()
    for variant, result in results.items():
        baseline = results.get(baseline_of(variant))
        if baseline:
            result["ttft_speedup"] = baseline["ttft_ms"] / result["ttft_ms"]
        result["decode_ms_per_token"] = 1e3 / result["decode_tokens_per_s"]
    spec = SCALES[options.scale]
    return {
        "model_path": options.model_path,
        "quantization": options.quantization,
        "shared_model": factory.shared,
        "load_s": factory.load_seconds,
        "load_peak_rss_bytes": factory.load_peak_rss_bytes,
        "process_peak_rss_bytes": process_peak_rss_bytes(),
        "scale": options.scale,
        "scale_description": spec.description,
        "device": options.device,
        "dtype": options.dtype,
        "attention": "sdpa",
        "text_tokens": options.text_tokens,
        "new_tokens": options.new_tokens,
        "warmup": options.warmup,
        "repeats": options.repeats,
        "variants": results,
    }


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fastpaths_section(options: BenchOptions, factory: CaseFactory) -> list[dict]:
    """Before/after rows for each fast path on `options.fastpath_variants`."""
    rows = []
    for variant in options.fastpath_variants:
        case = factory(variant)
        rows += fastpaths.attention_kernel_rows(variant, case, options.warmup, options.repeats)
        rows += fastpaths.prefusion_last_layer_rows(variant, case, options.warmup, options.repeats)
        if case.model.dtype == torch.float32:
            rows += fastpaths.dtype_rows(variant, case, options.warmup, options.repeats)
        for frames in (1, options.video_chunk):
            rows += fastpaths.compressor_rows(
                variant, case.model, frames, options.warmup, max(5, options.repeats)
            )
        if options.static_cache:
            rows += fastpaths.static_cache_rows(
                variant, case, options.warmup, options.repeats, options.compile
            )
        release_memory()
    return rows


def video_section(options: BenchOptions, factory: CaseFactory) -> dict:
    """Frames/s and peak memory of `encode_video` against frames, chunk 1 against batched."""
    model = factory(options.video_variant).model
    chunks = [1, options.video_chunk] if options.video_chunk > 1 else [1]
    rows = video_benchmark(
        model,
        list(options.video_frames),
        chunks,
        options.text_tokens,
        options.warmup,
        options.repeats,
    )
    return {
        "variant": options.video_variant,
        "scale": options.scale,
        "process_peak_rss_bytes": process_peak_rss_bytes(),
        "rows": rows,
        "batched_speedup": batched_speedup(rows),
    }


def run_benchmark(options: BenchOptions, command: str = "") -> dict:
    """Run the selected sections; returns the results dict (see `report`). `command` is recorded
    as the command line that asked for it."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    started = time.perf_counter()
    results: dict = {
        "meta": {
            "title": f"llavamini bench, scale {options.scale}, {options.device}, {options.dtype}",
            "command": command,
            "machine": machine_info(device),
            "options": asdict(options),
        }
    }
    shared = device.type == "cpu" and (
        SCALES[options.scale].width_divisor == 1 or options.model_path is not None
    )
    factory = CaseFactory(options, keep=device.type == "cpu", shared=shared)
    steps = {
        "flops": lambda: ("flops", flops_section(options)),
        "paper": lambda: ("paper_comparison", paper_section()),
        "timing": lambda: ("timing", timing_section(options, factory)),
        "fastpaths": lambda: ("fast_paths", fastpaths_section(options, factory)),
        "video": lambda: ("video", video_section(options, factory)),
    }
    for section in SECTIONS:
        if section in options.sections:
            logger.info("bench: %s", section)
            key, value = steps[section]()
            results[key] = value
    results["targets"] = targets(results, options)
    results["meta"]["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        results["meta"]["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["meta"]["process_peak_rss_bytes"] = process_peak_rss_bytes()
    return results
