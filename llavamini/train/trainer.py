"""`LlavaMiniTrainer`: the HF Trainer plus the modality sampler, a learning rate for the
multimodal modules, and stage-aware saving. Nothing else."""

from __future__ import annotations

import logging
import os

import torch
from transformers import Trainer

from llavamini.train.sampler import ModalityGroupedSampler
from llavamini.train.stages import ADAPTER_FILE, MULTIMODAL_PREFIXES, Stage, is_trainable

logger = logging.getLogger(__name__)


class LlavaMiniTrainer(Trainer):
    """Args (beyond `Trainer`'s): `stage`, the `Stage` being trained; `modality_lengths`, the
    dataset's signed lengths for the grouped sampler. `processing_class` is the run's
    `LlavaMiniProcessor`, saved with every full checkpoint (`processor_config.json` and the
    tokenizer), so `AutoProcessor` loads it."""

    def __init__(self, *args, stage: Stage, modality_lengths: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.modality_lengths = modality_lengths

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        megabatch = (
            self.args.per_device_train_batch_size
            * self.args.world_size
            * self.args.gradient_accumulation_steps
        )
        return ModalityGroupedSampler(self.modality_lengths, megabatch, seed=self.args.seed)

    def create_optimizer(self, model=None):
        """AdamW groups: {decay, no decay} x {LLM lr, `mm_projector_lr` for the multimodal
        modules} (the reference matched the stale name 'zip' and never applied it to the
        compressor or pre-fusion)."""
        if self.optimizer is not None or self.args.mm_projector_lr is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                key = (name in decay, is_trainable(name, MULTIMODAL_PREFIXES))
                groups.setdefault(key, []).append(parameter)
        parameter_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if has_decay else 0.0,
                **({"lr": self.args.mm_projector_lr} if multimodal else {}),
            }
            for (has_decay, multimodal), params in groups.items()
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if inputs.get("empty_batch"):
            # Every sample of this batch was skipped as bad: a zero loss that touches every
            # trainable parameter keeps data-parallel ranks in step.
            loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, None) if return_outputs else loss
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.stage.saves == "adapter":
            self._save_adapter(output_dir, state_dict)
        else:
            super()._save(output_dir, state_dict)

    def _save_adapter(self, output_dir: str, state_dict: dict | None) -> None:
        """Only the trainable weights, as `mm_projector.bin` (reference-compatible), + config."""
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        weights = {
            name: tensor.detach().cpu()
            for name, tensor in state_dict.items()
            if is_trainable(name, self.stage.trainable)
        }
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        torch.save(weights, os.path.join(output_dir, ADAPTER_FILE))
        self.accelerator.unwrap_model(self.model).config.save_pretrained(output_dir)
        logger.info("Saved %d trainable tensors to %s", len(weights), output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        adapter = os.path.join(resume_from_checkpoint, ADAPTER_FILE)
        if self.stage.saves != "adapter" or not os.path.isfile(adapter):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        weights = torch.load(adapter, map_location="cpu", weights_only=True)
        result = model.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{adapter}: unexpected keys {result.unexpected_keys[:20]}.")
        logger.info("Resumed the trainable weights from %s", adapter)
