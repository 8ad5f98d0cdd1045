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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources

from transformers.utils import logging as transformers_logging

from llavamini.analysis.compression import compression_attention, plot_compression
from llavamini.apps import synthetic
from llavamini.apps.quickstart_report import plot_results, summary_table
from llavamini.apps.tiny import build_tiny_assets
from llavamini.bench.compare import ALL_TOKENS, CompareOptions, compare
from llavamini.eval.arguments import TaskFiles
from llavamini.eval.cli import RunOptions
from llavamini.flags import check_fields
from llavamini.inference import GenerationSettings
from llavamini.model.loading import ModelSpec
from llavamini.model.reduction import METHODS
from llavamini.serve.session import ChatSession, resolve_template
from llavamini.train.train import TRAINER_LOG_FILE
from llavamini.utils.openmp import wait_policy_environment

logger = logging.getLogger(__name__)

CONFIGS = resources.files("llavamini").joinpath("configs", "train")
"""The quickstart's recipes, shipped in the package (also `configs/train/` in the repository)."""

QUICKSTART_LLM = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)
QUICKSTART_VISION = dict(intermediate_size=256)


@dataclass(frozen=True)
class TrainingVariant:
    """One model the ablation trains: its label in the table and its training flags."""

    label: str
    flags: tuple[str, ...]


