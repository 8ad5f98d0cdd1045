"""`llavamini quickstart`: train, evaluate and chat with a tiny LLaVA-Mini in minutes, offline.

Everything goes through the real entry points with small configs: the synthetic shapes data
(`llavamini.apps.synthetic`) is written to playground/data/synthetic/, a tiny Llama, CLIP-shaped
tower and tokenizer are built, stage 1 (`configs/train/quickstart_stage1.yaml`) and stage 2
(`quickstart_stage2.yaml`) run through `llavamini train`, the held-out split is scored through
`llavamini eval` (task `synthetic`), and the final checkpoint answers questions about a freshly
drawn image through the chat session. `--ablation` trains the paper's comparison in miniature
from one shared stage 1. Sizes follow shared/docs/quickstart-feasibility.md: 112 px images (an
8 x 8 grid, 64 tokens), because at 336 px a 2-core CPU needs about half an hour per stage.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from importlib import resources

from transformers.utils import logging as transformers_logging

from llavamini.analysis.compression import compression_attention, plot_compression
from llavamini.apps import synthetic
from llavamini.apps.quickstart_report import plot_results, summary_table
from llavamini.apps.tiny import build_tiny_assets
from llavamini.bench.flops import count_flops
from llavamini.eval.arguments import TaskFiles
from llavamini.eval.cli import RunOptions, ScoreOptions, compute_score
from llavamini.eval.cli import run as run_evaluation
from llavamini.flags import check_fields
from llavamini.inference import GenerationSettings, generate
from llavamini.model import LlavaMiniConfig
from llavamini.model.loading import ModelSpec, load_pretrained
from llavamini.serve.session import ChatSession, resolve_template
from llavamini.train.train import train

logger = logging.getLogger(__name__)

CONFIGS = resources.files("llavamini").joinpath("configs", "train")
"""The quickstart's recipes, shipped in the package (also `configs/train/` in the repository)."""

QUICKSTART_LLM = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4,
)  # fmt: skip
QUICKSTART_VISION = dict(intermediate_size=256)


@dataclass(frozen=True)
class Variant:
    label: str
    flags: tuple[str, ...]


