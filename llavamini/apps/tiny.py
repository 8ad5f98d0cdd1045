"""Tiny random LLaVA-Mini checkpoints built in-process (demos, tests, smoke runs; no download).

A tiny checkpoint has the same layout as a released one: `config.json`, `model.safetensors`
(the CLIP tower included), `generation_config.json`, tokenizer files and
`preprocessor_config.json`, so `ModelSpec.load` and `AutoModelForCausalLM` load it unchanged.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from llavamini.apps import synthetic
from llavamini.model import family_of
from llavamini.model.image_processors import CLIP_L_336_PROCESSOR

SPECIAL_TOKENS = [
    "<|finetune_right_pad_id|>",  # id 0, like the parity fixture's pad
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
"""Llama-3.1 special tokens, so the `llava_llama_3_1` template tokenizes as with the release."""

COMPACT_SPECIAL_TOKENS = [
    "<|finetune_right_pad_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|user|>",
    "<|assistant|>",
    "<|eot_id|>",
]
"""The compact format's special tokens: the same ids for pad, BOS and end of turn, and one token
per role instead of the Llama-3 headers (so `default_template_name` picks 'chat_template')."""

COMPACT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
"""A chat template without a system prompt:
`<|begin_of_text|><|user|>question<|eot_id|><|assistant|>answer<|eot_id|>`. A Llama-3.1 prompt
with the release's system prompt is about 100 tokens longer, which on a CPU slows a tiny model's
training several times over (the quickstart uses this format)."""

CHAT_FORMATS = {
    "llama_3_1": (SPECIAL_TOKENS, None),
    "compact": (COMPACT_SPECIAL_TOKENS, COMPACT_CHAT_TEMPLATE),
}
"""Tiny tokenizer formats: name -> (special tokens, chat template or None)."""

CHAT_CORPUS = (
    "system user assistant You are a helpful language and vision assistant.",
    "What is unusual about this image? What is the man doing? Describe the picture in detail.",
    "A man is ironing clothes on an ironing board attached to the back of a yellow taxi.",
    "red green blue yellow circle square triangle left right top bottom middle one two three",
    "Answer the question using a single word or phrase. yes no how many what colour where",
)
"""General chat and question text."""

SHAPES_CORPUS = (
    "top left red circle, top centre green square, top right blue triangle, middle left yellow "
    "circle, centre purple square, middle right orange triangle.",
    "Describe the image.",
    "Answer the question using a single word or phrase.",
    "zero one two three four five",
    "yes no",
    "top left top centre top right middle left centre middle right bottom left bottom centre "
    "bottom right",
    "red green blue yellow purple orange",
    "circle square triangle",
    "What colour is at the middle left?",
    "What colour is at the middle left?",
    "What colour is at the top left?",
    "Is there an object at the centre?",
    "Is there an object at the top right?",
    "Is there an object at the bottom centre?",
    "How many yellow objects are there?",
    "How many yellow objects are there?",
    "How many blue objects are there?",
    "What shape is at the top centre?",
    "What shape is at the top right?",
    "What shape is at the top centre?",
    "Is there a purple square?",
    "Is there a purple triangle?",
    "Is there a green square?",
)
"""Captions and questions in the words of the synthetic shapes data (`synthetic.py`), written
out here once rather than generated from it: rewording the quickstart's data leaves every tiny
tokenizer, and so every test's token ids, as they are (new words still tokenize: the BPE is
byte-level, only into more pieces)."""

TINY_CORPUS = CHAT_CORPUS + SHAPES_CORPUS
"""What `build_tiny_tokenizer` is trained on."""


TINY_LLM = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    rope_theta=500000.0,
)
"""The tiny Llama's shape: head size 32, the smallest vLLM's CPU attention accepts, so the same
tiny checkpoint runs under transformers and under the vLLM plug-in."""


def tiny_vision_config(image_size: int = 336, encoder: str = "clip") -> dict:
    """A vision tower of width 64, 2 layers, patch 14: CLIP-shaped, or SigLIP-shaped."""
    shape = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
    )
    if encoder == "clip":
        return {**shape, "model_type": "clip_vision_model", "hidden_act": "quick_gelu"}
    if encoder == "siglip":
        return {**shape, "model_type": "siglip_vision_model"}
    raise ValueError(f"Unknown tiny encoder {encoder!r}; known: ['clip', 'siglip'].")


TINY_BACKBONE_FIELDS = {"llama": {}, "qwen2": {}, "qwen3": {"head_dim": 32}}
"""Per backbone, what the tiny shape needs beyond TINY_LLM (Qwen3's head_dim defaults to 128)."""


def build_tiny_tokenizer(
    vocab_size: int = 512, chat_format: str = "llama_3_1"
) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in memory on `TINY_CORPUS` (fixed text).

    `chat_format` (a `CHAT_FORMATS` name): 'llama_3_1' has the Llama-3.1 special tokens (the
    `llava_llama_3_1` template, as the release); 'compact' has role tokens and a chat template
    with no system prompt (conv mode 'chat_template').
    """
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"Unknown chat_format {chat_format!r}; known: {sorted(CHAT_FORMATS)}.")
    special_tokens, chat_template = CHAT_FORMATS[chat_format]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    fast.chat_template = chat_template
    return fast


def tiny_config(
    vocab_size: int,
    image_size: int = 336,
    backbone: str = "llama",
    encoder: str = "clip",
    **overrides,
):
    """A LLaVA-Mini small enough to run in milliseconds on a CPU.

    Vision (CLIP or SigLIP): width 64, 2 layers, patch 14 (a 24 x 24 grid at 336 px). LLM (any
    family in `llavamini.model.FAMILIES`): width 64, 2 layers, 2 heads of 32, 1 KV head. One
    pre-fusion layer, one compressed token. `overrides` set any field.
    """
    fields = dict(
        vocab_size=vocab_size,
        **TINY_LLM,
        **TINY_BACKBONE_FIELDS.get(backbone, {}),
        bos_token_id=1,
        eos_token_id=5,
        pad_token_id=0,
        mm_vision_tower=None,
        vision_config=tiny_vision_config(image_size, encoder),
        mm_hidden_size=64,
        compressor_num_heads=4,
        compressor_size=1,
        prefusion_layer_num=1,
        image_aspect_ratio="pad",
    )
    fields.update(overrides)
    return family_of(backbone).config_class(**fields)


def tiny_image_processor(image_size: int = 336, encoder: str = "clip"):
    """The encoder's preprocessing at `image_size`: CLIP's (resize the short side, centre crop,
    CLIP mean/std) or SigLIP's (resize to a square, mean/std 0.5)."""
    if encoder == "siglip":
        return SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    settings = dict(CLIP_L_336_PROCESSOR)
    settings["size"] = {"shortest_edge": image_size}
    settings["crop_size"] = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(**settings)


def build_tiny_checkpoint(
    output_dir: str, seed: int = 0, backbone: str = "llama", encoder: str = "clip", **overrides
) -> str:
    """Write a seeded, randomly initialised tiny LLaVA-Mini checkpoint to `output_dir`."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(len(tokenizer), backbone=backbone, encoder=encoder, **overrides)
    torch.manual_seed(seed)
    model = family_of(backbone).causal_lm_class(config)
    model.generation_config = tiny_generation_config(tokenizer)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    tiny_image_processor(config.vision_config.image_size, encoder).save_pretrained(output_dir)
    return output_dir


def tiny_generation_config(tokenizer) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")],
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_assets(
    output_dir: str,
    image_size: int = 56,
    num_train: int = 64,
    num_val: int = 16,
    seed: int = 0,
    llm_shape: dict | None = None,
    vision_shape: dict | None = None,
    data_dir: str | None = None,
    backbone: str = "llama",
    encoder: str = "clip",
    chat_format: str = "llama_3_1",
) -> dict:
    """What a training run starts from, in miniature: a plain LLM of the `backbone` family
    (`llm/`, with its tokenizer in `chat_format`, see `build_tiny_tokenizer`), a vision tower
    (`clip/`, CLIP or SigLIP, with its preprocessor) and the synthetic shapes data set
    (`data_dir`, default `data/`). `llm_shape` / `vision_shape` override `TINY_LLM` /
    `tiny_vision_config`. Returns the paths."""
    tokenizer = build_tiny_tokenizer(chat_format=chat_format)
    torch.manual_seed(seed)
    llm_dir, clip_dir = os.path.join(output_dir, "llm"), os.path.join(output_dir, "clip")
    llm_config = CONFIG_MAPPING[backbone](
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_LLM, **TINY_BACKBONE_FIELDS.get(backbone, {}), **(llm_shape or {})},
    )
    llm = AutoModelForCausalLM.from_config(llm_config)
    llm.generation_config = tiny_generation_config(tokenizer)
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    vision = {**tiny_vision_config(image_size, encoder), **(vision_shape or {})}
    vision.pop("model_type")
    tower = (
        SiglipVisionModel(SiglipVisionConfig(**vision))
        if encoder == "siglip"
        else (CLIPVisionModel(CLIPVisionConfig(**vision)))
    )
    tower.save_pretrained(clip_dir)
    tiny_image_processor(image_size, encoder).save_pretrained(clip_dir)
    data_dir = data_dir or os.path.join(output_dir, "data")
    data = synthetic.write_dataset(data_dir, num_train, num_val, image_size, seed)
    return {"llm": llm_dir, "clip": clip_dir, **data}
