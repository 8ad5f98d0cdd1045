"""LLaVA-Mini: vision features -> compressor + projector -> pre-fusion -> one token per image.

The multimodal model is written once, as mixins over a language backbone's own classes
(`LlavaMiniModelMixin` over its base model, `LlavaMiniForCausalLMMixin` over its causal LM); the
pre-fusion layers are built from the backbone's own decoder-layer class and use its rotary
embedding. This file composes the Llama family (Vicuna, Llama-3.x: the release);
`llavamini.model.backbones` composes Qwen2/Qwen3 and any other transformers causal LM. The vision
side (tower, compressor, projector, pre-fusion) is `llavamini.model.vision_encoder`; where the
weights come from and how they are checked, `llavamini.model.checkpoint`.

The module tree reproduces the released checkpoint's keys (docs/compatibility.md K1):

    model.embed_tokens / model.layers.{i} / model.norm / lm_head     the Llama LLM
    model.vision_tower.vision_tower.vision_model.*                   CLIP (frozen)
    model.mm_projector.{0,2}                                          vision width -> LLM width
    model.compressor.{query,pos_embed,attn.*,ln_q,ln_kv}              C*C query compressor
    model.prefusion_layers.{i}                                        decoder layers like the LLM's

Forward for one image at standard resolution (B batch, L text, N = grid**2 patches, D_v vision
width, D LLM width, Q = C*C compressed tokens):

    F = CLIP(image)                                (B, N, D_v)
    Z = Proj(Compressor(F)),  G = Proj(F)          (B, Q, D), (B, N, D)
    X = PreFusion([G; Z; text embeddings])          causal, over kept text only
    LLM input = text with the placeholder replaced by X at the Z positions, and every other kept
                text position replaced by its fused output

High resolution (`parts = N*N + 1`: row-major crops, then the global view) compresses the stitched
crop map and lets pre-fusion read [projected stitched crops; projected global view]. A video is a
(T, parts, 3, H, W) tensor: frames are encoded in chunks chosen by device, the LLM gets T*Q
tokens in frame order, and the fused text is the mean over frames (in float32).

Reference bugs fixed here (docs/compatibility.md): widths come from the config (F1); text
embeddings are not detached, so `embed_tokens` trains (F4); padding is excluded from pre-fusion
and the splice honours left padding (F5); inference never truncates the prompt (F6); video frames
are batched and keep their gradients (F7); pre-fusion works on transformers 5 (F8).
"""

from __future__ import annotations

import contextlib
import re
import sys

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel, PreTrainedModel
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.modeling_outputs import CausalLMOutputWithPast

from llavamini.model import checkpoint
from llavamini.model.compressor import QueryCompressor
from llavamini.model.configuration_llavamini import LlavaMiniConfig
from llavamini.model.modules import VISION_TOWER, key_prefix
from llavamini.model.packing import (
    Images,
    check_placeholders,
    prefusion_text_keep,
    splice_vision_tokens,
    visuals_per_sample,
)
from llavamini.model.prefusion import PreFusionLayers
from llavamini.model.reduction import TokenReduction, check_applicable
from llavamini.model.vision_encoder import VisionEncoderMixin

ENCODER_LAYERS = ["CLIPEncoderLayer", "SiglipEncoderLayer"]
"""Vision encoder blocks that device maps must not split (added to each family's own)."""


class LlavaMiniPreTrainedMixin:
    """What every LLaVA-Mini class adds to its backbone's `PreTrainedModel`."""

    # The tower may live outside the checkpoint (`mm_vision_tower`); `from_pretrained` loads it
    # from there and checks it is complete (`llavamini.model.checkpoint.load_checked`), so
    # transformers need not report it.
    _keys_to_ignore_on_load_missing = [f"^{re.escape(key_prefix(VISION_TOWER))}"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, QueryCompressor):
            module.init_queries()


