"""The decoder layers of a quantized CPU load through llama.cpp (llama-cpp-python, the 'llamacpp'
extra): the LLM's and the pre-fusion layers'.

On a CPU without fast low-bit matmuls in torch (AVX2: torchao's int4 kernel is compute-bound),
llama.cpp's block-quantized dot products decode Llama-3.1-8B at 4 bits about 3x faster than
torchao does, and prefill too is faster (docs/benchmarks.md, "Real size: the LLM through
llama.cpp"). The vision tower, projector, compressor and token embeddings stay in torch: they
build the input embeddings, which llama.cpp takes as they are (a batch of embeddings).

The pieces:
- `export_gguf` writes a part of the checkpoint as a GGUF file (llama architecture, no
  vocabulary: tokens come from the checkpoint's own tokenizer), streaming one tensor at a time:
  the LLM (`model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`) or the pre-fusion
  layers (`model.prefusion_layers.*`); `cached_gguf` keeps one per checkpoint, part and
  quantization.
- `LlamaCppModel`: a GGUF file loaded by llama.cpp, fed input embeddings.
- `LlamaCppLanguageModel` runs the LLM: it takes a new prompt and then each step as input
  embeddings (torch's `embed_tokens`, unquantized, as without llama.cpp), one llama.cpp sequence
  per batch row, and returns the logits. The model's `forward` hands its LLM part here when
  `LlavaMiniForCausalLM.language_model_runner` is set (`ModelSpec` sets it), so `generate`,
  streaming and sampling stay transformers'.
- `LlamaCppPreFusion` runs the pre-fusion layers in place of the torch module, reading their
  output from llama.cpp's graph.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import math
import os

import numpy as np
import torch
from torch import nn
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME

from llavamini.model.checkpoint import per_tensor_state_dict
from llavamini.model.configuration_llavamini import LlavaMiniConfig, head_dim

logger = logging.getLogger(__name__)

LLAMA_CPP_INSTALL = (
    "pip install -c constraints.txt 'llama-cpp-python==0.3.36' 'gguf==0.19.0' (or the "
    "'llamacpp' extra; it compiles llama.cpp, ~10 minutes on 2 cores)"
)

GGUF_TYPES = {"4bit": "Q4_0", "8bit": "Q8_0"}
"""`--quantization` -> the GGUF block type of the LLM's linear weights (32 weights per block with
one scale). Norms and the llama3 rope factors stay float32."""

TOKEN_EMBEDDING_TYPE = "Q4_0"
"""`token_embd`'s block type when quantized: llama.cpp's graph needs the tensor, but its input
is always embeddings (torch's), so it is stored as small as the file allows."""

OUTPUT_TYPE = "Q8_0"
"""`lm_head`'s block type at either quantization: the logits themselves, at 8 bits."""

LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
"""A decoder layer's module (under `model.layers.{i}.`) -> its GGUF name (under `blk.{i}.`)."""

BATCH_TOKENS = 512
"""Tokens per `llama_decode` call (a longer prompt goes in chunks)."""

STEPS_PER_ROW = 1024
"""Room kept for generated tokens per row when a prompt needs a larger context than the one held
(a context cannot grow under a sequence; at 8B each token's KV cache takes 128 KiB)."""

PARTS = {"llm": "model.layers.", "prefusion": "model.prefusion_layers."}
"""What `export_gguf` writes -> the checkpoint keys of its decoder layers (which a llama.cpp load
does not read into torch). The pre-fusion layers have the LLM's shape: llama.cpp runs them as a
model of their own."""

PREFUSION_VOCAB = 32
"""Rows of the pre-fusion file's (zero) token embeddings and output: llama.cpp's graph needs them,
but pre-fusion reads the hidden states before the final norm, never logits."""


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python and gguf are installed (looked up, not imported)."""
    return all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "gguf"))


def check_exportable(config) -> None:
    """Raise `ValueError` naming what llama.cpp's llama architecture cannot take from `config`."""
    problems = []
    if config.model_type != "llava_mini_llama":
        problems.append(f"model_type {config.model_type!r} (a Llama backbone is needed)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("biases in the attention or MLP")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        problems.append(f"rope_type {rope_type!r} (default or llama3 are supported)")
    for field in ("hidden_size", "intermediate_size"):
        if getattr(config, field) % 32:
            problems.append(f"{field}={getattr(config, field)} (a multiple of 32 is needed)")
    if problems:
        raise ValueError("llama.cpp cannot run this LLM: " + "; ".join(problems) + ".")


def llama3_rope_factors(config) -> np.ndarray:
    """Per-frequency divisors of llama3 rope scaling, `(head_dim // 2,)` float32: 1 for high
    frequencies, `factor` for low ones, a smooth blend between (what transformers applies to the
    inverse frequencies, as llama.cpp's `rope_freqs` tensor)."""
    rope, width = config.rope_parameters, head_dim(config)
    inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, width, 2, dtype=np.float64) / width)
    wavelength = 2 * math.pi / inv_freq
    old_context = rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    smooth = (old_context / wavelength - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(
        wavelength < old_context / high,
        1.0,
        np.where(wavelength > old_context / low, factor, blended),
    )
    return factors.astype(np.float32)


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k projection rows from transformers' rotate-half order (each head's first half, then
    its second) to GGML's interleaved pairs, `(heads * head_dim, in)` either way."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _layer_count(config, part: str) -> int:
    return config.num_hidden_layers if part == "llm" else config.prefusion_layer_num


