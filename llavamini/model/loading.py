"""`ModelSpec.load`: the one way to load a checkpoint's model and processor for inference, offline.

Dispatch is by `config.model_type` (through the Auto classes), never by the folder's name. Where
the checkpoint, its vision tower and their weights come from, and how the keys are checked, is
the loading policy of `llavamini.model.checkpoint`; this module adds the device, dtype,
attention and quantization a caller chooses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig, TorchAoConfig

from llavamini.model.checkpoint import resolve_checkpoint_dir
from llavamini.model.int8_linear import use_int8_kernel
from llavamini.model.llama_cpp import (
    GGUF_TYPES,
    LLAMA_CPP_INSTALL,
    PARTS,
    LlamaCppLanguageModel,
    LlamaCppPreFusion,
    cached_gguf,
    check_exportable,
    ggml_library,
    llama_cpp_available,
)
from llavamini.model.modules import COMPRESSOR, LM_HEAD, PROJECTOR, VISION_TOWER, module_name
from llavamini.model.processing_llavamini import LlavaMiniProcessor
from llavamini.model.reduction import (
    METHODS,
    TokenReduction,
    TokenReductionError,
    check_applicable,
    method_of,
)
from llavamini.utils.allocator import transient_allocations

logger = logging.getLogger(__name__)

QUANTIZATION_SKIP_MODULES = {
    module_name(VISION_TOWER): "feeds every vision token; on a CPU it runs in float32 (see "
    "`CPU_FLOAT32_MODULES`)",
    module_name(PROJECTOR): "feeds every vision token; 21M parameters",
    module_name(COMPRESSOR): "feeds every vision token; 4M parameters",
    LM_HEAD: "the logits themselves (the reference's 8-bit path quantized it; its 4-bit path "
    "failed outright)",
}
"""Modules kept unquantized under 8/4-bit loading, with why: the one table both backends read.
The token embeddings are not linear layers and stay unquantized too (a lookup reads one row)."""

CPU_FLOAT32_MODULES = tuple(module_name(name) for name in (VISION_TOWER, PROJECTOR, COMPRESSOR))
"""Modules a quantized CPU load runs in float32 (the rest of the unquantized weights stay
bfloat16): a CPU without native bfloat16 runs bfloat16 matmuls 5-16x slower than float32
(docs/benchmarks.md, "Quantized inference on a CPU"). They are 0.33B parameters and see every
vision token; their output is cast to bfloat16 for pre-fusion and the LLM."""

QUANTIZATION_BACKENDS = {
    "cuda": "bitsandbytes (LLM.int8 / NF4)",
    "cpu": "torchao (int8 weight-only / int4 weight-only, CPU tinygemm layout); with the "
    "'llamacpp' extra the LLM itself runs in llama.cpp (Q8_0 / Q4_0)",
}
"""Device type -> the library that quantizes there (`quantization_config`)."""

TORCHAO_INSTALL = "pip install -c constraints.txt 'torchao==0.18.0' (or the 'quant' extra)"


def quantization_config(
    quantization: str,
    compute_dtype: torch.dtype,
    device: str = "cuda",
    skip_modules: tuple[str, ...] = tuple(QUANTIZATION_SKIP_MODULES),
):
    """Transformers' quantization settings for '8bit' or '4bit' on `device`'s backend
    (`QUANTIZATION_BACKENDS`; the default 'cuda' is bitsandbytes, what QLoRA training uses);
    `skip_modules` stay unquantized.

    CUDA: bitsandbytes (LLM.int8, or NF4 computing in `compute_dtype`). CPU: torchao weight-only
    int8 (per output channel; `ModelSpec` then multiplies with ATen's int8 kernel, see
    `llavamini.model.int8_linear`), or int4 in groups of 128 packed for the CPU kernel
    (`_weight_int4pack_mm_for_cpu`; bfloat16 activations). Both quantize each weight as it is
    loaded, so a bfloat16 checkpoint is never held whole in a wider dtype.
    """
    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"Unknown quantization {quantization!r}; expected '8bit' or '4bit'.")
    device_type = torch.device(device).type
    if device_type == "cpu":
        return torchao_config(quantization, skip_modules)
    if device_type != "cuda":
        raise ValueError(
            f"--quantization {quantization} runs on {sorted(QUANTIZATION_BACKENDS)} devices, not "
            f"{device!r}; drop it, or use --device cpu."
        )
    return BitsAndBytesConfig(
        load_in_8bit=quantization == "8bit",
        load_in_4bit=quantization == "4bit",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type="nf4",
        llm_int8_skip_modules=list(skip_modules),
    )


def torchao_config(quantization: str, skip_modules: tuple[str, ...]) -> TorchAoConfig:
    """The CPU backend's settings (see `quantization_config`)."""
    # torchao is optional (the 'quant' extra) and slow to import: only for a quantized CPU load.
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int8WeightOnlyConfig

    if quantization == "8bit":
        quant_type = Int8WeightOnlyConfig(set_inductor_config=False)
    else:
        quant_type = PrototypeInt4WeightOnlyConfig(group_size=128, set_inductor_config=False)
    return TorchAoConfig(quant_type=quant_type, modules_to_not_convert=list(skip_modules))


