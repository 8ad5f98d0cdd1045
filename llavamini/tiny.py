"""Tiny random LLaVA-Mini checkpoints built in-process (demos, tests, smoke runs; no download).

A tiny checkpoint has the same layout as a released one: `config.json`, `model.safetensors`
(the CLIP tower included), `generation_config.json`, tokenizer files and
`preprocessor_config.json`, so `load_pretrained` and `AutoModelForCausalLM` load it unchanged.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPImageProcessorPil, GenerationConfig, PreTrainedTokenizerFast

from llavamini.model import LlavaMiniConfig, LlavaMiniForCausalLM
from llavamini.model.loading import CLIP_L_336_PROCESSOR

SPECIAL_TOKENS = [
    "<|finetune_right_pad_id|>",  # id 0, like the parity fixture's pad
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
"""Llama-3.1 special tokens, so the `llava_llama_3_1` template tokenizes as with the release."""

_CORPUS = [
    "system user assistant You are a helpful language and vision assistant.",
    "What is unusual about this image? What is the man doing? Describe the picture in detail.",
    "A man is ironing clothes on an ironing board attached to the back of a yellow taxi.",
    "red green blue yellow circle square triangle left right top bottom middle one two three",
    "Answer the question using a single word or phrase. yes no how many what colour where",
]


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in memory on a few sentences, with Llama-3.1 special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )


def tiny_config(vocab_size: int, image_size: int = 336, **overrides) -> LlavaMiniConfig:
    """A LLaVA-Mini small enough to run in milliseconds on a CPU.

    CLIP: width 64, 2 layers, patch 14 (a 24 x 24 grid at 336 px). Llama: width 64, 2 layers,
    4 heads, 2 KV heads. One pre-fusion layer, one compressed token. `overrides` set any field.
    """
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        bos_token_id=1,
        eos_token_id=5,
        pad_token_id=0,
        mm_vision_tower=None,
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=14,
            hidden_act="quick_gelu",
        ),
        mm_hidden_size=64,
        compressor_num_heads=4,
        compressor_size=1,
        prefusion_layer_num=1,
        image_aspect_ratio="pad",
    )
    fields.update(overrides)
    return LlavaMiniConfig(**fields)


def tiny_image_processor(image_size: int = 336) -> CLIPImageProcessorPil:
    """The CLIP-336 preprocessing, at `image_size`."""
    settings = dict(CLIP_L_336_PROCESSOR)
    settings["size"] = {"shortest_edge": image_size}
    settings["crop_size"] = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(**settings)


def build_tiny_checkpoint(output_dir: str, seed: int = 0, **config_overrides) -> str:
    """Write a seeded, randomly initialised tiny LLaVA-Mini checkpoint to `output_dir`."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = LlavaMiniForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    tiny_image_processor(config.vision_config.image_size).save_pretrained(output_dir)
    return output_dir
