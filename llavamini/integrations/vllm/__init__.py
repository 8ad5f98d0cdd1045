"""LLaVA-Mini as an out-of-tree vLLM model (`vllm serve CKPT`, `vllm.LLM(CKPT)`).

vLLM loads `register` through the `vllm.general_plugins` entry point of this package (see
pyproject.toml) in every process it starts; it registers the architectures that LLaVA-Mini
checkpoints name in their config.json. Install with `bash scripts/setup-vllm.sh`; usage, what is
supported and measured throughput: docs/serving.md.

How pre-fusion fits vLLM (the hard part): the LLM's input depends on the whole prompt and the
visual together, while vLLM embeds the flat, chunked tokens of all scheduled requests without
request boundaries. So each prompt's images and videos, however many and in whichever turns, are
one multimodal item whose placeholder range covers the *whole* prompt (`processing.py`); the item
carries the prompt's token ids, which are mixed into its hash, and the model's `embed_multimodal`
returns the embeddings of every prompt position (fused text, vision tokens). vLLM's encoder
cache then hands each prefill chunk its slice, and prefix caching keys every block of the prompt
on the (media, prompt) pair.
"""

from __future__ import annotations

ARCHITECTURES = (
    "LlavaMiniForCausalLM",
    "LlavaMiniLlamaForCausalLM",
    "LlavaMiniQwen2ForCausalLM",
    "LlavaMiniQwen3ForCausalLM",
)
"""`architectures` names of LLaVA-Mini checkpoints (the release's and this package's)."""


def register() -> None:
    """Register the LLaVA-Mini architectures with vLLM's model registry (idempotent).

    The model class is named lazily ("module:Class"), so loading the plug-in costs only the
    config registration that importing this package (`llavamini` first) does: vLLM reads
    config.json through `AutoConfig`, which must know the `llava_mini_*` model types.
    """
    from vllm import ModelRegistry  # optional: imported only when vLLM itself calls this

    supported = set(ModelRegistry.get_supported_archs())
    for name in ARCHITECTURES:
        if name not in supported:
            ModelRegistry.register_model(
                name, "llavamini.integrations.vllm.model:LlavaMiniForConditionalGeneration"
            )