@dataclass
class LoadedModel:
    """A checkpoint's model and processor: what chat, evaluation and demos need."""

    model: torch.nn.Module
    processor: LlavaMiniProcessor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor


DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""dtype names; 'auto' keeps the dtype stored in the checkpoint's config.json."""


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Which checkpoint to load, where and how: chosen and validated once, the same for chat,
    serving, evaluation, analysis and the quickstart.

    Attributes:
        path: checkpoint folder, or a hub id in the local Hugging Face cache.
        device: 'cuda', 'cuda:1', 'mps', 'cpu', ... (None: the best available, see
            `resolved_device`).
        dtype: a `DTYPES` name (None: float16 on CUDA, the reference's inference dtype, else
            'auto', the checkpoint's own).
        attn_implementation: 'sdpa' (None: transformers' default), 'eager',
            'flash_attention_2', ...
        quantization: None, '8bit' or '4bit', by the device's backend (`QUANTIZATION_BACKENDS`:
            bitsandbytes on a CUDA GPU, torchao on a CPU); the modules of
            `QUANTIZATION_SKIP_MODULES` stay unquantized. On a CPU the other weights load as
            bfloat16 (any other `dtype` is refused) and the vision tower runs in float32; with
            llama-cpp-python installed (the 'llamacpp' extra) the LLM's decoder layers and
            `lm_head`, and the pre-fusion layers, run in llama.cpp instead
            (`llavamini.model.llama_cpp`: their GGUF files are written into a cache on first
            use).
        pack_vision_weights: pack the vision tower's block weights for MKL (`VisionTower.
            pack_weights`): on a CPU in float32, one image ~6% faster for a second copy of
            those weights (1.2 GB for CLIP-L). Off by default: memory first.
        reduction, reduction_tokens, reduction_seed, fastv_layer: a training-free
            vision-token reduction applied after loading (`token_reduction`; a checkpoint
            without compressor only; docs/token_reduction.md). None: every vision token.
    """

    path: str = dataclass_field(
        metadata={"flag": "--model-path", "help": "checkpoint folder or cached hub id"}
    )
    device: str | None = dataclass_field(
        default=None, metadata={"help": "cuda, cuda:1, mps, cpu (default: best)"}
    )
    dtype: str | None = dataclass_field(
        default=None,
        metadata={
            "choices": ("auto", "float32", "float16", "bfloat16"),
            "help": "weights dtype (default: float16 on CUDA, else 'auto', the checkpoint's own)",
        },
    )
    attn_implementation: str | None = dataclass_field(
        default=None, metadata={"help": "sdpa (default), eager or flash_attention_2"}
    )
    quantization: str | None = dataclass_field(
        default=None,
        metadata={
            "choices": ("8bit", "4bit"),
            "const_flags": {"--load-8bit": "8bit", "--load-4bit": "4bit"},
            "help": "weight quantization: bitsandbytes on a CUDA GPU, torchao on a CPU, the LLM "
            "through llama.cpp there when the 'llamacpp' extra is installed (vision modules stay "
            "unquantized)",
        },
    )
    pack_vision_weights: bool = dataclass_field(
        default=False,
        metadata={
            "help": "CPU, float32: pack the vision tower's weights for MKL (one image ~6%% "
            "faster, +1.2 GB for CLIP-L)"
        },
    )
    reduction: str | None = dataclass_field(
        default=None,
        metadata={
            "help": "training-free vision-token reduction of a checkpoint without compressor "
            "(docs/token_reduction.md)",
            "choices": tuple(METHODS),
        },
    )
    reduction_tokens: int | None = dataclass_field(
        default=None,
        metadata={"help": "--reduction's budget: vision tokens per image the LLM sees"},
    )
    reduction_seed: int = dataclass_field(
        default=0, metadata={"help": "--reduction random: the seed of the draw"}
    )
    fastv_layer: int = dataclass_field(
        default=2, metadata={"help": "--reduction fastv: the LLM layer K it drops tokens from"}
    )

    def __post_init__(self):
        if self.reduction is not None:
            method_of(self.token_reduction)
        elif self.reduction_tokens is not None:
            raise ValueError("--reduction-tokens needs --reduction (the method).")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}.")
        if self.quantization not in (None, "8bit", "4bit"):
            raise ValueError(
                f"Unknown quantization {self.quantization!r}; expected '8bit' or '4bit'."
            )

    @property
    def token_reduction(self) -> TokenReduction | None:
        """The `reduction` fields as the model takes them (None: no reduction)."""
        if self.reduction is None:
            return None
        return TokenReduction(
            self.reduction, self.reduction_tokens, self.reduction_seed, self.fastv_layer
        )

    @property
    def resolved_device(self) -> str:
        """`device`, or 'cuda' when available, else 'mps', else 'cpu'."""
        if self.device:
            return self.device
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    @property
    def resolved_dtype(self) -> str:
        if self.dtype is not None:
            return self.dtype
        return "float16" if self.resolved_device.startswith("cuda") else "auto"

    def resolved(self) -> ModelSpec:
        """This spec with `device` and `dtype` as they will be used (`resolved_device`,
        `resolved_dtype`): what a record of the run names."""
        return dataclasses.replace(self, device=self.resolved_device, dtype=self.resolved_dtype)

    def load(self) -> LoadedModel:
        """The checkpoint's model (in eval mode) and processor: the one way to load a
        checkpoint for inference (chat, serving, evaluation, analysis, the apps). Raises
        `FileNotFoundError` naming a checkpoint that is not there, and `ModelLoadError` with an
        actionable message for what else fails."""
        device, dtype = self.resolved_device, self.resolved_dtype
        logger.info("Loading %s on %s (dtype %s)", self.path, device, dtype)
        torch_dtype = DTYPES[dtype]
        if self.quantization is not None:
            torch_dtype = self._check_quantization(device, dtype)
        try:
            if self.reduction is not None:  # from config.json, before minutes of loading weights
                config = AutoConfig.from_pretrained(resolve_checkpoint_dir(self.path))
                check_applicable(self.token_reduction, config)
            loaded = self._load(device, torch_dtype)
        except (FileNotFoundError, TokenReductionError):
            raise  # they name the missing path / the method and the checkpoint already
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"Cannot load {self.path!r}: {error}") from error
        loaded.model.eval()
        if self.reduction is not None:
            loaded.model.set_token_reduction(self.token_reduction)
        return loaded

    def _load(self, device: str, dtype: torch.dtype | str) -> LoadedModel:
        """Model and processor on `device`, the unquantized weights in `dtype` (a torch dtype,
        or 'auto' for config.json's); quantized by `quantization_config` when asked, the
        `CPU_FLOAT32_MODULES` then in float32 on a CPU."""
        checkpoint_dir = resolve_checkpoint_dir(self.path)
        kwargs = {"dtype": dtype, "attn_implementation": self.attn_implementation}
        quantized_on_cpu = self.quantization is not None and torch.device(device).type == "cpu"
        if self.quantization is not None:
            compute_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float16
            if quantized_on_cpu:
                compute_dtype = torch.bfloat16
            kwargs.update(
                dtype=compute_dtype,
                quantization_config=quantization_config(self.quantization, compute_dtype, device),
                device_map=device,
            )
        runners = None
        if quantized_on_cpu:
            # Every LLM weight is converted as it is read: read through a mapping of its own, its
            # pages leave the process's resident set with it (FILE_READS in model/checkpoint.py;
            # at 8B the process then peaks at 6.7 GiB instead of 20.4).
            kwargs["file_reads"] = "per_tensor"
            runners = self._llama_cpp_runners(checkpoint_dir, kwargs)
            # Each weight is read in bfloat16, quantized and dropped: let glibc give those back.
            with transient_allocations():
                model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, **kwargs)
                modules = dict(model.named_modules())  # LLaVA-1.5 mode has no compressor
                for name in CPU_FLOAT32_MODULES:
                    if name in modules:
                        modules[name].float()
            if runners is not None:
                # Built without the layers llama.cpp runs; the config says what the model is
                # (FLOPs, KV sizes and generation's cache read it).
                llm, prefusion = runners
                model.config.num_hidden_layers = llm.num_layers
                model.language_model_runner = llm
                if prefusion is not None:
                    model.config.prefusion_layer_num = len(prefusion)
                    model.model.prefusion_layers = prefusion
            elif self.quantization == "8bit":
                # torchao widens each int8 weight on every call; ATen's int8 kernel reads it as is.
                logger.info("8-bit: %d linears run ATen's int8 kernel", use_int8_kernel(model))
        else:
            model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, **kwargs)
            if self.quantization is None:
                model.to(device)
        if self.pack_vision_weights:
            model.model.vision_tower.pack_weights()
        processor = LlavaMiniProcessor.from_pretrained(checkpoint_dir)
        check_processor(processor, model.config, checkpoint_dir)
        return LoadedModel(model=model, processor=processor)

    def _llama_cpp_runners(
        self, checkpoint_dir: str, kwargs: dict
    ) -> tuple[LlamaCppLanguageModel, LlamaCppPreFusion | None] | None:
        """For a quantized CPU load with llama-cpp-python installed and a Llama backbone: the
        LLM and the pre-fusion layers (if any) in llama.cpp (`llavamini.model.llama_cpp`, their
        GGUF files written on first use), and `kwargs` set to build the torch model without
        those layers. Else None (torchao runs the whole model)."""
        if not llama_cpp_available():
            logger.info(
                "4/8-bit on a CPU through torchao only (%s for llama.cpp)", LLAMA_CPP_INSTALL
            )
            return None
        config = AutoConfig.from_pretrained(checkpoint_dir)
        try:
            check_exportable(config)
        except ValueError as error:
            logger.info("The LLM stays in torch (torchao): %s", error)
            return None
        threads = torch.get_num_threads()
        path = cached_gguf(checkpoint_dir, self.quantization, "llm")
        logger.info("LLM through llama.cpp (%s): %s", GGUF_TYPES[self.quantization], path)
        prefusion = None
        if config.prefusion_layer_num:
            try:
                ggml_library()  # pre-fusion's output is read through it: checked before exporting
            except OSError as error:
                logger.warning("Pre-fusion stays in torch (torchao): %s", error)
            else:
                prefusion_path = cached_gguf(checkpoint_dir, self.quantization, "prefusion")
                prefusion = LlamaCppPreFusion(prefusion_path, threads=threads)
                logger.info("Pre-fusion through llama.cpp: %s", prefusion_path)
        config.num_hidden_layers = 0
        skip = [PARTS["llm"]]
        if prefusion is not None:
            config.prefusion_layer_num = 0
            skip.append(PARTS["prefusion"])
        kwargs.update(config=config, skip_prefixes=tuple(skip))
        return LlamaCppLanguageModel(path, threads=threads), prefusion

    def _check_quantization(self, device: str, dtype: str) -> torch.dtype:
        """Raise `ModelLoadError` for a quantization this device cannot run; returns the dtype
        of the weights left unquantized."""
        flag, kind = f"--quantization {self.quantization}", torch.device(device).type
        if kind == "cpu":
            # The settings first: they are wrong whether or not torchao is installed.
            if dtype not in ("auto", "bfloat16"):
                raise ModelLoadError(
                    f"{flag} on a CPU keeps the unquantized weights in bfloat16 (the vision "
                    f"tower computes in float32); drop --dtype {dtype}."
                )
            if importlib.util.find_spec("torchao") is None:
                raise ModelLoadError(f"{flag} on a CPU quantizes with torchao: {TORCHAO_INSTALL}")
            return torch.bfloat16
        if kind != "cuda":
            raise ModelLoadError(
                f"{flag} runs on a CUDA GPU (bitsandbytes) or a CPU (torchao), not on "
                f"{device!r}. Drop {flag}, or pass --device cpu."
            )
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"{flag} on {device!r}: no CUDA GPU found. Pass --device cpu (torchao) or drop "
                f"{flag}."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"{flag} on a GPU needs bitsandbytes: pip install bitsandbytes")
        dtype = DTYPES[dtype]
        return torch.float16 if dtype in ("auto", torch.float32) else dtype


def check_processor(processor: LlavaMiniProcessor, config, checkpoint_dir: str) -> None:
    """Raise when the processor's image preprocessing is not the model config's."""
    for field in ("image_aspect_ratio", "resolution_ratio"):
        if getattr(processor, field) != getattr(config, field):
            raise ValueError(
                f"{checkpoint_dir}: the processor's {field}={getattr(processor, field)!r} "
                f"differs from config.json's {getattr(config, field)!r}; fix processor_config.json."
            )
