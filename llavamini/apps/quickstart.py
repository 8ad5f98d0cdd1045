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

import argparse
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from importlib import resources

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


def plan_from_args(args: argparse.Namespace) -> Plan:
    variants = ABLATION + (("pooling-prefusion",) if args.with_pooling else ())
    if not args.ablation:
        variants = (MAIN_VARIANT,)
    if args.smoke:
        return Plan(num_train=48, num_val=16, stage1_minutes=1, stage2_minutes=1, max_steps=2,
                    latency_questions=2, seed=args.seed, variants=variants)  # fmt: skip
    stage2 = args.stage2_minutes or (1.75 if args.ablation else 2.5)
    return Plan(image_size=args.image_size, stage1_minutes=args.stage1_minutes,
                stage2_minutes=stage2, seed=args.seed, variants=variants)  # fmt: skip


def train_run(recipe: str, output_dir: str, flags: list[str], plan: Plan, minutes: float):
    """`llavamini train RECIPE ...` in this process; returns the trainer."""
    from llavamini.train.train import train

    budget = ["--max_steps", str(plan.max_steps)] if plan.max_steps else []
    argv = [str(CONFIGS / recipe), *flags, "--output_dir", output_dir,
            "--max_train_minutes", str(minutes), "--seed", str(plan.seed), *budget]  # fmt: skip
    return train(argv)


def evaluate(model_dir: str, data: dict, answers_file: str) -> dict:
    """`llavamini eval run synthetic` then `eval score`; returns the score."""
    from llavamini.eval import cli as eval_cli

    parser = argparse.ArgumentParser(prog="llavamini eval")
    eval_cli.add_commands(parser.add_subparsers(dest="eval_command", required=True))
    if os.path.exists(answers_file):
        os.remove(answers_file)  # a fresh model: its answers must not resume stale ones
    common = ["--questions", data["val_questions"]]
    folder = os.path.dirname(data["val_questions"])
    eval_cli.run_command(parser.parse_args(
        ["run", "synthetic", "--model-path", model_dir, "--visual-folder", folder,
         "--answers-file", answers_file, "--batch-size", "50", *common]
    ))  # fmt: skip
    return eval_cli.compute_score(
        parser.parse_args(["score", "synthetic", "--answers", answers_file, *common])
    )


def answer_latency(model_dir: str, data: dict, count: int) -> float:
    """Median milliseconds to answer one held-out question alone (batch of one, greedy)."""
    from llavamini.inference import GenerationSettings, generate
    from llavamini.model.loading import load_pretrained

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
    from llavamini.bench.flops import count_flops
    from llavamini.model import LlavaMiniConfig

    return count_flops(LlavaMiniConfig.from_pretrained(model_dir), text_tokens)["prefill_total"]


def losses(trainer) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


def chat_about_a_fresh_image(model_dir: str, output_dir: str, plan: Plan) -> list[dict]:
    """Draw a scene no split contains, ask the trained model about it, return Q, A and truth."""
    from llavamini.apps import synthetic
    from llavamini.inference import GenerationSettings
    from llavamini.model.loading import load_pretrained
    from llavamini.serve.session import ChatSession, resolve_template

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


def summary_table(results: dict, baseline: dict) -> str:
    types = sorted(baseline)
    header = (
        f"{'variant':32} {'LLM vision tokens':>17} {'overall':>8} "
        + " ".join(f"{t:>9}" for t in types)
        + f" {'MFLOPs/question':>15} {'ms/answer':>9}"
    )
    rows = [header, "-" * len(header)]
    base = f"{'majority baseline':32} {'':>17} {'':>8} " + " ".join(
        f"{baseline[t]:>9.1f}" for t in types
    )
    rows.append(base)
    for result in results.values():
        per_type = " ".join(f"{result['per_type'].get(t, 0):>9.1f}" for t in types)
        rows.append(
            f"{result['label']:32} {result['vision_tokens']:>17} {result['accuracy']:>8.1f} "
            f"{per_type} {result['flops'] / 1e6:>15.1f} {result['ms_per_answer']:>9.1f}"
        )
    return "\n".join(rows)


