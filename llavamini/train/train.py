"""`llavamini train RECIPE.yaml [--key value ...]`: one training run of one stage.

Launch on one machine with `python -m llavamini.train ...`, on several GPUs or nodes with
`torchrun ... -m llavamini.train ...` or the `deepspeed` launcher (scripts/train/*.sh).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
import time

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, TrainerCallback, set_seed
from transformers.trainer_callback import ProgressCallback

from llavamini.conversation import get_template
from llavamini.data.dataset import DataCollator, SupervisedDataset
from llavamini.data.mixture import load_records
from llavamini.flags import start_process
from llavamini.model.checkpoint import resolve_checkpoint_dir
from llavamini.model.image_processors import load_image_processor
from llavamini.model.modules import COMPRESSOR, LLM_LAYERS, PREFUSION, PROJECTOR, module_name
from llavamini.model.processing_llavamini import LlavaMiniProcessor
from llavamini.train.arguments import parse_args, save_run_config
from llavamini.train.checkpointing import resolve_resume
from llavamini.train.model_setup import build_model
from llavamini.train.stages import (
    ADAPTER_FILE,
    Stage,
    apply_trainable,
    get_stage,
    parameter_counts,
)
from llavamini.train.trainer import LlavaMiniTrainer
from llavamini.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<pad>", "<unk>")
"""Pad tokens tried in order when the tokenizer has none (Llama-3.1's first, as the reference)."""

RUN_CONFIG_FILE = "run_config.yaml"
TRAINER_LOG_FILE = "trainer_log.jsonl"
"""Every log record of a run, one JSON object a line (the console shows only the bar)."""
SKIPPED_FILE = "skipped_samples.json"
"""Written at the end of a run that skipped bad samples: their names and problems."""
SKIPPED_LOGGED = 20
"""How many skipped samples the end-of-run warning names (the file has them all)."""


def load_tokenizer(path: str, model_max_length: int):
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=model_max_length)
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        candidate = next((t for t in PAD_CANDIDATES if t in vocab), None)
        if candidate is None:
            raise ValueError(
                f"The tokenizer of {path} has no pad token and none of {PAD_CANDIDATES}."
            )
        tokenizer.pad_token = candidate
    return tokenizer


def apply_lora(model, training_args):
    """LoRA on the LLM's linear layers (peft); the multimodal modules train fully."""
    from peft import LoraConfig, get_peft_model  # optional (the `train` extra)

    config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        target_modules=re.escape(module_name(LLM_LAYERS)) + r"\.\d+\.(self_attn|mlp)\.\w+_proj",
        # peft wraps modules, not ModuleLists: name each pre-fusion layer.
        modules_to_save=[PROJECTOR, COMPRESSOR]
        + [f"{PREFUSION}.{i}" for i in range(model.config.prefusion_layer_num)],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class TimeBudget(TrainerCallback):
    """Stops training once `minutes` of wall-clock time have passed since it began."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start >= self.seconds:
            logger.info(
                "Time budget of %.1f min reached at step %d", self.seconds / 60, state.global_step
            )
            control.should_training_stop = True


class TrainingProgress(ProgressCallback):
    """The console of a run: one bar, with the step, the latest loss and samples per second
    beside it; every log record (losses, learning rate, the end-of-run summary) goes as a JSON
    line to `<output_dir>/TRAINER_LOG_FILE` instead of the console.

    With a time budget (`minutes`), the bar counts the budget's seconds rather than `max_steps`
    (under a budget, a bound no run reaches, with an ETA of hours).
    """

    def __init__(self, minutes: float | None = None):
        super().__init__()
        self.seconds = minutes * 60 if minutes is not None else None
        self.start = None
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.current_step = state.global_step
        self.first_step = state.global_step
        if not state.is_world_process_zero:
            return
        if self.seconds is None:
            self.training_bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
        else:
            self.training_bar = tqdm(
                total=round(self.seconds),
                desc="time budget",
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s{postfix}",
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            elapsed = time.perf_counter() - self.start
            if self.seconds is None:
                self.training_bar.update(state.global_step - self.current_step)
            else:
                self.training_bar.n = round(min(elapsed, self.seconds))
            samples = (state.global_step - self.first_step) * state.train_batch_size
            samples *= args.gradient_accumulation_steps * args.world_size
            self.postfix.update(step=str(state.global_step), samples_s=f"{samples / elapsed:.1f}")
            self.training_bar.set_postfix(self.postfix)
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        record = {"step": state.global_step, **(logs or {})}
        with open(os.path.join(args.output_dir, TRAINER_LOG_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if "loss" in record and self.training_bar is not None:
            self.postfix["loss"] = f"{float(record['loss']):.4g}"
            self.training_bar.set_postfix(self.postfix)


def train(argv: list[str]) -> LlavaMiniTrainer:
    """Run one stage from its flags (`parse_args`); returns the trainer after saving."""
    model_args, data_args, training_args = parse_args(argv)
    set_seed(training_args.seed)
    stage = get_stage(model_args.stage)
    if training_args.should_save:
        save_run_config(
            os.path.join(training_args.output_dir, RUN_CONFIG_FILE),
            model_args,
            data_args,
            training_args,
        )
    if training_args.deepspeed:
        import deepspeed  # optional (the `train` extra), and slow to import

        # ZeRO-3 partitions the model while from_pretrained builds it, reading the world size
        # from deepspeed.comm, which must be up by then.
        deepspeed.init_distributed()
    tokenizer = load_tokenizer(model_args.model_name_or_path, training_args.model_max_length)
    model = build_model(model_args, data_args, training_args, stage)
    processor = LlavaMiniProcessor.from_config(
        load_image_processor(resolve_checkpoint_dir(model_args.model_name_or_path), model.config),
        tokenizer,
        model.config,
        conv_mode=model_args.version,
        video_fps=data_args.video_fps,
        video_max_frames=data_args.video_max_frames,
    )
    model = set_trainable(model, stage, model_args, training_args)
    trainer = build_trainer(model, processor, stage, model_args, data_args, training_args)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer.train(resume_from_checkpoint=resume)
    finish(trainer, model_args, data_args, training_args)
    report_skipped(trainer.all_skipped_samples(), training_args)
    return trainer


def set_trainable(model, stage: Stage, model_args, training_args):
    """The stage's trainable modules, or LoRA (QLoRA with `bits` < 16) on the LLM; returns the
    model to train (peft wraps it)."""
    if training_args.lora_enable:
        if stage.saves == "adapter":
            raise ValueError(f"lora_enable: stage {model_args.stage!r} does not train the LLM.")
        if training_args.bits < 16:
            from peft import prepare_model_for_kbit_training  # optional (the `train` extra)

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=training_args.activation_checkpointing
            )
        # peft freezes the base model and trains the LoRA weights and `modules_to_save`.
        model = apply_lora(model, training_args)
        counts = parameter_counts(model)
    else:
        counts = apply_trainable(model, stage.trainable, model_args.unfreeze_mm_vision_tower)
    logger.info("Stage %s: %s parameters", model_args.stage, counts)
    return model


def build_trainer(
    model, processor: LlavaMiniProcessor, stage: Stage, model_args, data_args, training_args
) -> LlavaMiniTrainer:
    """The trainer over the run's data, with the time budget and the console bar."""
    records = load_records(data_args.data_path, data_args.image_folder, data_args.mixture_seed)
    dataset = SupervisedDataset(
        records=records,
        processor=processor,
        template=get_template(model_args.version),
        model_config=model.config,
        max_length=training_args.model_max_length,
        on_bad_sample=data_args.on_bad_sample,
    )
    trainer = LlavaMiniTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        stage=stage,
        modality_lengths=dataset.modality_lengths(),
    )
    if training_args.max_train_minutes is not None:
        trainer.add_callback(TimeBudget(training_args.max_train_minutes))
    if not training_args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(TrainingProgress(training_args.max_train_minutes))
    return trainer


