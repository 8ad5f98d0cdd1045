"""Stage 1 then stage 2 through the real entry point, resume, LoRA, and the stage table."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from llavamini import LlavaMiniForCausalLM
from llavamini.train.stages import STAGES, apply_trainable
from llavamini.train.train import train
from tests.conftest import make_model
from tests.train.conftest import run_args


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(scope="module")
def stage1(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    trainer = train(run_args(assets, "tiny_stage1.yaml", out, "--num_train_epochs", "3"))
    return out, trainer


def test_stage1_trains_the_projector_and_writes_mm_projector_bin(stage1):
    out, trainer = stage1
    curve = losses(trainer)
    # Only the projector learns, in front of a random LLM, so the loss falls a little: measured
    # 6.11 -> 6.02 in 12 steps (batch-to-batch noise of the untrained model: about 0.02).
    assert curve[-1] < curve[0] - 0.05, curve
    weights = torch.load(out / "mm_projector.bin", weights_only=True)
    assert sorted(weights) == [
        "model.mm_projector.0.bias",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.bias",
        "model.mm_projector.2.weight",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["compressor_type"] == "none" and config["prefusion_layer_num"] == 0
    assert (out / "run_config.yaml").is_file()


def test_stage2_starts_from_stage1_and_its_checkpoint_answers(assets, stage1, tmp_path):
    stage1_out, _ = stage1
    adapter = str(stage1_out / "mm_projector.bin")
    trainer = train(
        run_args(assets, "tiny.yaml", tmp_path, "--pretrain_mm_mlp_adapter", adapter,
                 "--num_train_epochs", "2", "--max_steps", "1")
    )  # fmt: skip
    # One step at lr 1e-3 moves the projector only slightly from stage 1's weights.
    stage1_weights = torch.load(adapter, weights_only=True)
    model = trainer.model
    start = stage1_weights["model.mm_projector.0.weight"]
    assert torch.allclose(model.model.mm_projector[0].weight.detach(), start, atol=5e-3)

    trainer = train(
        run_args(assets, "tiny.yaml", tmp_path, "--pretrain_mm_mlp_adapter", adapter,
                 "--num_train_epochs", "4")
    )  # fmt: skip
    curve = losses(trainer)
    assert curve[-1] < curve[0] - 0.3, curve
    loaded = LlavaMiniForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.compressor_type == "query"
    from transformers import AutoProcessor

    from llavamini.inference import generate
    from llavamini.model.loading import ModelSpec

    assert (tmp_path / "processor_config.json").is_file()  # written by `llavamini train`
    processor = AutoProcessor.from_pretrained(str(tmp_path))
    assert processor.conv_mode == trainer.processing_class.conv_mode == "llava_llama_3_1"
    bundle = ModelSpec(str(tmp_path), device="cpu").load()
    image = assets["captions"].replace("captions.json", "images/000000.png")
    content = [{"type": "image", "path": image}, {"type": "text", "text": "How many shapes?"}]
    inputs = bundle.processor.apply_chat_template(
        [{"role": "user", "content": content}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    answer = generate(bundle, inputs)
    assert isinstance(answer[0], str)


def test_finetuning_a_llava_mini_checkpoint_keeps_its_modules(assets, tmp_path):
    base = tmp_path / "base"
    train(run_args(assets, "tiny.yaml", base, "--max_steps", "1"))
    before = load_file(base / "model.safetensors")
    trainer = train(
        run_args(assets, "tiny.yaml", tmp_path / "again", "--model_name_or_path", str(base),
                 "--max_steps", "1", "--learning_rate", "0")
    )  # fmt: skip
    after = trainer.model.state_dict()
    for key in ("model.compressor.query", "model.mm_projector.0.weight",
                "model.prefusion_layers.0.mlp.up_proj.weight"):  # fmt: skip
        assert torch.equal(before[key], after[key]), key


def test_resume_after_a_kill_reaches_the_same_losses(assets, tmp_path):
    common = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
              "--per_device_train_batch_size", "4", "--lr_scheduler_type", "constant")  # fmt: skip
    whole = losses(train(run_args(assets, "tiny.yaml", tmp_path / "whole", *common)))

    class Kill(Exception):
        pass

    from transformers import TrainerCallback

    class KillAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Kill

    import llavamini.train.train as train_module

    original = train_module.LlavaMiniTrainer.__init__

    def with_killer(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(KillAtStep3())

    killed = tmp_path / "killed"
    train_module.LlavaMiniTrainer.__init__ = with_killer
    try:
        with pytest.raises(Kill):
            train(run_args(assets, "tiny.yaml", killed, *common))
    finally:
        train_module.LlavaMiniTrainer.__init__ = original
    assert (killed / "checkpoint-2").is_dir() and not (killed / "checkpoint-4").exists()
    resumed = train(
        run_args(assets, "tiny.yaml", killed, *common, "--resume_from_checkpoint", "auto")
    )
    assert resumed.state.global_step == 4
    torch.testing.assert_close(losses(resumed)[-2:], whole[-2:], rtol=1e-4, atol=1e-4)


def test_lora_run_saves_a_merged_checkpoint(assets, tmp_path):
    train(
        run_args(assets, "tiny.yaml", tmp_path, "--lora_enable", "true", "--lora_r", "4",
                 "--max_steps", "3")
    )  # fmt: skip
    base = load_file(f"{assets['llm']}/model.safetensors")
    merged = LlavaMiniForCausalLM.from_pretrained(tmp_path).state_dict()
    assert not any("lora" in key for key in merged)
    # LoRA adapted the LLM's projections and was merged into them; the embeddings stayed frozen.
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


@pytest.mark.parametrize(
    ("stage", "expected"),
    [
        ("pretrain", {"model.mm_projector"}),
        ("finetune", {"model.mm_projector", "model.compressor", "model.prefusion_layers",
                      "model.embed_tokens", "model.layers", "model.norm", "lm_head"}),
    ],
)  # fmt: skip
def test_trainable_parameters_are_exactly_the_stage_table(stage, expected):
    model = make_model(**STAGES[stage].architecture)
    counts = apply_trainable(model, STAGES[stage].trainable)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    modules = {
        ".".join(n.split(".")[:2]) if n.startswith("model.") else n.split(".")[0] for n in trainable
    }
    assert modules == expected
    assert not any(n.startswith("model.vision_tower") for n in trainable)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_adding_compression_and_prefusion_to_a_llava_1_5_mode_checkpoint(assets, tmp_path):
    """The quickstart's path: stage 1 in LLaVA-1.5 mode, stage 2 adds the LLaVA-Mini modules."""
    full = tmp_path / "full"
    train(run_args(assets, "tiny.yaml", full, "--max_steps", "1", "--compressor_type", "none",
                   "--prefusion_layer_num", "0", "--unfreeze_mm_vision_tower", "true"))  # fmt: skip
    trainer = train(
        run_args(assets, "tiny.yaml", tmp_path / "mini", "--model_name_or_path", str(full),
                 "--max_steps", "1", "--learning_rate", "0", "--mm_projector_lr", "0",
                 "--compressor_type", "query", "--prefusion_layer_num", "2",
                 "--prefusion_init", "llm")
    )  # fmt: skip
    model = trainer.model.model
    assert model.compressor is not None and len(model.prefusion_layers) == 2
    for i in range(2):
        assert torch.equal(
            model.prefusion_layers[i].mlp.up_proj.weight, model.layers[i].mlp.up_proj.weight
        )
    saved = load_file(full / "model.safetensors")
    assert torch.equal(saved["model.mm_projector.0.weight"], model.mm_projector[0].weight)