def plot_results(results: dict, curves: dict, baseline: dict, output_dir: str) -> list[str]:
    """Loss curves and per-type accuracy bars as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        if curve:
            steps, values = zip(*curve, strict=True)
            axis.plot(steps, values, label=name)
    # Log scale: the variants part where the loss is already small.
    axis.set(xlabel="step", ylabel="training loss (log scale)", yscale="log",
             title="Loss (stage 1, then each variant)")  # fmt: skip
    if any(curves.values()):
        axis.legend()
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "loss_curves.png"))
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    types = sorted(baseline)
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / (len(results) + 1)
    positions = range(len(types))
    axis.bar([p - 0.4 + width / 2 for p in positions], [baseline[t] for t in types], width,
             label="majority baseline", color="lightgrey")  # fmt: skip
    for index, result in enumerate(results.values(), start=1):
        offsets = [p - 0.4 + width * (index + 0.5) for p in positions]
        axis.bar(
            offsets, [result["per_type"].get(t, 0) for t in types], width, label=result["label"]
        )
    axis.set_xticks(list(positions), types)
    axis.set(ylabel="held-out accuracy (%)", ylim=(0, 100), title="Accuracy by question type")
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "accuracy.png"))
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)
    return paths


def run(args: argparse.Namespace) -> None:
    from transformers.utils import logging as transformers_logging

    from llavamini.apps import synthetic
    from llavamini.apps.tiny import build_tiny_assets

    # One bar per training stage: transformers' per-file bars ("Loading weights", "Writing
    # model shards") would interleave with them; the trainer's log goes to each stage's folder.
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    plan = plan_from_args(args)
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    logger.info(
        "Images are %d px, an %d x %d patch grid (%d vision tokens before compression); the paper "
        "uses 336 px (576 tokens), which needs a GPU for a quickstart. No pretrained CLIP exists "
        "offline, so the tiny vision tower is trained from scratch too.",
        plan.image_size, plan.image_size // 14, plan.image_size // 14, (plan.image_size // 14) ** 2,
    )  # fmt: skip
    assets = build_tiny_assets(
        os.path.join(out, "base"), plan.image_size, plan.num_train, plan.num_val, plan.seed,
        llm_shape=QUICKSTART_LLM, vision_shape=QUICKSTART_VISION, data_dir=args.data_dir,
        chat_format="compact",
    )  # fmt: skip
    data_folder = os.path.dirname(assets["captions"])
    logger.info("Data in %s: %d training images, %d held-out questions", data_folder,
                plan.num_train, plan.num_val)  # fmt: skip

    stage1_dir = os.path.join(out, "stage1")
    paths = ["--vision_tower", assets["clip"], "--image_folder", data_folder]
    stage1_flags = [
        "--model_name_or_path",
        assets["llm"],
        "--data_path",
        assets["captions"],
        *paths,
    ]
    stage1 = train_run(
        "quickstart_stage1.yaml", stage1_dir, stage1_flags, plan, plan.stage1_minutes
    )
    curves = {"stage 1 (captions)": losses(stage1)}
    results = {}
    for name in plan.variants:
        variant = VARIANTS[name]
        logger.info("Stage 2: %s", variant.label)
        model_dir = os.path.join(out, name)
        trainer = train_run("quickstart_stage2.yaml", model_dir,
                            ["--model_name_or_path", stage1_dir, "--data_path", assets["instruct"],
                             *paths, *variant.flags], plan, plan.stage2_minutes)  # fmt: skip
        curves[variant.label] = [(s + stage1.state.global_step, v) for s, v in losses(trainer)]
        score = evaluate(model_dir, assets, os.path.join(out, "eval", f"{name}.jsonl"))
        config = trainer.model.config
        results[name] = {
            "label": variant.label,
            "checkpoint": model_dir,
            "accuracy": score["accuracy"],
            "per_type": score["per_type"],
            "vision_tokens": config.num_compressed_tokens,
            "flops": flops_per_sample(model_dir, text_tokens=60),
            "ms_per_answer": answer_latency(model_dir, assets, plan.latency_questions),
            "train_steps": trainer.state.global_step,
        }
        baseline = score["majority_baseline"]

    written = []
    if args.ablation:
        from llavamini.analysis.compression import compression_attention, plot_compression
        from llavamini.model.loading import load_pretrained

        written = plot_results(results, curves, baseline, out)
        image = os.path.join(data_folder, "images", f"{plan.num_train:06d}.png")
        loaded = load_pretrained(results[MAIN_VARIANT]["checkpoint"])
        pixels, attention = compression_attention(loaded, image)
        written.append(plot_compression(pixels, attention, os.path.join(out, "compression.png"),
                                        "What the compressed token attends to"))  # fmt: skip
    chat = chat_about_a_fresh_image(results[MAIN_VARIANT]["checkpoint"], out, plan)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"plan": plan.__dict__, "results": results, "majority_baseline": baseline,
                   "chat": chat, "figures": written}, f, indent=1)  # fmt: skip

    write = sys.stdout.write
    write("\n" + summary_table(results, baseline) + "\n\n")
    if len(results) > 1:
        write(FLOPS_NOTE + "\n\n")
    write(f"Chat with {results[MAIN_VARIANT]['checkpoint']} about {out}/fresh_image.png:\n")
    for turn in chat:
        write(f"  Q: {turn['question']}\n  A: {turn['answer']}   (truth: {turn['truth']})\n")
    write(f"\nTry it: llavamini chat --model-path {results[MAIN_VARIANT]['checkpoint']} "
          f"--image-file {out}/fresh_image.png\n"
          f"  and ask as it was trained, one question per image (/reset between them), e.g.\n"
          f"  What colour is at the top left? {synthetic.SHORT_ANSWER}\n")  # fmt: skip
    for path in written:
        write(f"Figure: {path}\n")
    write(
        f"Done in {(time.perf_counter() - started) / 60:.1f} min; results in {out}/results.json\n"
    )


def positive_minutes(text: str) -> float:
    """An argparse type: minutes of a time budget, > 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {text}")
    return value


def image_size(text: str) -> int:
    """An argparse type: an image side that the 14-px patches tile exactly, at least 2 patches."""
    value = int(text)
    if value < 28 or value % 14:
        raise argparse.ArgumentTypeError(
            f"expected a multiple of the 14-px patch size, at least 28 (112, 224, 336), got {text}"
        )
    return value


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "quickstart",
        help="train, evaluate and chat with a tiny LLaVA-Mini (CPU, minutes, no download)",
        allow_abbrev=False,
    )
    parser.add_argument("--output-dir", default=os.path.join("outputs", "quickstart"))
    parser.add_argument("--data-dir", default=os.path.join("playground", "data", "synthetic"))
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also train LLaVA-1.5 mode and 1 token without pre-fusion, and plot them",
    )
    parser.add_argument("--with-pooling", action="store_true", help="ablation: add avg pooling")
    parser.add_argument(
        "--image-size", type=image_size, default=112, help="336 is the paper's (GPU)"
    )
    parser.add_argument("--stage1-minutes", type=positive_minutes, default=3.0)
    parser.add_argument("--stage2-minutes", type=positive_minutes, default=None,
                        help="per variant (default 2.5, or 1.75 with --ablation)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and training")
    parser.add_argument("--smoke", action="store_true", help="a few steps only (seconds)")
    parser.set_defaults(func=run)
