"""Time to first token, decode tokens/s, per-component times and peak memory of one model.

Generation is written out (`prefill` then `decode`) instead of calling `generate`, so that the first
token and the decode steps are timed apart; `tests/bench` checks that it yields `generate`'s greedy
tokens. Batch 1, no padding, greedy.

* Time to first token (TTFT) = `embed_multimodal` (vision tower, projector, compressor, pre-fusion,
  splice) + the LLM prefill with `logits_to_keep=1` + the argmax.
* Decode tokens/s = decoded tokens / time of the decode steps (KV cache, one token per step).
* Peak memory of a generation (`generation_peak_memory`): `llavamini.bench.memory.peak_memory`.

Every timed call runs `warmup` times unrecorded first; results are medians over `repeats`. Compared
cases run interleaved (one run of each per round), so that load from other processes on a shared
machine falls on all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache, StaticCache

from llavamini.bench.configs import image_parts
from llavamini.bench.memory import peak_memory
from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.model import LlavaMiniConfig, LlavaMiniForCausalLM
from llavamini.model.modules import COMPONENTS

FIRST_TEXT_ID = 3
"""Random prompt ids start here (0, 1, 2 are pad, BOS, EOS in the bench configs; pre-fusion treats
ids <= 0 as padding)."""

PLACEHOLDER_AT = 5
"""Position of the image placeholder in a bench prompt (after a short chat header, as in the
`llava_llama_3_1` template; the rest of the text follows it)."""


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that the host clock measures them (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_prompt(config: LlavaMiniConfig, text_tokens: int, seed: int = 0) -> torch.Tensor:
    """`(1, text_tokens + 1)` random ids with one `IMAGE_TOKEN_INDEX` at `PLACEHOLDER_AT`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_TEXT_ID, config.vocab_size, (1, text_tokens + 1), generator=generator)
    ids[0, min(PLACEHOLDER_AT, text_tokens)] = IMAGE_TOKEN_INDEX
    return ids


def make_images(config: LlavaMiniConfig, count: int = 1, seed: int = 0) -> torch.Tensor:
    """`(count, parts, 3, H, W)` random pixels (parts from the config's `resolution_ratio`)."""
    generator = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    return torch.randn(count, image_parts(config), 3, size, size, generator=generator)


def median(values: list[float]) -> float:
    return statistics.median(values)


def build_model(
    config: LlavaMiniConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> LlavaMiniForCausalLM:
    """A randomly initialised model, allocated directly on `device` in `dtype`, in eval mode."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaMiniForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def new_cache(model: LlavaMiniForCausalLM, max_length: int, static: bool):
    """A `StaticCache` of `max_length` positions (fixed shapes, what `torch.compile` needs) or a
    `DynamicCache` (grows by concatenation, transformers' default)."""
    if static:
        return StaticCache(config=model.config, max_cache_len=max_length)
    return DynamicCache(config=model.config)


@torch.no_grad()
def prefill(
    model: LlavaMiniForCausalLM, input_ids: torch.Tensor, images: torch.Tensor, cache
) -> tuple[torch.Tensor, int]:
    """Prompt + images -> (first token `(1, 1)`, prompt length in the LLM); fills `cache`."""
    embeds, mask, _, positions = model.model.embed_multimodal(
        input_ids, None, None, images, padding_side="left"
    )
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].argmax(-1, keepdim=True), embeds.shape[1]


def decode_step(model: LlavaMiniForCausalLM, token: torch.Tensor, position: torch.Tensor, cache):
    """One greedy step: `(1, 1)` token at `(1, 1)` position -> logits `(1, 1, vocab)`.

    No attention mask: batch 1 without padding, so the causal mask over the cache is the whole
    mask (and shapes stay fixed for `torch.compile`)."""
    return model(input_ids=token, position_ids=position, past_key_values=cache, use_cache=True)


@torch.no_grad()
def decode(
    model: LlavaMiniForCausalLM,
    token: torch.Tensor,
    prompt_length: int,
    cache,
    steps: int,
    step: Callable = decode_step,
) -> torch.Tensor:
    """`steps` greedy tokens after `token` (the first one); returns `(1, steps)`."""
    tokens = []
    for index in range(steps):
        position = torch.full((1, 1), prompt_length + index, device=token.device)
        logits = step(model, token, position, cache).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


@contextmanager
def component_clock(model: LlavaMiniForCausalLM, device: torch.device) -> Iterator[dict]:
    """Forward hooks adding each component's wall time (seconds, summed over calls) to the
    yielded dict; `llm_prefill` is the causal LM's own forward (the splice happens before it).

    On the CPU the hooks cost microseconds. On CUDA each one synchronises, which delays the
    queue: there, clock components in separate runs, never in the ones that time TTFT."""
    seconds: dict[str, float] = defaultdict(float)
    modules = {name: getattr(model.model, attr) for name, attr in COMPONENTS.items()}
    modules["llm_prefill"] = model
    handles = []
    for name, module in modules.items():
        seconds[name] = 0.0  # absent modules (no compressor, say) take no time
        if module is None:
            continue

        def before(_module, _args, name=name):
            synchronize(device)
            seconds[name] -= time.perf_counter()

        def after(_module, _args, _output, name=name):
            synchronize(device)
            seconds[name] += time.perf_counter()

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class GenerationCase:
    """One timed generation: a model, its prompt and images, and how to decode.

    `prepare` runs before each run (e.g. to switch the attention implementation of a model that
    several cases share); `clock_components` times the prefill's components with hooks during
    the timed runs (for the CPU; see `component_clock`)."""

    model: LlavaMiniForCausalLM
    input_ids: torch.Tensor
    images: torch.Tensor
    new_tokens: int
    static_cache: bool = False
    step: Callable = decode_step
    prepare: Callable[[], None] | None = None
    clock_components: bool = False
    static_cache_object: StaticCache | None = None
    """Made on the first run and reset for later ones (a new cache object per run would make
    `torch.compile` guard on it and recompile)."""


@dataclass
class RunTimes:
    """One run: TTFT and decode seconds, the LLM prompt length, the greedy tokens and, when
    clocked, milliseconds per prefill component (`other`: outside the hooked modules)."""

    ttft_s: float
    decode_s: float
    prompt_length: int
    tokens: list[int]
    components_ms: dict[str, float] = field(default_factory=dict)


def generation_run(case: GenerationCase) -> RunTimes:
    """One prefill + `new_tokens - 1` greedy decode steps."""
    if case.prepare is not None:
        case.prepare()
    model, images = case.model, case.images
    device = case.input_ids.device
    max_length = (
        case.input_ids.shape[1] + model.config.vision_token_count(images.shape[1]) + case.new_tokens
    )
    if case.static_cache and case.static_cache_object is not None:
        cache = case.static_cache_object
        cache.reset()
    else:
        cache = new_cache(model, max_length, case.static_cache)
        if case.static_cache:
            case.static_cache_object = cache
    clock = component_clock(model, device) if case.clock_components else nullcontext({})
    synchronize(device)
    start = time.perf_counter()
    with clock as seconds:
        first, prompt_length = prefill(model, case.input_ids, images, cache)
        synchronize(device)
    prefilled = time.perf_counter()
    rest = decode(model, first, prompt_length, cache, case.new_tokens - 1, case.step)
    synchronize(device)
    done = time.perf_counter()
    components = {name: value * 1e3 for name, value in seconds.items()}
    if components:
        components["other"] = (prefilled - start) * 1e3 - sum(components.values())
    tokens = torch.cat([first, rest], dim=1)[0].tolist()
    return RunTimes(prefilled - start, done - prefilled, prompt_length, tokens, components)


@dataclass
class GenerationResult:
    """Medians over the repeats; `tokens` are the greedy tokens of the last run."""

    ttft_ms: float
    decode_tokens_per_s: float
    prompt_tokens: int
    components_ms: dict[str, float] = field(default_factory=dict)
    ttft_runs_ms: list[float] = field(default_factory=list)
    decode_runs_tokens_per_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "tokens"}