def _gguf_tensors(
    config, keys: set[str], weight_type: str, part: str
) -> list[tuple[str | np.ndarray, str, str]]:
    """`(checkpoint key, or the data itself, GGUF name, GGUF type name)` in file order: the linear
    weights in `weight_type`, the LLM's token embeddings in `TOKEN_EMBEDDING_TYPE` and `lm_head`
    in `OUTPUT_TYPE` (all in 'F32' when `weight_type` is). The pre-fusion part has no embeddings,
    final norm or head of its own: zeros and ones stand in (`PREFUSION_VOCAB`)."""
    tensors: list[tuple[str | np.ndarray, str, str]] = []
    if config.rope_parameters.get("rope_type") == "llama3":
        tensors.append((llama3_rope_factors(config), "rope_freqs.weight", "F32"))
    quantized = weight_type != "F32"
    if part == "llm":
        embedding_type = TOKEN_EMBEDDING_TYPE if quantized else "F32"
        tensors.append(("model.embed_tokens.weight", "token_embd.weight", embedding_type))
    else:
        zeros = np.zeros((PREFUSION_VOCAB, config.hidden_size), np.float32)
        tensors.append((zeros, "token_embd.weight", "F32"))
    for i in range(_layer_count(config, part)):
        for module, name in LAYER_TENSORS.items():
            kind = "F32" if name.endswith("_norm") else weight_type
            tensors.append((f"{PARTS[part]}{i}.{module}.weight", f"blk.{i}.{name}.weight", kind))
    if part == "prefusion":  # the output (tied to token_embd) is never read
        tensors.append((np.ones(config.hidden_size, np.float32), "output_norm.weight", "F32"))
        return tensors
    tensors.append(("model.norm.weight", "output_norm.weight", "F32"))
    if "lm_head.weight" in keys:  # else tied: llama.cpp reads token_embd for the output
        tensors.append(("lm_head.weight", "output.weight", OUTPUT_TYPE if quantized else "F32"))
    return tensors