class LlavaMiniModelMixin(VisionEncoderMixin, LlavaMiniPreTrainedMixin):
    """A backbone's base model (embeddings, decoder layers, norm, rotary embedding) plus the
    vision tower, projector, compressor and pre-fusion layers."""

    def __init__(self, config):
        super().__init__(config)
        if config.vision_config is None:
            raise ValueError(
                f"{type(config).__name__}.vision_config is unresolved (mm_vision_tower="
                f"{config.mm_vision_tower!r}): load with from_pretrained, or call "
                f"config.resolve_vision_config(checkpoint_dir) first."
            )
        config.validate_multimodal()
        self.build_vision_modules(config)
        if not isinstance(getattr(self, "rotary_emb", None), nn.Module):
            raise ValueError(
                f"{type(self).__name__}: the backbone has no shared rotary embedding "
                f"(`rotary_emb`), which pre-fusion needs; supported backbones share one (Llama, "
                f"Qwen2, Qwen3, Mistral, ...)."
            )
        self.prefusion_layers = PreFusionLayers(
            config, config.prefusion_layer_num, layer_class=self.decoder_layer_class()
        )
        self.llm_pruner = None
        self.post_init()

    def decoder_layer_class(self) -> type:
        """The backbone's decoder-layer class, which pre-fusion layers are made of: its first
        layer's, or with no LLM layer built (`num_hidden_layers=0`: the LLM runs elsewhere, see
        `LlavaMiniForCausalLMMixin.language_model_runner`) the `*DecoderLayer` class its
        `_no_split_modules` names, from the backbone's modeling module."""
        if len(self.layers):
            return type(self.layers[0])
        names = sorted(n for n in self._no_split_modules if n.endswith("DecoderLayer"))
        for base in type(self).__mro__:
            for name in names:
                layer_class = getattr(sys.modules[base.__module__], name, None)
                if isinstance(layer_class, type):
                    return layer_class
        raise ValueError(f"{type(self).__name__}: no decoder-layer class among {names}.")

    def set_token_reduction(self, reduction: TokenReduction | None) -> None:
        """Apply a training-free vision-token reduction (`llavamini.model.reduction`) from the
        next call on, or none (None). Raises `TokenReductionError` for an unknown method or a
        checkpoint with a compressor."""
        if self.llm_pruner is not None:
            self.llm_pruner.remove()
        self.llm_pruner, self.token_reduction = None, None
        if reduction is None:
            return
        method = check_applicable(reduction, self.config)
        if method.stage == "llm":
            self.llm_pruner = method.install(self.layers, reduction)
        self.token_reduction = reduction

    def embed_multimodal(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: Images,
        padding_side: str | None = None,
        return_vision_mask: bool = False,
    ) -> tuple:
        """Token ids with placeholders + images -> what the LLM receives.

        Args:
            input_ids: `(B, L)` with one `IMAGE_TOKEN_INDEX` per image or video.
            attention_mask: `(B, L)` or None (no padding).
            labels: `(B, L)` in training, else None.
            images: a `(B, parts, 3, H, W)` tensor (one image per sample, encoded as one batch),
                or a list of B items: a `(parts, 3, H, W)` image, a `(T, parts, 3, H, W)` video,
                None (text-only: no placeholder, no pre-fusion), or a list of images and videos
                for a sample with several placeholders (filled in order; the fused text is the
                mean over its visuals, as over a video's frames).
            padding_side: of the output; by default that of the input (left if any row starts
                with padding).
            return_vision_mask: also return the `(B, L')` mask of the vision positions.

        Returns:
            `inputs_embeds (B, L', D)`, `attention_mask (B, L')`, `labels (B, L')` or None,
            `position_ids (B, L')` (and `vision_mask (B, L')`): see `SplicedInputs`.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        images = self._to_vision_device(images)
        if padding_side is None:
            padding_side = "left" if bool((attention_mask[:, 0] == 0).any()) else "right"
        text_embeds = self.embed_tokens(input_ids.clamp(min=0))
        keep = prefusion_text_keep(input_ids, attention_mask, labels)
        visuals = visuals_per_sample(images)
        check_placeholders(input_ids, attention_mask, visuals)

        if isinstance(images, torch.Tensor):
            vision, text_embeds = self.encode_images(images, text_embeds, keep)
            vision_tokens = [[tokens] for tokens in vision]
        else:
            vision_tokens, fused = [], []
            for b, sample_visuals in enumerate(visuals):
                tokens, text = self.encode_sample(sample_visuals, text_embeds[b], keep[b])
                vision_tokens.append(tokens)
                fused.append(text)
            text_embeds = torch.stack(fused)

        max_length = self.config.tokenizer_model_max_length if labels is not None else None
        spliced = splice_vision_tokens(
            text_embeds, input_ids, attention_mask, labels, vision_tokens, padding_side, max_length
        )
        if self.llm_pruner is not None:
            per_image = self.vision_tower.tokens_per_image - self.vision_tower.drop_class_token
            self.llm_pruner.start(spliced.vision_mask, per_image)
        return spliced if return_vision_mask else spliced[:4]

    def _to_vision_device(self, images: Images) -> Images:
        """`images` (any form `embed_multimodal` takes) on the vision tower's device and in its
        dtype, as the processor returns float32 pixels on the CPU."""
        reference = next(self.vision_tower.parameters())
        if isinstance(images, torch.Tensor):
            return images.to(reference.device, reference.dtype)
        return [
            [v.to(reference.device, reference.dtype) for v in item]
            if isinstance(item, (list, tuple))
            else (item.to(reference.device, reference.dtype) if item is not None else None)
            for item in images
        ]


class LlavaMiniForCausalLMMixin(LlavaMiniPreTrainedMixin):
    """LLaVA-Mini for generation: `model(input_ids, attention_mask, images=..., labels=...)` and
    `model.generate(inputs=input_ids, images=..., ...)` (which returns only the new tokens).

    A family sets `multimodal_model_class`, its `LlavaMiniModelMixin` class.
    """

    multimodal_model_class: type

    language_model_runner = None
    """When set, what runs the LLM (decoder layers, final norm, `lm_head`) in place of this
    model's own: a callable `(inputs_embeds, attention_mask, cache, logits_to_keep) -> logits`
    (the embeddings from `embed_tokens` and the vision side, as always), such as
    `llavamini.model.llama_cpp.LlamaCppLanguageModel`, which `ModelSpec` sets for a quantized
    CPU load. Inference only: it keeps its own KV cache, bound to the `past_key_values` object
    of a generation."""

    def __init__(self, config):
        # The backbone's causal-LM __init__ would build its plain base model first.
        PreTrainedModel.__init__(self, config)
        self.model = self.multimodal_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        images: Images | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """As the backbone's `forward`, plus `images` (see `LlavaMiniModelMixin.embed_multimodal`).

        With images, the logits, labels and attention mask all follow the spliced sequence.
        """
        if images is not None and inputs_embeds is None:
            inputs_embeds, attention_mask, labels, position_ids = self.model.embed_multimodal(
                input_ids, attention_mask, labels, images
            )
            input_ids = None
        if self.language_model_runner is not None:
            if labels is not None:
                raise ValueError(
                    "This model's LLM runs outside torch (language_model_runner): it gives "
                    "logits, no loss. Train on a model loaded without --quantization."
                )
            if inputs_embeds is None:
                inputs_embeds = self.model.embed_tokens(input_ids)
            logits = self.language_model_runner(
                inputs_embeds, attention_mask, past_key_values, logits_to_keep
            )
            return CausalLMOutputWithPast(logits=logits, past_key_values=past_key_values)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def set_token_reduction(self, reduction: TokenReduction | None) -> None:
        """See `LlavaMiniModelMixin.set_token_reduction`."""
        self.model.set_token_reduction(reduction)

    @contextlib.contextmanager
    def token_reduction_applied(self, reduction: TokenReduction | None):
        """`reduction` (None: none) inside the block, the model's own setting after it."""
        previous = self.model.token_reduction
        self.set_token_reduction(reduction)
        try:
            yield self
        finally:
            self.set_token_reduction(previous)

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: Images | None = None,
        attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        token_reduction: TokenReduction | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Greedy or sampled generation from a prompt with placeholders; returns only new tokens.

        The prompt ids come as `inputs` or `input_ids` (so `generate(**processor(...))` works),
        with or without `images`. The prompt (with its images) is embedded once, left-padded,
        and handed to `GenerationMixin.generate` as `inputs_embeds`; decode steps are plain
        decoder steps with the KV cache.

        `token_reduction` applies a training-free reduction for this call only (see
        `set_token_reduction`, which applies one until changed).

        Runs under `torch.inference_mode` (under `torch.no_grad` with DeepSpeed ZeRO-3), so the
        returned tensors are inference tensors: clone them before changing them in place.
        """
        if token_reduction is not None:
            with self.token_reduction_applied(token_reduction):
                return self.generate(inputs, images, attention_mask, input_ids, **kwargs)
        # Inference mode skips autograd's version counters and view tracking: 5-8% of a decode
        # step on a CPU (docs/benchmarks.md). Not under ZeRO-3: parameters it gathers for good
        # here (the small, persistent ones) would become inference tensors training cannot use.
        context = torch.no_grad() if is_deepspeed_zero3_enabled() else torch.inference_mode()
        with context:
            return self._generate(inputs, images, attention_mask, input_ids, **kwargs)

    def _generate(self, inputs, images, attention_mask, input_ids, **kwargs) -> torch.LongTensor:
        if inputs is not None and input_ids is not None:
            raise ValueError("Pass the prompt ids as `inputs` or as `input_ids`, not both.")
        inputs = input_ids if inputs is None else inputs
        if inputs is None:
            return super().generate(attention_mask=attention_mask, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(inputs)
        if images is None:
            inputs_embeds = self.model.embed_tokens(inputs)
        else:
            inputs_embeds, attention_mask, _, _ = self.model.embed_multimodal(
                inputs, attention_mask, None, images, padding_side="left"
            )
        limit = self.config.max_position_embeddings
        new_tokens = kwargs.get("max_new_tokens") or 0
        if inputs_embeds.shape[1] + new_tokens > limit:
            raise ValueError(
                f"The prompt is {inputs_embeds.shape[1]} tokens long (vision tokens included); "
                f"with max_new_tokens={new_tokens} it exceeds the model's context of {limit} "
                f"tokens (max_position_embeddings)."
            )
        return super().generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, strict about keys, with the vision tower resolved
        offline: the loading policy of `llavamini.model.checkpoint` (`load_checked`).

        The tower's architecture and weights come from the checkpoint when it stores them
        (`model.vision_tower.vision_tower.*`), else from the `mm_vision_tower` folder (absolute
        or relative to the checkpoint) or the local HF cache. Any missing or unexpected key
        raises a `ValueError` listing them; pass `strict=False` to get the usual warning instead
        (to start training from a plain LLM, say).
        """
        return checkpoint.load_checked(
            super().from_pretrained, cls, pretrained_model_name_or_path, *model_args, **kwargs
        )


class LlavaMiniModel(LlavaMiniModelMixin, LlamaModel):
    """The Llama decoder plus the vision tower, projector, compressor and pre-fusion layers."""

    config_class = LlavaMiniConfig
    config: LlavaMiniConfig
    _no_split_modules = ["LlamaDecoderLayer", *ENCODER_LAYERS]


class LlavaMiniForCausalLM(LlavaMiniForCausalLMMixin, LlamaForCausalLM):
    """LLaVA-Mini on a Llama backbone (Vicuna, Llama-3.x): the released model's class."""

    config_class = LlavaMiniConfig
    config: LlavaMiniConfig
    multimodal_model_class = LlavaMiniModel
    _no_split_modules = ["LlamaDecoderLayer", *ENCODER_LAYERS]


LlavaMiniLlamaForCausalLM = LlavaMiniForCausalLM
"""The reference's class name (kept for `architectures` in released config.json files)."""
