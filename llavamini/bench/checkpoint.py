"""A random-weight checkpoint at a benchmark scale, written shard by shard (no download).

`write_random_checkpoint(output_dir, scale="8b")` writes what the release holds, at its real size
with random weights: `config.json` (`build_config`'s Llama-3.1-8B + CLIP-L/336 + 4 pre-fusion
layers; `mm_vision_tower` names CLIP-L/336 as the release's does), the release's key layout with
the CLIP tower stored inside the checkpoint (`model.vision_tower.vision_tower.*`, as the release
stores it), bfloat16 safetensors shards with `model.safetensors.index.json`, a generation config,
a tokenizer that decodes every id below the config's `vocab_size`, the CLIP preprocessor and the
processor (`processor_config.json`). It loads with `AutoModelForCausalLM.from_pretrained` and
`ModelSpec(path).load()` with no missing or unexpected key.

The model is built on the meta device (names and shapes, no memory). Each shard's modules are
then made real on the CPU, initialised by their own model's `_init_weights` (transformers'
init: the LLM's and the compressor's by LLaVA-Mini's, CLIP's by CLIP's), saved, and sent back
to the meta device, so the process holds about one shard (`max_shard_bytes`) at a time.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from llavamini.apps.tiny import build_tiny_tokenizer, tiny_generation_config, tiny_image_processor
from llavamini.bench.configs import SCALES, build_config
from llavamini.model import LlavaMiniForCausalLM
from llavamini.model.processing_llavamini import LlavaMiniProcessor
from llavamini.model.vision_tower import CLIP_L_336

logger = logging.getLogger(__name__)

DTYPE = torch.bfloat16
"""The release's storage dtype."""

RELEASE_ARCHITECTURE = "LlavaMiniLlamaForCausalLM"
"""`architectures` in the release's config.json (the reference's class name)."""

INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class Unit:
    """A module that owns parameters or persistent buffers itself (not through children): what
    is made real, initialised and saved together. `owners` are the `PreTrainedModel`s above it,
    outermost first (the innermost one's `_init_weights` applies)."""

    prefix: str
    module: nn.Module
    owners: tuple[PreTrainedModel, ...]
    ancestors: tuple[nn.Module, ...]

    def tensor_names(self) -> list[str]:
        names = [name for name, _ in self.module.named_parameters(recurse=False)]
        skip = self.module._non_persistent_buffers_set
        names += [n for n, _ in self.module.named_buffers(recurse=False) if n not in skip]
        return names

    def nbytes(self) -> int:
        return sum(getattr(self.module, n).nbytes for n in self.tensor_names())

    def materialize(self) -> dict[str, torch.Tensor]:
        """Make the unit real on the CPU, initialise it (every tensor is NaN first, so one that
        no init touched is caught) and return its tensors by checkpoint key."""
        self.module.to_empty(device="cpu", recurse=False)
        with torch.no_grad():
            for name in self.tensor_names():
                tensor = getattr(self.module, name)
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
            init = self.owners[-1]._init_weights
            for module in (*self.ancestors, self.module):
                init(module)
        tensors = {}
        for name in self.tensor_names():
            tensor = getattr(self.module, name).detach()
            if tensor.is_floating_point() and bool(tensor.isnan().any()):
                raise RuntimeError(
                    f"{self.prefix}{name}: left uninitialised by {type(self.owners[-1]).__name__}"
                    f"._init_weights; add its init there."
                )
            tensors[self.prefix + name] = tensor
        return tensors

    def release(self) -> None:
        """Back to the meta device: the unit's memory is freed."""
        self.module.to_empty(device="meta", recurse=False)


def units(model: nn.Module) -> Iterator[Unit]:
    """The model's `Unit`s in module order."""

    def walk(module, prefix, owners, ancestors):
        if isinstance(module, PreTrainedModel):
            owners = (*owners, module)
        unit = Unit(prefix, module, owners, ancestors)
        if unit.tensor_names():
            yield unit
        for name, child in module.named_children():
            yield from walk(child, f"{prefix}{name}.", owners, (*ancestors, module))

    yield from walk(model, "", (), ())


def plan_shards(model: nn.Module, max_shard_bytes: int) -> list[list[Unit]]:
    """Units grouped in order into shards of at most `max_shard_bytes` (a larger unit alone)."""
    shards: list[list[Unit]] = [[]]
    size = 0
    for unit in units(model):
        if shards[-1] and size + unit.nbytes() > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(unit)
        size += unit.nbytes()
    return shards


def cover_vocabulary(
    tokenizer: PreTrainedTokenizerFast, vocab_size: int
) -> PreTrainedTokenizerFast:
    """`tokenizer` (a byte-level BPE) with its vocabulary filled up to `vocab_size` ids, each new
    id `i` decoding to ' t{i}': random weights pick any id the model has, and an answer should
    show them. The new entries have no merges, so no text encodes to them."""
    if len(tokenizer) >= vocab_size:
        return tokenizer
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    first = max([*vocab.values(), *(t["id"] for t in spec["added_tokens"])]) + 1
    vocab.update({f"\u0120t{i}": i for i in range(first, vocab_size)})  # Ġ: byte-level space
    covered = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
    )
    covered.chat_template = tokenizer.chat_template
    return covered


def checkpoint_config(scale: str, variant: str):
    """`build_config(scale, variant)` with the release's fields: `mm_vision_tower` names
    CLIP-L/336 at the real width, bfloat16, the release's architecture name, and the special
    token ids of the tokenizer written beside it (`cover_vocabulary`)."""
    tokenizer = build_tiny_tokenizer()
    real_width = SCALES[scale].width_divisor == 1
    config = build_config(
        scale,
        variant,
        mm_vision_tower=CLIP_L_336 if real_width else None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} ids but scale {scale!r} has vocab_size "
            f"{config.vocab_size}."
        )
    config.architectures = [RELEASE_ARCHITECTURE]
    config.dtype = DTYPE
    return config, cover_vocabulary(tokenizer, config.vocab_size)


def write_random_checkpoint(
    output_dir: str,
    scale: str = "8b",
    variant: str = "mini-1",
    max_shard_bytes: int = 2 * 2**30,
    seed: int = 0,
) -> str:
    """Write a random-weight LLaVA-Mini checkpoint of `variant` at `scale` to `output_dir` (see
    the module docstring); holds about one shard in memory. Returns `output_dir`."""
    config, tokenizer = checkpoint_config(scale, variant)
    with torch.device("meta"):
        model = LlavaMiniForCausalLM._from_config(config, dtype=DTYPE)
    shards = plan_shards(model, max_shard_bytes)
    os.makedirs(output_dir, exist_ok=True)
    torch.manual_seed(seed)
    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        name = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        )
        tensors = {}
        for unit in shard:
            tensors.update(unit.materialize())
        save_file(tensors, os.path.join(output_dir, name), metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
        for unit in shard:
            unit.release()
        logger.info("Wrote %s (%d/%d)", name, index, len(shards))
    if len(shards) > 1:
        with open(os.path.join(output_dir, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config.save_pretrained(output_dir)
    tiny_generation_config(tokenizer).save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    tiny_image_processor(config.vision_config.image_size).save_pretrained(output_dir)
    LlavaMiniProcessor.from_pretrained(output_dir).save_pretrained(output_dir)
    logger.info(
        "Wrote a random %s %s checkpoint (%.2f GB) to %s", scale, variant, total / 1e9, output_dir
    )
    return output_dir