def export_gguf(checkpoint_dir: str, path: str, weight_type: str, part: str = "llm") -> str:
    """Write a part of `checkpoint_dir` (a LLaVA-Mini checkpoint on a Llama backbone, in
    safetensors) to `path` as a GGUF file of llama architecture, its linear weights in
    `weight_type` ('Q4_0', 'Q8_0': `GGUF_TYPES`; 'F32' keeps every tensor exact).

    `part`: 'llm' (`model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`) or
    'prefusion' (`model.prefusion_layers.*`, to be read before the final norm:
    `LlamaCppPreFusion`). One tensor is read, quantized and written at a time, into a `.partial`
    file of this process renamed to `path` once complete. Returns `path`."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}.")
    config = LlavaMiniConfig.from_pretrained(checkpoint_dir)
    check_exportable(config)
    if not _layer_count(config, part):
        raise ValueError(f"{checkpoint_dir}: the config has no {part} layers to export.")
    reads = per_tensor_state_dict(checkpoint_dir)
    plan = _gguf_tensors(config, set(reads), weight_type, part)
    missing = [key for key, _, _ in plan if isinstance(key, str) and key not in reads]
    if missing:
        raise ValueError(f"{checkpoint_dir}: the {part} weights lack {missing[:10]}.")
    partial = f"{path}.{os.getpid()}.partial"  # two processes exporting at once: two files
    try:
        _write_gguf(config, reads, plan, weight_type, part, partial)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    os.replace(partial, path)
    return path


def _write_gguf(config, reads: dict, plan: list, weight_type: str, part: str, path: str) -> None:
    """`export_gguf`'s writing: the metadata, the tensor table, then each tensor of `plan`."""
    import gguf
    from gguf.quants import quant_shape_to_byte_shape

    width = head_dim(config)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(_layer_count(config, part))
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(width)
    writer.add_value_length(width)
    writer.add_rope_dimension_count(width)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size if part == "llm" else PREFUSION_VOCAB)
    writer.add_tokenizer_model("no_vocab")  # token ids come from the checkpoint's tokenizer
    file_type = "ALL_F32" if weight_type == "F32" else f"MOSTLY_{weight_type}"
    writer.add_file_type(getattr(gguf.LlamaFileType, file_type))

    for source, name, kind in plan:
        shape = tuple(reads[source].get_shape()) if isinstance(source, str) else source.shape
        if kind == "F32":
            writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * math.prod(shape))
        else:
            qtype = getattr(gguf.GGMLQuantizationType, kind)
            byte_shape = quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(
                name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype
            )
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for source, name, kind in plan:
            writer.write_tensor_data(_gguf_tensor(config, reads, source, name, kind))
    finally:
        writer.close()


def _gguf_tensor(config, reads: dict, source, name: str, kind: str) -> np.ndarray:
    """The data of one GGUF tensor: float32, or `kind`'s blocks as bytes."""
    import gguf.quants

    if not isinstance(source, str):
        return source
    weight = reads[source][:].float().numpy()
    if name.endswith("attn_q.weight"):
        weight = unpermute_rotary(weight, config.num_attention_heads)
    elif name.endswith("attn_k.weight"):
        weight = unpermute_rotary(weight, config.num_key_value_heads)
    if kind == "F32":
        return np.ascontiguousarray(weight, dtype=np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    return gguf.quants.quantize(np.ascontiguousarray(weight), qtype)


def gguf_cache_dir() -> str:
    """Where `cached_gguf` keeps its files: `$LLAVAMINI_GGUF_DIR`, else
    `$XDG_CACHE_HOME/llavamini/gguf` (default `~/.cache/llavamini/gguf`)."""
    if os.environ.get("LLAVAMINI_GGUF_DIR"):
        return os.environ["LLAVAMINI_GGUF_DIR"]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "llavamini", "gguf")


def cached_gguf(checkpoint_dir: str, quantization: str, part: str = "llm") -> str:
    """The GGUF file of `checkpoint_dir`'s `part` ('llm' or 'prefusion') at `quantization`,
    written by `export_gguf` on first use (minutes for the LLM at 8B) into `gguf_cache_dir()`.
    The name carries a fingerprint of the checkpoint's `config.json` and weight files (path,
    size, modification time), so a changed checkpoint gets a new file."""
    real = os.path.realpath(checkpoint_dir)
    fingerprint = hashlib.sha256(real.encode())
    for name in sorted(os.listdir(real)):
        # What the file is made of: the tokenizer's or processor's files may change freely.
        if name.endswith(".safetensors") or name in (CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME):
            stat = os.stat(os.path.join(real, name))
            fingerprint.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    label = os.path.basename(real.rstrip(os.sep)) or "checkpoint"
    kind = GGUF_TYPES[quantization].lower()
    suffix = kind if part == "llm" else f"{part}-{kind}"
    name = f"{label}-{fingerprint.hexdigest()[:16]}-{suffix}.gguf"
    path = os.path.join(gguf_cache_dir(), name)
    if not os.path.isfile(path):
        try:
            os.makedirs(gguf_cache_dir(), exist_ok=True)
        except OSError as error:
            raise OSError(
                f"Cannot make the folder for GGUF files {gguf_cache_dir()!r} (set "
                f"LLAVAMINI_GGUF_DIR to a writable folder): {error}"
            ) from error
        logger.info("Writing the %s of %s for llama.cpp (%s): %s", part, real, quantization, path)
        export_gguf(real, path, GGUF_TYPES[quantization], part)
    return path


