"""`LlavaMiniTrainer`: the HF Trainer plus the modality sampler, a learning rate for the
multimodal modules, stage-aware and crash-safe saving, and the count of skipped bad samples.
Nothing else."""

from __future__ import annotations

import logging
import os
import shutil

import torch
from accelerate.utils import gather_object
from transformers import Trainer

from llavamini.data.dataset import SKIPPED_KEY
from llavamini.train.checkpointing import (
    TRAINER_STATE_FILE,
    checkpoint_name,
    mark_complete,
    publish_checkpoint,
    publish_files,
    remove_unfinished,
    rotate_checkpoints,
    unfinished_dir,
)
from llavamini.train.sampler import ModalityGroupedSampler
from llavamini.train.stages import ADAPTER_FILE, MULTIMODAL_PREFIXES, Stage, is_trainable
from llavamini.utils.atomic import atomic_write, fsync_tree

logger = logging.getLogger(__name__)


class LlavaMiniTrainer(Trainer):
    """Args (beyond `Trainer`'s): `stage`, the `Stage` being trained; `modality_lengths`, the
    dataset's signed lengths for the grouped sampler. `processing_class` is the run's
    `LlavaMiniProcessor`, saved with every full checkpoint (`processor_config.json` and the
    tokenizer), so `AutoProcessor` loads it.

    Checkpoints are crash-safe (`llavamini.train.checkpointing`): staged, completed, renamed.
    `skipped_samples` names the bad samples this process's batches left out (`on_bad_sample:
    skip`), wherever the DataLoader built them; `all_skipped_samples` gathers every rank's.
    """

    _staging_dir: str | None = None
    """While a checkpoint is saved: the hidden folder the Trainer writes it under."""

    def __init__(self, *args, stage: Stage, modality_lengths: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.modality_lengths = modality_lengths
        self.skipped_samples: list[str] = []

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
        # The collator reports the samples it left out; they are no input of the model.
        self.skipped_samples.extend(inputs.pop(SKIPPED_KEY, ()))
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
        with atomic_write(os.path.join(output_dir, ADAPTER_FILE), "wb") as file:
            torch.save(weights, file)
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

    def all_skipped_samples(self) -> list[str]:
        """The skipped samples of every rank (a collective: every rank must call it)."""
        return gather_object(self.skipped_samples)

    def _get_output_dir(self, trial) -> str:
        if self._staging_dir is not None:
            return self._staging_dir
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written by every rank under a hidden staging folder; once
        all are done, the saving rank marks it complete and renames it to `checkpoint-N`, then
        rotates old checkpoints (`save_total_limit`). Barriers keep the ranks in step, so no
        rank writes into a folder being renamed and none reads a checkpoint not yet complete."""
        run_dir = self._get_output_dir(trial)
        step = self.state.global_step
        staging = unfinished_dir(run_dir, step)
        if self.args.should_save:
            remove_unfinished(run_dir)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = os.path.join(staging, checkpoint_name(step))
            final = os.path.join(run_dir, checkpoint_name(step))
            if self.state.best_model_checkpoint == staged:
                # The Trainer recorded where it wrote this checkpoint; record where it will be.
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_FILE))
            mark_complete(staged, step)
            publish_checkpoint(staged, final)
            rotate_checkpoints(
                run_dir, self.args.save_total_limit, keep=(final, self.state.best_model_checkpoint)
            )
        self.accelerator.wait_for_everyone()

    def save_final_model(self, output_dir: str) -> None:
        """`save_model(output_dir)` and `trainer_state.json`, staged in a hidden folder and moved
        into `output_dir` file by file (`publish_files`: `config.json` last), so `output_dir`
        never holds a truncated file nor a model mixing two saves. Every rank must call it."""
        staging = os.path.join(output_dir, ".final.partial")
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self.save_model(staging)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            os.makedirs(staging, exist_ok=True)
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_FILE))
            fsync_tree(staging)
            publish_files(staging, output_dir)
        self.accelerator.wait_for_everyone()