VARIANTS = {
    "all-tokens": TrainingVariant(
        "LLaVA-1.5 mode (all tokens)", ("--compressor_type", "none", "--prefusion_layer_num", "0")
    ),
    "one-token": TrainingVariant(
        "1 token, no pre-fusion", ("--compressor_type", "query", "--prefusion_layer_num", "0")
    ),
    "one-token-prefusion": TrainingVariant(
        "1 token + pre-fusion", ("--compressor_type", "query", "--prefusion_layer_num", "2")
    ),
    "pooling-prefusion": TrainingVariant(
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
TRAINING_FREE_NOTE = (
    "'METHOD @ N (no training)': a training-free method (docs/token_reduction.md) applied to the\n"
    "LLaVA-1.5-mode checkpoint, N vision tokens per image. MFLOPs: the prefill of the first\n"
    "held-out question, counted; TTFT: its median time to first token on this machine."
)
ABLATION = ("all-tokens", "one-token", "one-token-prefusion")
TRAINING_FREE_BUDGETS = (1, 4)
"""Vision tokens per image of the training-free rows `--ablation` adds (every `METHODS` entry,
on the LLaVA-1.5-mode checkpoint)."""

FASTV_LAYER = 1
"""FastV's K here: the quickstart's LLM has 2 layers, so the authors' K = 2 would prune none."""


STAGE1_STEPS = 1100
STAGE2_STEPS = 1000
ABLATION_STAGE2_STEPS = 800
"""Default training steps (batches of 32) of stage 1 and of stage 2 per variant (with
`--ablation`, three variants: fewer steps each, enough to show the ordering). Steps, not
minutes: a slower or busier machine takes longer but learns the same (a wall-clock budget left
a machine 27% slower on the wrong side of the learning curve's drop)."""

SAMPLES_PER_SECOND = {
    "stage 1": 128,
    "all-tokens": 126,
    "one-token": 190,
    "one-token-prefusion": 131,
    "pooling-prefusion": 131,
}
"""Training throughput on an idle 2-core AMD EPYC (AVX2), for the time estimate printed up
front (stage 1 and 1 token + pre-fusion measured idle; the other variants scaled by their
ratio to stage 1 in a run beside a busy core); the progress bars show this machine's own."""

OVERHEAD_SECONDS = 50
"""Data, model building, evaluation, latency and chat (the same machine)."""

SECONDS_PER_EXTRA_ROW = 20
"""Evaluating and timing one more row of the comparison (the same machine)."""

COLOUR_TARGET = 80.0
"""Held-out colour-at-position accuracy (%) a default run of the main variant reaches (each of
the runs in the README did); below it the summary says the run fell short."""


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one quickstart run."""

    image_size: int = 112
    num_train: int = 20000
    num_val: int = 500
    stage1_steps: int = STAGE1_STEPS
    stage2_steps: int = STAGE2_STEPS
    ttft_repeats: int = 10
    """Timed prefills per row (TTFT is their median)."""
    seed: int = 0
    variants: tuple[str, ...] = field(default=(MAIN_VARIANT,))
    training_free: tuple[str, ...] = ()
    """`METHODS` run on the LLaVA-1.5-mode variant at `TRAINING_FREE_BUDGETS`."""
    smoke: bool = False
    """A plumbing check of a few steps: nothing is expected to be learned."""

    def estimated_minutes(self, batch_size: int = 32) -> float:
        """Minutes on the machine of `SAMPLES_PER_SECOND` (a 2-core CPU)."""
        seconds = OVERHEAD_SECONDS + self.stage1_steps * batch_size / SAMPLES_PER_SECOND["stage 1"]
        for name in self.variants:
            seconds += self.stage2_steps * batch_size / SAMPLES_PER_SECOND[name]
        extra_rows = len(self.training_free) * len(TRAINING_FREE_BUDGETS)
        return (seconds + extra_rows * SECONDS_PER_EXTRA_ROW) / 60


def check_image_size(value: int) -> None:
    """An image side that the 14-px patches tile exactly, at least 2 patches."""
    if value < 28 or value % 14:
        raise ValueError(
            f"expected a multiple of the 14-px patch size, at least 28 (112, 224, 336), got {value}"
        )


def check_steps(value: int) -> None:
    """A number of training steps: >= 1."""
    if value < 1:
        raise ValueError(f"expected at least 1 step, got {value}")


@dataclass(frozen=True)
class QuickstartOptions:
    """What the quickstart trains, and where it writes.

    Attributes:
        output_dir: checkpoints, answers, figures and results.json.
        data_dir: the synthetic data set.
        ablation: also train LLaVA-1.5 mode and 1 token without pre-fusion, run the
            training-free methods on the former at 1 and 4 tokens, and plot them.
        with_pooling: with `ablation`, also 1 pooled token + pre-fusion.
        image_size: image side in pixels (a multiple of 14; 336 is the paper's, for a GPU).
        stage1_steps, stage2_steps: training steps of 32 samples (stage 2 per variant; None:
            `STAGE2_STEPS`, or `ABLATION_STAGE2_STEPS` with `ablation`). The defaults learn the
            colour questions on any machine; more steps, more accuracy.
        seed: data, initialisation and training.
        smoke: a few steps at the smallest sizes (seconds).
    """

    output_dir: str = os.path.join("outputs", "quickstart")
    data_dir: str = os.path.join("playground", "data", "synthetic")
    ablation: bool = field(
        default=False,
        metadata={
            "help": "also train LLaVA-1.5 mode and 1 token without pre-fusion, run the "
            "training-free methods on the former at 1 and 4 tokens, and plot them"
        },
    )
    with_pooling: bool = field(default=False, metadata={"help": "ablation: add avg pooling"})
    image_size: int = field(
        default=112, metadata={"check": check_image_size, "help": "336 is the paper's (GPU)"}
    )
    stage1_steps: int = field(
        default=STAGE1_STEPS, metadata={"check": check_steps, "help": "batches of 32 captions"}
    )
    stage2_steps: int | None = field(
        default=None,
        metadata={
            "check": check_steps,
            "help": f"batches of 32 questions, per variant (default {STAGE2_STEPS}, or "
            f"{ABLATION_STAGE2_STEPS} with --ablation)",
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
        training_free = tuple(METHODS) if self.ablation else ()
        common = dict(seed=self.seed, variants=variants, training_free=training_free)
        if self.smoke:
            sizes = dict(num_train=48, num_val=16, stage1_steps=2, stage2_steps=2, ttft_repeats=2)
            return Plan(smoke=True, **sizes, **common)
        stage2 = self.stage2_steps or (ABLATION_STAGE2_STEPS if self.ablation else STAGE2_STEPS)
        steps = dict(stage1_steps=self.stage1_steps, stage2_steps=stage2)
        return Plan(image_size=self.image_size, **steps, **common)


@dataclass(frozen=True)
class StageRun:
    """What the quickstart reads back from one finished training stage."""

    steps: int
    losses: list[tuple[int, float]]
    """`(step, training loss)` every `logging_steps`."""


def train_run(recipe: str, output_dir: str, flags: list[str], plan: Plan, steps: int) -> StageRun:
    """`python -m llavamini.train RECIPE ...` for `steps` steps, in a child process.

    The child's OpenMP threads sleep while they wait when other programs keep the CPU busy
    (`llavamini.utils.openmp`): libgomp's default, spinning, made training 2-3x slower beside
    one busy core (and up to 10x beside two more threads), while sleeping is a third slower on
    an idle machine. The policy is read once, when torch loads, hence a process of its own.
    Raises `RuntimeError` when the stage fails (its error is on the console above).
    """
    log_path = os.path.join(output_dir, TRAINER_LOG_FILE)
    if os.path.exists(log_path):
        os.remove(log_path)  # appended to by the trainer: a rerun must not read the last run's
    argv = [
        sys.executable,
        "-m",
        "llavamini.train",
        str(CONFIGS / recipe),
        *flags,
        "--output_dir",
        output_dir,
        "--max_steps",
        str(steps),
        "--seed",
        str(plan.seed),
    ]
    environment = {**os.environ, **wait_policy_environment()}
    completed = subprocess.run(argv, env=environment, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"Training {recipe} into {output_dir} failed (exit code {completed.returncode}); "
            "its error is printed above."
        )
    with open(log_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    return StageRun(steps=records[-1]["step"], losses=losses)


def compare_variants(plan: Plan, assets: dict, out: str, trained: dict[str, str]) -> dict:
    """The trained variants (`{name: checkpoint}`) and the training-free rows of `plan` on the
    held-out questions, through `llavamini compare` (answers, JSON and plot in out/compare/):
    the LLaVA-1.5-mode variant is the checkpoint the methods run on. Returns its summary."""
    questions = assets["val_questions"]
    files = TaskFiles(questions=questions, visual_folder=os.path.dirname(questions))
    base = trained.get("all-tokens")
    others = [f"{VARIANTS[n].label}={path}" for n, path in trained.items() if path != base]
    options = CompareOptions(
        checkpoint=base,
        methods=plan.training_free,
        budgets=TRAINING_FREE_BUDGETS,
        trained=tuple(others),
        output_dir=os.path.join(out, "compare"),
        repeats=plan.ttft_repeats,
    )
    evaluation = RunOptions("synthetic", batch_size=50, overwrite=True)
    model = ModelSpec("", fastv_layer=FASTV_LAYER)
    return compare(evaluation, options, model, files=files, print_table=False)


def chat_about_a_fresh_image(model_dir: str, output_dir: str, plan: Plan) -> list[dict]:
    """Draw a scene no split contains, ask the trained model about it, return Q, A and truth."""
    rng = random.Random(plan.seed + 10_000)
    scene = synthetic.random_scene(rng)
    image_path = os.path.join(output_dir, "fresh_image.png")
    synthetic.draw_scene(scene, plan.image_size, rng).save(image_path)
    loaded = ModelSpec(model_dir, device="cpu").load()
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
        plan.image_size,
        side,
        side,
        side**2,
    )
    assets = build_tiny_assets(
        os.path.join(options.output_dir, "base"),
        plan.image_size,
        plan.num_train,
        plan.num_val,
        plan.seed,
        llm_shape=QUICKSTART_LLM,
        vision_shape=QUICKSTART_VISION,
        data_dir=options.data_dir,
        chat_format="compact",
    )
    logger.info(
        "Data in %s: %d training images, %d held-out questions",
        os.path.dirname(assets["captions"]),
        plan.num_train,
        plan.num_val,
    )
    return assets


def table_row(row: dict, label: str) -> dict:
    """What the summary shows of one row of `compare`: a row that did not run says why."""
    if "skipped" in row:
        return {"label": label, "skipped": row["skipped"]}
    keys = ("checkpoint", "accuracy", "vision_tokens", "flops", "ttft_ms", "kv_cache_bytes")
    return {
        "label": label,
        **{key: row[key] for key in keys},
        "per_type": row["metrics"]["per_type"],
    }


def train_and_score(plan: Plan, assets: dict, out: str) -> tuple[dict, list, dict, dict, str]:
    """Stage 1 once, then stage 2 per variant; then every variant, and the training-free rows
    on the LLaVA-1.5-mode one, evaluated and measured by `compare_variants`.

    Returns:
        (results per variant name, the training-free rows, loss curves per label, majority
        baseline per question type, the comparison's plot).
    """
    stage1_dir = os.path.join(out, "stage1")
    folder = os.path.dirname(assets["captions"])
    paths = ["--vision_tower", assets["clip"], "--image_folder", folder]
    stage1_flags = ["--model_name_or_path", assets["llm"], "--data_path", assets["captions"]]
    stage1_flags += paths
    stage1 = train_run("quickstart_stage1.yaml", stage1_dir, stage1_flags, plan, plan.stage1_steps)
    curves = {"stage 1 (captions)": stage1.losses}
    trained, steps = {}, {}
    for name in plan.variants:
        variant = VARIANTS[name]
        logger.info("Stage 2: %s", variant.label)
        trained[name] = os.path.join(out, name)
        stage2 = train_run(
            "quickstart_stage2.yaml",
            trained[name],
            [
                "--model_name_or_path",
                stage1_dir,
                "--data_path",
                assets["instruct"],
                *paths,
                *variant.flags,
            ],
            plan,
            plan.stage2_steps,
        )
        curves[variant.label] = [(s + stage1.steps, v) for s, v in stage2.losses]
        steps[name] = stage2.steps
    comparison = compare_variants(plan, assets, out, trained)
    rows = {row["label"]: row for row in comparison["rows"]}
    results = {}
    for name in plan.variants:
        label = VARIANTS[name].label
        row = rows[ALL_TOKENS if name == "all-tokens" else label]
        results[name] = {**table_row(row, label), "train_steps": steps[name]}
    training_free = [
        table_row(row, f"{row['method']} @ {row['budget']} (no training)")
        for row in comparison["rows"]
        if row["method"] in METHODS
    ]
    baseline = next(r["metrics"] for r in rows.values() if "metrics" in r)["majority_baseline"]
    return results, training_free, curves, baseline, comparison["plot"]


def compression_figure(checkpoint: str, image: str, out: str) -> str:
    """The compressor's attention on one training image, as a heat map PNG."""
    pixels, attention = compression_attention(ModelSpec(checkpoint, device="cpu").load(), image)
    return plot_compression(
        pixels,
        attention,
        os.path.join(out, "compression.png"),
        "What the compressed token attends to",
    )


def write_summary(
    results: dict,
    training_free: list[dict],
    baseline: dict,
    chat: list[dict],
    figures: list[str],
    out: str,
    plan: Plan,
):
    """The quickstart's console output: the table, the chat, what to try next."""
    checkpoint = results[MAIN_VARIANT]["checkpoint"]
    write = sys.stdout.write
    write("\n" + summary_table([*results.values(), *training_free], baseline) + "\n\n")
    if training_free:
        write(TRAINING_FREE_NOTE + "\n\n")
    if len(results) > 1:
        write(FLOPS_NOTE + "\n\n")
    write(f"Chat with {checkpoint} about {out}/fresh_image.png:\n")
    for turn in chat:
        write(f"  Q: {turn['question']}\n  A: {turn['answer']}   (truth: {turn['truth']})\n")
    write(
        f"\nTry it: llavamini chat --model-path {checkpoint} "
        f"--image-file {out}/fresh_image.png\n"
        f"  and ask as it was trained, one question per image (/reset between them), e.g.\n"
        f"  What colour is at the top left? {synthetic.SHORT_ANSWER}\n"
    )
    for path in figures:
        write(f"Figure: {path}\n")
    shortfall = falls_short(results[MAIN_VARIANT], baseline, plan)
    if shortfall:
        write("\n" + shortfall + "\n")


def falls_short(result: dict, baseline: dict, plan: Plan) -> str | None:
    """What to tell the user when the main variant missed `COLOUR_TARGET` (None when it did not):
    what was reached, the likely reason, the command that trains longer."""
    reached = result["per_type"].get("colour", 0.0)
    if reached >= COLOUR_TARGET or plan.smoke:
        return None
    more = 2 * plan.stage2_steps
    return (
        f"This run fell short: {result['label']} answered {reached:.1f}% of the colour-at-a-"
        f"position questions (majority baseline {baseline.get('colour', 0.0):.1f}%; default runs "
        f"reach {COLOUR_TARGET:.0f}% or more). The likely reason is that stage 2's "
        f"{result['train_steps']} steps ended before the loss dropped (the losses are in "
        f"{os.path.join(result['checkpoint'], TRAINER_LOG_FILE)}). Train longer:\n"
        f"  llavamini quickstart --stage2-steps {more} --seed {plan.seed}"
    )


def quickstart(options: QuickstartOptions = QuickstartOptions()) -> dict:
    """Train, evaluate and chat with a tiny LLaVA-Mini (CPU, minutes, no download); returns
    what results.json holds."""
    # One bar per training stage: transformers' per-file bars ("Loading weights", "Writing
    # model shards") would interleave with them; the trainer's log goes to each stage's folder.
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    plan, out = options.plan(), options.output_dir
    logger.info(
        "Stage 1: %d steps; stage 2: %d steps for each of %d variant(s). About %.0f minutes on a "
        "2-core CPU; the progress bars show this machine's time.",
        plan.stage1_steps,
        plan.stage2_steps,
        len(plan.variants),
        plan.estimated_minutes(),
    )
    os.makedirs(out, exist_ok=True)
    assets = build_data(plan, options)
    results, training_free, curves, baseline, comparison_plot = train_and_score(plan, assets, out)
    figures = []
    if options.ablation:
        figures = plot_results(results, curves, baseline, out)
        image = os.path.join(
            os.path.dirname(assets["captions"]), "images", f"{plan.num_train:06d}.png"
        )
        figures.append(compression_figure(results[MAIN_VARIANT]["checkpoint"], image, out))
        figures.append(comparison_plot)
    chat = chat_about_a_fresh_image(results[MAIN_VARIANT]["checkpoint"], out, plan)
    summary = {
        "plan": plan.__dict__,
        "results": results,
        "training_free": training_free,
        "majority_baseline": baseline,
        "chat": chat,
        "figures": figures,
    }
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    write_summary(results, training_free, baseline, chat, figures, out, plan)
    sys.stdout.write(
        f"Done in {(time.perf_counter() - started) / 60:.1f} min; results in {out}/results.json\n"
    )
    return summary