def summarize(runs: list[RunTimes], new_tokens: int) -> GenerationResult:
    """Medians of TTFT, decode tokens/s and each component over `runs`."""
    ttft = [run.ttft_s * 1e3 for run in runs]
    rates = [(new_tokens - 1) / max(run.decode_s, 1e-9) for run in runs]
    names = runs[-1].components_ms
    return GenerationResult(
        ttft_ms=median(ttft),
        decode_tokens_per_s=median(rates),
        prompt_tokens=runs[-1].prompt_length,
        components_ms={name: median([run.components_ms[name] for run in runs]) for name in names},
        ttft_runs_ms=ttft,
        decode_runs_tokens_per_s=rates,
        tokens=runs[-1].tokens,
    )


def time_cases(
    cases: dict[str, GenerationCase], warmup: int, repeats: int
) -> dict[str, GenerationResult]:
    """Time every case: `warmup` unrecorded runs each, then `repeats` rounds that run each case
    once, in turn, so that slow phases of a shared machine hit all cases alike."""
    for case in cases.values():
        for _ in range(warmup):
            generation_run(case)
    runs: dict[str, list[RunTimes]] = defaultdict(list)
    for _ in range(repeats):
        for name, case in cases.items():
            runs[name].append(generation_run(case))
    return {name: summarize(runs[name], case.new_tokens) for name, case in cases.items()}


def time_components(case: GenerationCase, repeats: int) -> dict[str, float]:
    """Median milliseconds of each prefill component over `repeats` separate clocked runs (for
    CUDA, where clocking the timed runs would slow them)."""
    clocked = replace(case, clock_components=True)
    return summarize(
        [generation_run(clocked) for _ in range(repeats)], case.new_tokens
    ).components_ms


def time_calls(
    calls: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Milliseconds of each call over `repeats` interleaved rounds, after `warmup` runs each."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            runs[name].append((time.perf_counter() - start) * 1e3)
    return dict(runs)


@torch.no_grad()
def generation_peak_memory(
    model: LlavaMiniForCausalLM, input_ids: torch.Tensor, images: torch.Tensor, new_tokens: int
) -> dict:
    """Peak memory of one prefill + `new_tokens - 1` decode steps (see `peak_memory`)."""
    with peak_memory(input_ids.device) as memory:
        cache = new_cache(model, 0, static=False)
        first, prompt_length = prefill(model, input_ids, images, cache)
        decode(model, first, prompt_length, cache, new_tokens - 1)
    return memory
