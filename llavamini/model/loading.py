"""`ModelSpec` and `load_pretrained`: model and processor of a checkpoint, offline.

Dispatch is by `config.model_type` (through the Auto classes), never by the folder's name. Where
the checkpoint, its vision tower and their weights come from, and how the keys are checked, is
the loading policy of `llavamini.model.checkpoint`; this module adds the device, dtype,
attention and quantization a caller chooses.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from llavamini.model.checkpoint import resolve_checkpoint_dir
from llavamini.model.processing_llavamini import LlavaMiniProcessor

logger = logging.getLogger(__name__)

QUANTIZATION_SKIP_MODULES = (
    "model.vision_tower",
    "model.mm_projector",
    "model.compressor",
    "lm_head",
)
"""Modules kept in 16-bit under 8/4-bit loading: small, and the first three feed every vision
token (the reference's 8-bit path quantized lm_head and its 4-bit path failed outright)."""


def quantization_config(
    quantization: str,
    compute_dtype: torch.dtype,
    skip_modules: tuple[str, ...] = QUANTIZATION_SKIP_MODULES,
) -> BitsAndBytesConfig:
    """bitsandbytes settings for '8bit' or '4bit' (NF4) loading; `skip_modules` stay 16-bit."""
    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"Unknown quantization {quantization!r}; expected '8bit' or '4bit'.")
    return BitsAndBytesConfig(
        load_in_8bit=quantization == "8bit",
        load_in_4bit=quantization == "4bit",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_type="nf4",
        llm_int8_skip_modules=list(skip_modules),
    )


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
        quantization: None, '8bit' or '4bit' (bitsandbytes on a CUDA GPU; the vision modules
            and lm_head stay unquantized).
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
            "help": "bitsandbytes quantization (CUDA GPU)",
        },
    )

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}.")
        if self.quantization not in (None, "8bit", "4bit"):
            raise ValueError(
                f"Unknown quantization {self.quantization!r}; expected '8bit' or '4bit'."
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

    def load(self) -> LoadedModel:
        """The checkpoint in eval mode. Raises `FileNotFoundError` naming a checkpoint that is
        not there, and `ModelLoadError` with an actionable message for what else fails."""
        device, dtype = self.resolved_device, self.resolved_dtype
        logger.info("Loading %s on %s (dtype %s)", self.path, device, dtype)
        torch_dtype = DTYPES[dtype]
        if self.quantization is not None:
            self._check_quantization(device)
            torch_dtype = torch.float16 if dtype in ("auto", "float32") else torch_dtype
        try:
            loaded = load_pretrained(
                self.path,
                dtype=torch_dtype,
                device=device,
                attn_implementation=self.attn_implementation,
                quantization=self.quantization,
            )
        except FileNotFoundError:
            raise  # it names the missing path already
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"Cannot load {self.path!r}: {error}") from error
        loaded.model.eval()
        return loaded

    def _check_quantization(self, device: str) -> None:
        flag = f"--load-{self.quantization}"
        if not device.startswith("cuda") or not torch.cuda.is_available():
            raise ModelLoadError(
                f"{flag} quantizes with bitsandbytes, which needs a CUDA GPU, but the device is "
                f"{device!r}{'' if torch.cuda.is_available() else ' (no CUDA GPU found)'}. "
                f"Drop {flag} to run unquantized."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"{flag} needs bitsandbytes: pip install bitsandbytes")


def load_pretrained(
    model_path: str,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load a LLaVA-Mini checkpoint (a folder, or a hub id already in the local HF cache).

    Args:
        model_path: the checkpoint.
        dtype: torch dtype, or 'auto' for the one stored in config.json.
        device: where to put the model ('cpu', 'cuda', 'cuda:1', ...; None keeps it on CPU).
        attn_implementation: 'sdpa' (default), 'eager', 'flash_attention_2', ...
        quantization: None, '8bit' or '4bit' (bitsandbytes, on a CUDA device; the vision
            modules and lm_head stay unquantized).
    """
    checkpoint_dir = resolve_checkpoint_dir(model_path)
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if quantization is not None:
        compute_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float16
        kwargs.update(
            dtype=compute_dtype,
            quantization_config=quantization_config(quantization, compute_dtype),
            device_map=str(device or "cuda"),
        )
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, **kwargs)
    if device is not None and quantization is None:
        model.to(device)
    processor = LlavaMiniProcessor.from_pretrained(checkpoint_dir)
    check_processor(processor, model.config, checkpoint_dir)
    return LoadedModel(model=model, processor=processor)


def check_processor(processor: LlavaMiniProcessor, config, checkpoint_dir: str) -> None:
    """Raise when the processor's image preprocessing is not the model config's."""
    for field in ("image_aspect_ratio", "resolution_ratio"):
        if getattr(processor, field) != getattr(config, field):
            raise ValueError(
                f"{checkpoint_dir}: the processor's {field}={getattr(processor, field)!r} "
                f"differs from config.json's {getattr(config, field)!r}; fix processor_config.json."
            )