def test_a_checkpoint_missing_a_module_is_not_silently_reinitialised(assets, tmp_path):
    base = tmp_path / "base"
    train(run_args(assets, "tiny.yaml", base, "--max_steps", "1"))
    weights = load_file(base / "model.safetensors")
    from safetensors.torch import save_file

    kept = {k: v for k, v in weights.items() if "compressor" not in k}
    save_file(kept, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['model\.compressor\."):
        train(run_args(assets, "tiny.yaml", tmp_path / "next", "--model_name_or_path", str(base),
                       "--max_steps", "1"))  # fmt: skip


def test_vision_tower_trains_only_when_unfrozen(assets, tmp_path):
    before = load_file(f"{assets['clip']}/model.safetensors")["encoder.layers.0.mlp.fc1.weight"]
    for flag, changes in (("false", False), ("true", True)):
        trainer = train(run_args(assets, "tiny.yaml", tmp_path / flag, "--max_steps", "2",
                                 "--unfreeze_mm_vision_tower", flag))  # fmt: skip
        clip = trainer.model.model.vision_tower.encoder
        after = clip.encoder.layers[0].mlp.fc1.weight.detach()
        assert (not torch.equal(before, after)) == changes, flag


def test_time_budget_stops_training(assets, tmp_path):
    trainer = train(run_args(assets, "tiny.yaml", tmp_path, "--max_steps", "100000",
                             "--max_train_minutes", "0.0001"))  # fmt: skip
    assert trainer.state.global_step == 1


def test_time_budget_bar_counts_seconds_of_the_budget(assets, tmp_path):
    """With a budget and progress bars on, the bar's total is the budget in seconds (not
    `max_steps`), and the step is shown beside it."""
    from transformers.trainer_callback import ProgressCallback, TrainerState

    from llavamini.train.train import TrainingProgress

    trainer = train(run_args(assets, "tiny.yaml", tmp_path, "--max_steps", "2",
                             "--max_train_minutes", "1.5", "--disable_tqdm", "false"))  # fmt: skip
    callbacks = trainer.callback_handler.callbacks
    bars = [c for c in callbacks if isinstance(c, ProgressCallback)]
    assert len(bars) == 1 and isinstance(bars[0], TrainingProgress)
    progress, state = TrainingProgress(1.5), TrainerState(train_batch_size=4)
    progress.on_train_begin(trainer.args, state, None)
    state.global_step = 3
    progress.on_step_end(trainer.args, state, None)
    bar = progress.training_bar
    assert bar.total == 90 and bar.n <= 1 and bar.postfix.startswith("step=3, samples_s=")
    bar.close()


def test_console_shows_one_bar_and_the_log_goes_to_a_file(assets, tmp_path, capsys):
    """No raw log dicts on the console: the bar carries step, loss and samples/s, and every
    log record is a JSON line in the output folder."""
    from llavamini.train.train import TRAINER_LOG_FILE

    train(run_args(assets, "tiny.yaml", tmp_path, "--max_steps", "3", "--logging_steps", "1",
                   "--disable_tqdm", "false"))  # fmt: skip
    captured = capsys.readouterr()
    assert "{'loss'" not in captured.out + captured.err
    assert "'train_runtime'" not in captured.out + captured.err
    assert "loss=" in captured.err and "samples_s=" in captured.err
    with open(tmp_path / TRAINER_LOG_FILE, encoding="utf-8") as file:
        records = [json.loads(line) for line in file]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert "train_runtime" in records[-1]


def test_stage2_on_a_qwen2_backbone_with_siglip(tmp_path):
    from transformers import AutoModelForCausalLM

    from llavamini.apps.tiny import build_tiny_assets

    qwen = build_tiny_assets(str(tmp_path / "assets"), image_size=56, num_train=16, num_val=4,
                             backbone="qwen2", encoder="siglip")  # fmt: skip
    trainer = train(run_args(qwen, "tiny.yaml", tmp_path / "out", "--max_steps", "3"))
    assert len(losses(trainer)) == 3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "LlavaMiniQwen2ForCausalLM"
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert type(model.model.prefusion_layers[0]).__name__ == "Qwen2DecoderLayer"


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="bitsandbytes is not installed (the qlora extra: pip install -c constraints.txt "
    "-e .[qlora])",
)
def test_qlora_trains_adapters_on_a_4bit_llm_and_saves_a_merged_checkpoint(assets, tmp_path):
    trainer = train(
        run_args(assets, "tiny.yaml", tmp_path, "--lora_enable", "true", "--lora_r", "4",
                 "--bits", "4", "--max_steps", "3")
    )  # fmt: skip
    assert len(losses(trainer)) == 3
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    base = load_file(f"{assets['llm']}/model.safetensors")
    merged = LlavaMiniForCausalLM.from_pretrained(tmp_path).state_dict()
    assert merged["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32  # 16-bit+
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_bits_need_lora(assets, tmp_path):
    with pytest.raises(ValueError, match="bits=4 \\(QLoRA\\) trains LoRA adapters"):
        train(run_args(assets, "tiny.yaml", tmp_path, "--bits", "4"))


def test_new_modules_are_not_reported_as_a_missing_key_table(assets, tmp_path):
    """transformers' table of missing keys would list every new projector weight; the build
    checks them itself (test above) and logs the new modules once."""
    import logging

    transformers_logger = logging.getLogger("transformers.modeling_utils")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    transformers_logger.addHandler(handler)
    try:
        train(run_args(assets, "tiny_stage1.yaml", tmp_path / "out", "--max_steps", "1"))
    finally:
        transformers_logger.removeHandler(handler)
    assert not [message for message in seen if "LOAD REPORT" in message]
    assert not transformers_logger.filters
