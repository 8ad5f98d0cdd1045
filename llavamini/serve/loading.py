"""Loading a checkpoint for chat and serving: device and dtype choice, and 8/4-bit quantization.

Quantization goes through bitsandbytes, on a CUDA GPU only (see
`llavamini.model.loading.QUANTIZATION_SKIP_MODULES` for what stays in 16-bit).
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from llavamini.model.loading import LoadedModel, load_pretrained

logger = logging.getLogger(__name__)

DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""`--dtype` choices; 'auto' keeps the dtype stored in the checkpoint's config.json."""


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be loaded as asked; the message says why and what to do."""


def pick_device(requested: str | None) -> str:
    """`requested`, or the best available: 'cuda', else 'mps', else 'cpu'."""
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_for_chat(
    model_path: str,
    device: str | None = None,
    dtype: str = "auto",
    quantization: str | None = None,
) -> LoadedModel:
    """Load a checkpoint ready to answer.

    Args:
        model_path: checkpoint folder, or a hub id in the local Hugging Face cache.
        device: 'cuda', 'cuda:1', 'mps', 'cpu', ... (None: the best available).
        dtype: a key of `DTYPES`.
        quantization: None, '8bit' or '4bit' (bitsandbytes; needs a CUDA device).

    Raises `ModelLoadError` with an actionable message.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}.")
    device = pick_device(device)
    logger.info("Loading %s on %s (dtype %s)", model_path, device, dtype)
    if quantization is not None:
        return _load_quantized(model_path, device, dtype, quantization)
    try:
        return load_pretrained(model_path, dtype=DTYPES[dtype], device=device)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load --model-path {model_path!r}: {error}") from error


def _load_quantized(model_path: str, device: str, dtype: str, quantization: str) -> LoadedModel:
    """Check what bitsandbytes needs, then `load_pretrained` with `quantization`."""
    if quantization not in ("8bit", "4bit"):
        raise ModelLoadError(f"Unknown quantization {quantization!r}; expected '8bit' or '4bit'.")
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ModelLoadError(
            f"--load-{quantization} quantizes with bitsandbytes, which needs a CUDA GPU, but the "
            f"device is {device!r}{'' if torch.cuda.is_available() else ' (no CUDA GPU found)'}. "
            f"Drop --load-{quantization} to run unquantized."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"--load-{quantization} needs bitsandbytes: pip install bitsandbytes")
    compute_dtype = torch.float16 if dtype in ("auto", "float32") else DTYPES[dtype]
    try:
        return load_pretrained(
            model_path, dtype=compute_dtype, device=device, quantization=quantization
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Cannot load --model-path {model_path!r}: {error}") from error