def report_skipped(skipped: list[str], training_args) -> None:
    """Name the bad samples the run skipped (all ranks, all DataLoader workers, since the run
    started or resumed): a warning with the first few, `<output_dir>/skipped_samples.json` with
    all of them."""
    if not skipped or not training_args.should_save:
        return
    path = os.path.join(training_args.output_dir, SKIPPED_FILE)
    with atomic_write(path) as file:
        json.dump(skipped, file, indent=1)
    shown = "; ".join(skipped[:SKIPPED_LOGGED])
    more = f"; and {len(skipped) - SKIPPED_LOGGED} more" if len(skipped) > SKIPPED_LOGGED else ""
    logger.warning(
        "Skipped %d bad samples (on_bad_sample: skip; all listed in %s): %s%s",
        len(skipped),
        path,
        shown,
        more,
    )


def finish(trainer: LlavaMiniTrainer, model_args, data_args, training_args) -> None:
    """Save the final weights: `mm_projector.bin` for an adapter stage, else a full checkpoint
    (LoRA merged into the LLM) that `from_pretrained` loads.

    QLoRA adapters are merged into a 16-bit copy of the base (merging into 4/8-bit weights would
    lose precision); the adapter itself is kept in `<output_dir>/adapter`.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if training_args.lora_enable and training_args.bits < 16:
        model = merge_into_16bit_base(model, model_args, data_args, training_args, trainer.stage)
        trainer.model = model
    elif training_args.lora_enable:
        model = model.merge_and_unload()
        trainer.model = model
    model.config.use_cache = True
    trainer.save_final_model(training_args.output_dir)
    if trainer.stage.saves == "adapter" and training_args.should_save:
        logger.info("Stage output: %s", os.path.join(training_args.output_dir, ADAPTER_FILE))


def merge_into_16bit_base(peft_model, model_args, data_args, training_args, stage):
    """Save the QLoRA adapter, rebuild the base unquantized, load the adapter onto it, merge."""
    from peft import PeftModel  # optional (the `train` extra)

    adapter_dir = os.path.join(training_args.output_dir, "adapter")
    peft_model.save_pretrained(adapter_dir)
    unquantized = copy.copy(training_args)  # not dataclasses.replace: no second __post_init__
    unquantized.bits = 16
    base = build_model(model_args, data_args, unquantized, stage)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    logger.info("Merged the QLoRA adapter (%s) into a 16-bit copy of the base", adapter_dir)
    return merged


def main(argv: list[str] | None = None) -> None:
    start_process()
    train(sys.argv[1:] if argv is None else argv)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Without this, ZeRO-3 runs sometimes abort at interpreter exit.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