VARIANTS = {
    "all-tokens": Variant(
        "LLaVA-1.5 mode (all tokens)", ("--compressor_type", "none", "--prefusion_layer_num", "0")
    ),
    "one-token": Variant(
        "1 token, no pre-fusion", ("--compressor_type", "query", "--prefusion_layer_num", "0")
    ),
    "one-token-prefusion": Variant(
        "1 token + pre-fusion", ("--compressor_type", "query", "--prefusion_layer_num", "2")
    ),
    "pooling-prefusion": Variant(
        "1 pooled token + pre-fusion",
        ("--compressor_type", "avg_pool", "--prefusion_layer_num", "2"),
    ),
}
MAIN_VARIANT = "one-token-prefusion"
FLOPS_NOTE = (
    "FLOPs: here the 2 pre-fusion layers are as deep as the whole 2-layer LLM, so 1 token +\n"
    "pre-fusion costs more than all tokens. The paper's saving (-77%) needs an LLM much deeper\n"
    "than the pre-fusion (32 against 4 layers): `llavamini bench` counts it at real scale."
)
ABLATION = ("all-tokens", "one-token", "one-token-prefusion")


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one quickstart run."""

    image_size: int = 112
    num_train: int = 20000
    num_val: int = 500
    stage1_minutes: float = 3.0
    stage2_minutes: float = 2.5
    max_steps: int | None = None  # smoke runs: a few steps instead of a time budget
    latency_questions: int = 20
    seed: int = 0
    variants: tuple[str, ...] = field(default=(MAIN_VARIANT,))


def check_image_size(value: int) -> None:
    """An image side that the 14-px patches tile exactly, at least 2 patches."""
    if value < 28 or value % 14:
        raise ValueError(
            f"expected a multiple of the 14-px patch size, at least 28 (112, 224, 336), got {value}"
        )


def check_minutes(value: float) -> None:
    """Minutes of a time budget: > 0."""
    if not value > 0:
        raise ValueError(f"expected minutes > 0, got {value}")


@dataclass(frozen=True)
class QuickstartOptions:
    """What the quickstart trains, and where it writes.

    Attributes:
        output_dir: checkpoints, answers, figures and results.json.
        data_dir: the synthetic data set.
        ablation: also train LLaVA-1.5 mode and 1 token without pre-fusion, and plot them.
        with_pooling: with `ablation`, also 1 pooled token + pre-fusion.
        image_size: image side in pixels (a multiple of 14; 336 is the paper's, for a GPU).
        stage1_minutes, stage2_minutes: time budgets (stage 2 per variant; None: 2.5, or 1.75
            with `ablation`).
        seed: data, initialisation and training.
        smoke: a few steps at the smallest sizes (seconds).
    """

    output_dir: str = os.path.join("outputs", "quickstart")
    data_dir: str = os.path.join("playground", "data", "synthetic")
    ablation: bool = field(
        default=False,
        metadata={
            "help": "also train LLaVA-1.5 mode and 1 token without pre-fusion, and plot them"
        },
    )
    with_pooling: bool = field(default=False, metadata={"help": "ablation: add avg pooling"})
    image_size: int = field(
        default=112, metadata={"check": check_image_size, "help": "336 is the paper's (GPU)"}
    )
    stage1_minutes: float = field(default=3.0, metadata={"check": check_minutes})
    stage2_minutes: float | None = field(
        default=None,
        metadata={
            "check": check_minutes,
            "help": "per variant (default 2.5, or 1.75 with --ablation)",
        },
    )
    seed: int = field(default=0, metadata={"help": "data, initialisation and training"})
    smoke: bool = field(default=False, metadata={"help": "a few steps only (seconds)"})

    def __post_init__(self):
        check_fields(self)

    def plan(self) -> Plan:
        variants = ABLATION + (("pooling-prefusion",) if self.with_pooling else ())
        if not self.ablation:
            variants = (MAIN_VARIANT,)
        if self.smoke:
            return Plan(num_train=48, num_val=16, stage1_minutes=1, stage2_minutes=1, max_steps=2,
                        latency_questions=2, seed=self.seed, variants=variants)  # fmt: skip
        stage2 = self.stage2_minutes or (1.75 if self.ablation else 2.5)
        return Plan(image_size=self.image_size, stage1_minutes=self.stage1_minutes,
                    stage2_minutes=stage2, seed=self.seed, variants=variants)  # fmt: skip


def train_run(recipe: str, output_dir: str, flags: list[str], plan: Plan, minutes: float):
    """`llavamini train RECIPE ...` in this process; returns the trainer."""
    budget = ["--max_steps", str(plan.max_steps)] if plan.max_steps else []
    argv = [str(CONFIGS / recipe), *flags, "--output_dir", output_dir,
            "--max_train_minutes", str(minutes), "--seed", str(plan.seed), *budget]  # fmt: skip
    return train(argv)


def evaluate(model_dir: str, data: dict, answers_file: str) -> dict:
    """`llavamini eval run synthetic` then `eval score`; returns the score."""
    if os.path.exists(answers_file):
        os.remove(answers_file)  # a fresh model: its answers must not resume stale ones
    questions = data["val_questions"]
    files = TaskFiles(questions=questions, visual_folder=os.path.dirname(questions))
    options = RunOptions("synthetic", answers_file=answers_file, batch_size=50)
    run_evaluation(options, ModelSpec(model_dir), files=files)
    return compute_score(ScoreOptions("synthetic", answers=answers_file), files)


def answer_latency(model_dir: str, data: dict, count: int) -> float:
    """Median milliseconds to answer one held-out question alone (batch of one, greedy)."""
    loaded = load_pretrained(model_dir)
    folder = os.path.dirname(data["val_questions"])
    with open(data["val_questions"], encoding="utf-8") as f:
        questions = [json.loads(line) for line in f][:count]
    times = []
    for question in questions[:1] + questions:  # the first call warms up
        image = {"type": "image", "path": os.path.join(folder, question["image"])}
        text = {"type": "text", "text": question["text"]}
        messages = [{"role": "user", "content": [image, text]}]
        inputs = loaded.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        start = time.perf_counter()
        generate(loaded, inputs, GenerationSettings(max_new_tokens=8))
        times.append(1000 * (time.perf_counter() - start))
    times = times[1:]
    return sorted(times)[len(times) // 2]


def flops_per_sample(model_dir: str, text_tokens: int) -> int:
    """Prefill FLOPs of one question (vision tower to LLM), analytic (`llavamini.bench`)."""
    return count_flops(LlavaMiniConfig.from_pretrained(model_dir), text_tokens)["prefill_total"]


def losses(trainer) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


def chat_about_a_fresh_image(model_dir: str, output_dir: str, plan: Plan) -> list[dict]:
    """Draw a scene no split contains, ask the trained model about it, return Q, A and truth."""
    rng = random.Random(plan.seed + 10_000)
    scene = synthetic.random_scene(rng)
    image_path = os.path.join(output_dir, "fresh_image.png")
    synthetic.draw_scene(scene, plan.image_size, rng).save(image_path)
    loaded = load_pretrained(model_dir)
    settings = GenerationSettings(max_new_tokens=16)  # the answers are a word or two
    session = ChatSession(loaded, resolve_template(None, loaded.processor), settings)
    turns = []
    for kind in ("colour", "count", "shape"):
        question, truth = synthetic.ask(scene, kind, rng)
        session.reset()
        session.attach(image_path)
        reply = session.ask(f"{question}\n{synthetic.SHORT_ANSWER}")
        turns.append({"question": question, "answer": reply.text, "truth": truth})
    return turns


def build_data(plan: Plan, options: QuickstartOptions) -> dict:
    """The tiny LLM, tower and tokenizer, and the synthetic data set (`build_tiny_assets`)."""
    side = plan.image_size // 14
    logger.info(
        "Images are %d px, an %d x %d patch grid (%d vision tokens before compression); the paper "
        "uses 336 px (576 tokens), which needs a GPU for a quickstart. No pretrained CLIP exists "
        "offline, so the tiny vision tower is trained from scratch too.",
        plan.image_size, side, side, side**2,
    )  # fmt: skip
    assets = build_tiny_assets(
        os.path.join(options.output_dir, "base"), plan.image_size, plan.num_train, plan.num_val,
        plan.seed, llm_shape=QUICKSTART_LLM, vision_shape=QUICKSTART_VISION,
        data_dir=options.data_dir, chat_format="compact",
    )  # fmt: skip
    logger.info("Data in %s: %d training images, %d held-out questions",
                os.path.dirname(assets["captions"]), plan.num_train, plan.num_val)  # fmt: skip
    return assets


def train_and_score(plan: Plan, assets: dict, out: str) -> tuple[dict, dict, dict]:
    """Stage 1 once, then stage 2, evaluation and measurements per variant.

    Returns:
        (results per variant name, loss curves per label, majority baseline per question type).
    """
    stage1_dir = os.path.join(out, "stage1")
    folder = os.path.dirname(assets["captions"])
    paths = ["--vision_tower", assets["clip"], "--image_folder", folder]
    stage1_flags = ["--model_name_or_path", assets["llm"], "--data_path", assets["captions"]]
    stage1_flags += paths
    stage1 = train_run("quickstart_stage1.yaml", stage1_dir, stage1_flags, plan,
                       plan.stage1_minutes)  # fmt: skip
    curves = {"stage 1 (captions)": losses(stage1)}
    results, baseline = {}, {}
    for name in plan.variants:
        variant = VARIANTS[name]
        logger.info("Stage 2: %s", variant.label)
        model_dir = os.path.join(out, name)
        trainer = train_run("quickstart_stage2.yaml", model_dir,
                            ["--model_name_or_path", stage1_dir, "--data_path", assets["instruct"],
                             *paths, *variant.flags], plan, plan.stage2_minutes)  # fmt: skip
        curves[variant.label] = [(s + stage1.state.global_step, v) for s, v in losses(trainer)]
        score = evaluate(model_dir, assets, os.path.join(out, "eval", f"{name}.jsonl"))
        results[name] = {
            "label": variant.label,
            "checkpoint": model_dir,
            "accuracy": score["accuracy"],
            "per_type": score["per_type"],
            "vision_tokens": trainer.model.config.num_compressed_tokens,
            "flops": flops_per_sample(model_dir, text_tokens=60),
            "ms_per_answer": answer_latency(model_dir, assets, plan.latency_questions),
            "train_steps": trainer.state.global_step,
        }
        baseline = score["majority_baseline"]
    return results, curves, baseline


def compression_figure(checkpoint: str, image: str, out: str) -> str:
    """The compressor's attention on one training image, as a heat map PNG."""
    pixels, attention = compression_attention(load_pretrained(checkpoint), image)
    return plot_compression(pixels, attention, os.path.join(out, "compression.png"),
                            "What the compressed token attends to")  # fmt: skip


def write_summary(results: dict, baseline: dict, chat: list[dict], figures: list[str], out: str):
    """The quickstart's console output: the table, the chat, what to try next."""
    checkpoint = results[MAIN_VARIANT]["checkpoint"]
    write = sys.stdout.write
    write("\n" + summary_table(results, baseline) + "\n\n")
    if len(results) > 1:
        write(FLOPS_NOTE + "\n\n")
    write(f"Chat with {checkpoint} about {out}/fresh_image.png:\n")
    for turn in chat:
        write(f"  Q: {turn['question']}\n  A: {turn['answer']}   (truth: {turn['truth']})\n")
    write(f"\nTry it: llavamini chat --model-path {checkpoint} "
          f"--image-file {out}/fresh_image.png\n"
          f"  and ask as it was trained, one question per image (/reset between them), e.g.\n"
          f"  What colour is at the top left? {synthetic.SHORT_ANSWER}\n")  # fmt: skip
    for path in figures:
        write(f"Figure: {path}\n")


def quickstart(options: QuickstartOptions = QuickstartOptions()) -> dict:
    """Train, evaluate and chat with a tiny LLaVA-Mini (CPU, minutes, no download); returns
    what results.json holds."""
    # One bar per training stage: transformers' per-file bars ("Loading weights", "Writing
    # model shards") would interleave with them; the trainer's log goes to each stage's folder.
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    plan, out = options.plan(), options.output_dir
    os.makedirs(out, exist_ok=True)
    assets = build_data(plan, options)
    results, curves, baseline = train_and_score(plan, assets, out)
    figures = []
    if options.ablation:
        figures = plot_results(results, curves, baseline, out)
        image = os.path.join(os.path.dirname(assets["captions"]), "images",
                             f"{plan.num_train:06d}.png")  # fmt: skip
        figures.append(compression_figure(results[MAIN_VARIANT]["checkpoint"], image, out))
    chat = chat_about_a_fresh_image(results[MAIN_VARIANT]["checkpoint"], out, plan)
    summary = {"plan": plan.__dict__, "results": results, "majority_baseline": baseline,
               "chat": chat, "figures": figures}  # fmt: skip
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    write_summary(results, baseline, chat, figures, out)
    sys.stdout.write(
        f"Done in {(time.perf_counter() - started) / 60:.1f} min; results in {out}/results.json\n"
    )
    return summary