def _forward_log(level: int, text: bytes, user_data) -> None:
    logger.debug("llama.cpp: %s", text.decode(errors="replace").rstrip())


@functools.cache
def _route_llama_cpp_logs():
    """Send llama.cpp's log lines to this module's logger (debug level) instead of stderr: once
    per process, the callback kept for as long as llama.cpp may call it (for good)."""
    import llama_cpp

    callback = llama_cpp.llama_log_callback(_forward_log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


@functools.cache
def ggml_library():
    """ggml's C library as llama-cpp-python ships it (the one its llama.cpp calls), for the
    functions that read a tensor of the graph: its name, size and data. Raises `OSError` where
    it is not found."""
    import llama_cpp

    folder = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    names = [n for n in os.listdir(folder) if n.startswith(("libggml-base.", "ggml-base."))]
    if not names:
        raise OSError(f"ggml's library (ggml-base) is not in {folder}.")
    lib = ctypes.CDLL(os.path.join(folder, sorted(names)[0]))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    return lib


class LlamaCppModel:
    """A GGUF file loaded by llama.cpp and a context on it, fed input embeddings.

    The weights are read into llama.cpp's own memory (no mapping), so that its repacked copy of
    the 4-bit blocks (the faster layout on x86) is the only one resident: 4.6 GiB for the LLM at
    8B against 8.2 with the file mapped as well.

    Args:
        path: the GGUF file (`cached_gguf`).
        threads: llama.cpp's threads (None: torch's, `torch.get_num_threads()`).
        context_tokens: the KV cache's size in tokens, shared by the rows (`reserve` grows it).
        eval_callback: a `llama_cpp.ggml_backend_sched_eval_callback` to see the graph's tensors
            (llama.cpp's `cb_eval`), or None.
    """

    def __init__(
        self,
        path: str,
        threads: int | None = None,
        context_tokens: int = 4096,
        eval_callback=None,
    ):
        import llama_cpp

        self._lib = llama_cpp
        _route_llama_cpp_logs()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.load_mode = 0  # LLAMA_LOAD_MODE_NONE: read, do not map
        self._model = llama_cpp.llama_model_load_from_file(path.encode(), params)
        if not self._model:
            raise ValueError(
                f"llama.cpp could not load {path}: damaged, or not a GGUF file this llama.cpp "
                f"reads (its log: logger {__name__}, debug level). Delete it; the next "
                f"quantized load writes it anew."
            )
        self.path = path
        self.threads = threads or torch.get_num_threads()
        self.hidden_size = llama_cpp.llama_model_n_embd(self._model)
        self.num_layers = llama_cpp.llama_model_n_layer(self._model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(
            llama_cpp.llama_model_get_vocab(self._model)
        )
        self._eval_callback = eval_callback
        self._context = None
        self.context_tokens = self._rows = 0
        self.reserve(context_tokens, rows=1)

    def reserve(self, tokens: int, rows: int) -> None:
        """A context of at least `tokens` for `rows` sequences (a new, empty one when larger)."""
        lib = self._lib
        if self._context is not None and tokens <= self.context_tokens and rows <= self._rows:
            return
        if self._context is not None:
            lib.llama_free(self._context)
        params = lib.llama_context_default_params()
        params.n_ctx = max(tokens, self.context_tokens)
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = max(rows, 1)
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = self.threads
        if self._eval_callback is not None:
            params.cb_eval = self._eval_callback
        self._context = lib.llama_init_from_model(self._model, params)
        if not self._context:
            raise RuntimeError(f"llama.cpp could not make a context of {tokens} tokens.")
        self.context_tokens, self._rows = params.n_ctx, params.n_seq_max

    def clear(self) -> None:
        """Forget every sequence (the KV cache)."""
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._context), True)

    def close(self) -> None:
        """Free llama.cpp's context and model (also on garbage collection)."""
        if getattr(self, "_context", None):
            self._lib.llama_free(self._context)
            self._context = None
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    __del__ = close

    def decode(self, row: int, start: int, embeds: np.ndarray, want: list[bool]) -> np.ndarray:
        """Run `embeds` `(n, hidden)` float32 through sequence `row` at positions `start...`, in
        chunks of the batch size; the logits `(sum(want), vocab)` of the positions `want`s
        (the others are computed only as far as the KV cache needs)."""
        lib, out = self._lib, []
        for begin in range(0, embeds.shape[0], BATCH_TOKENS):
            chunk = np.ascontiguousarray(embeds[begin : begin + BATCH_TOKENS])
            batch = lib.llama_batch_init(chunk.shape[0], self.hidden_size, 1)
            try:
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
                for i in range(chunk.shape[0]):
                    batch.pos[i] = start + begin + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = row
                    batch.logits[i] = int(want[begin + i])
                batch.n_tokens = chunk.shape[0]
                status = lib.llama_decode(self._context, batch)
                if status != 0:
                    raise RuntimeError(f"llama_decode failed with status {status}.")
                for i in range(chunk.shape[0]):
                    if want[begin + i]:
                        pointer = lib.llama_get_logits_ith(self._context, i)
                        out.append(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy())
            finally:
                lib.llama_batch_free(batch)
        return np.stack(out) if out else np.zeros((0, self.vocab_size), np.float32)


class LlamaCppLanguageModel:
    """The LLM's GGUF file (part 'llm') in llama.cpp, called as the LLM half of
    `LlavaMiniForCausalLM.forward`: a new prompt, then each step, as input embeddings (torch's
    `embed_tokens` and the vision side), one llama.cpp sequence per batch row.

    Args:
        path, threads: as `LlamaCppModel`'s.
        context_tokens: the KV cache's size in tokens, shared by the batch's rows (larger when a
            prompt needs it: `STEPS_PER_ROW`); 4096 take 512 MiB at 8B.
    """

    def __init__(self, path: str, threads: int | None = None, context_tokens: int = 4096):
        self.llama = LlamaCppModel(path, threads, context_tokens)
        self.num_layers, self.vocab_size = self.llama.num_layers, self.llama.vocab_size
        self._sequence = None  # (cache object, tokens per row) of the sequences held

    def close(self) -> None:
        """Free llama.cpp's context and model."""
        self.llama.close()

    def __call__(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: object,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """The logits `(B, T', vocab)` float32 for `inputs_embeds` `(B, T, hidden)`: a new prompt,
        or, for one token per row (T = 1) with the `cache` object of the prompt's call
        (transformers' generation passes the same one to every step), the next step after it.
        `attention_mask` `(B, T)` (or longer: its last T columns) marks padding, which llama.cpp
        never sees (its logits are 0).
        `logits_to_keep`: 0 for every position, k for the last k."""
        llama = self.llama
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is None:
            real = torch.ones(batch, length, dtype=torch.bool)
        else:
            real = attention_mask[:, -length:].bool().cpu()
        continuing = (  # a step: one token per row after a prompt given with this cache
            length == 1
            and self._sequence is not None
            and cache is not None
            and self._sequence[0] is cache
            and len(self._sequence[1]) == batch
        )
        if not continuing:
            llama.reserve(int(real.sum()) + batch * STEPS_PER_ROW, batch)
            llama.clear()
            self._sequence = (cache, [0] * batch)
        lengths = self._sequence[1]
        needed = sum(lengths) + int(real.sum())
        if needed > llama.context_tokens:
            raise ValueError(
                f"llama.cpp's context holds {llama.context_tokens} tokens; this call needs "
                f"{needed}. Generate fewer tokens or pass a shorter prompt."
            )
        keep = length if not logits_to_keep else min(int(logits_to_keep), length)
        logits = torch.zeros(batch, keep, llama.vocab_size, dtype=torch.float32)
        embeds = inputs_embeds.detach().to("cpu", torch.float32)
        for row in range(batch):
            positions = torch.nonzero(real[row]).flatten()
            if not len(positions):
                continue
            wanted = positions >= length - keep
            out = llama.decode(row, lengths[row], embeds[row, positions].numpy(), wanted.tolist())
            lengths[row] += len(positions)
            logits[row, positions[wanted] - (length - keep)] = torch.from_numpy(out)
        if cache is None:
            self._sequence = None
        return logits


class LlamaCppPreFusion(nn.Module):
    """The pre-fusion layers' GGUF file (part 'prefusion') in llama.cpp, in place of
    `PreFusionLayers` (`llavamini/model/prefusion.py`), with its `forward`.

    Pre-fusion's output is the last layer's hidden states, before any norm; llama.cpp's graph ends
    in a final norm and head, so the output is read from the graph itself: the tensor
    `l_out-{last}` (llama.cpp's name for a layer's output), through its evaluation callback.
    llama.cpp runs the last layer on the rows asked for only, the context rows giving their keys
    and values, as `PreFusionLayers` does. Inference only.

    Args:
        path, threads: as `LlamaCppModel`'s.
    """

    def __init__(self, path: str, threads: int | None = None):
        super().__init__()
        import llama_cpp

        self._ggml = ggml_library()
        self._captured: list[np.ndarray] = []
        # Kept on the object: llama.cpp calls it for as long as the context lives.
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._see_tensor)
        self.llama = LlamaCppModel(path, threads, context_tokens=1024, eval_callback=self._callback)
        self._wanted = f"l_out-{self.llama.num_layers - 1}".encode()

    def __len__(self) -> int:
        return self.llama.num_layers

    def close(self) -> None:
        """Free llama.cpp's context and model."""
        self.llama.close()

    def _see_tensor(self, tensor, ask: bool, user_data) -> bool:
        """llama.cpp's `cb_eval`: asked of each tensor of the graph whether to see it (only the
        last layer's output), then called with the data computed."""
        if ask:
            return self._ggml.ggml_get_name(tensor) == self._wanted
        count = self._ggml.ggml_nelements(tensor)
        size = self._ggml.ggml_nbytes(tensor)
        if count and size == 4 * count:  # float32, as llama.cpp's CPU graph computes it
            data = np.empty(count, np.float32)
            self._ggml.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, size)
            self._captured.append(data.reshape(-1, self.llama.hidden_size))
        elif count:
            self._captured.append(None)  # not float32: `forward` raises
        return True

    def forward(
        self,
        hidden_states: torch.Tensor,
        keep: torch.Tensor | None,
        rotary_emb: nn.Module | None = None,
        unread: int = 0,
    ) -> torch.Tensor:
        """As `PreFusionLayers.forward`: `(B, S, D)` -> `(B, S - unread, D)`, the outputs of the
        rows from `unread` on; the positions outside `keep` `(B, S)` neither attend nor are
        attended (their rows come back as they went in). `rotary_emb` is unused: llama.cpp
        applies the rotary embedding the GGUF file describes."""
        batch, length = hidden_states.shape[:2]
        if keep is None:
            keep = torch.ones(batch, length, dtype=torch.bool)
        keep = keep.bool().cpu()
        output = hidden_states[:, unread:].clone()
        embeds = hidden_states.detach().to("cpu", torch.float32)
        self.llama.reserve(int(keep.sum(-1).max()), rows=1)
        for row in range(batch):
            positions = torch.nonzero(keep[row]).flatten()
            wanted = positions >= unread
            if not bool(wanted.any()):
                continue
            self.llama.clear()
            self._captured = []
            self.llama.decode(0, 0, embeds[row, positions].numpy(), wanted.tolist())
            if any(part is None for part in self._captured):
                raise RuntimeError(f"llama.cpp's {self._wanted.decode()} is not float32.")
            states = np.concatenate(self._captured) if self._captured else None
            if states is None or states.shape[0] != int(wanted.sum()):
                raise RuntimeError(
                    f"llama.cpp gave {0 if states is None else states.shape[0]} rows of "
                    f"{self._wanted.decode()} for {int(wanted.sum())} asked."
                )
            output[row, positions[wanted] - unread] = torch.from_numpy(states).to(output)
        return output
