"""Side-by-side timing of llavamini and the reference implementation (ictnlp/LLaVA-Mini).

Run by `scripts/bench/vs_reference.sh`, which gives each codebase its own environment (ours with
transformers 5, the reference with its own transformers 4.43.1). Three commands:

    build DIR                 (our environment) one random checkpoint both codebases load:
                              DIR/checkpoint (LLaVA-Mini keys, as released) and DIR/clip (the
                              CLIP vision tower folder the reference's `mm_vision_tower` reads)
    run --impl ours|reference --checkpoint DIR/checkpoint --row ROW
                              one measurement in a fresh process; prints one JSON line
    compare --work-dir DIR --ours-python P --reference-python P --reference-dir R
                              builds, checks the outputs agree, then runs every row in both
                              codebases alternately, process by process, and prints the table

The model: CLIP ViT-L/336 geometry (24 layers, width 1024, 577 tokens), Llama width 512 with 8
layers, 4 pre-fusion layers, one compressed token, float32 random weights, SDPA. Rows (`ROWS`):
time to first token, batch-8 prefill per sample, decode per token, a training step, video
prefill and the video's peak RSS growth. The reference is imported from `--reference-dir`
unchanged; nothing of it is copied here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from transformers import LogitsProcessorList

logger = logging.getLogger("vs_reference")

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
TEXT_TOKENS = 40
DECODE_TOKENS = 32
VOCAB = 32000
IMAGE_SIZE = 336
LLM = dict(
    vocab_size=VOCAB,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
"""The Llama of the compared checkpoint (width 512, 8 layers; rope_theta left at 10000, the
default of both transformers versions)."""

ROWS = ("ttft", "batch8", "decode", "train", "video")
ROW_TITLES = {
    "ttft": "time to first token, 1 image + 40 tokens (ms)",
    "batch8": "batch of 8 images, prefill per sample (ms)",
    "decode": "decode, per token (32 new tokens, timed between steps) (ms)",
    "train": "training step, batch 4, forward + backward (ms)",
    "video": "video prefill, T = {frames} frames (ms)",
    "video_mem": "video peak memory growth over 1 frame, T = {frames} (MiB; RSS on a CPU)",
    "peak": "peak RSS of the whole process (MiB)",
    "loaded": "RSS after loading, before the first input (MiB)",
}
OURS = ("ours", "ours-packed")
"""Our two ways to load: as the README's snippet does (the default), and with
`--pack-vision-weights`'s packing (opt-in)."""
DEVICE = torch.device("cpu")
"""Where `run` puts the model and inputs (`--device`)."""


# ---- build (our environment) -------------------------------------------------------------------


def build(work_dir: str) -> str:
    """Write `work_dir/clip` (a transformers-4-style CLIP vision folder) and `work_dir/checkpoint`
    (a LLaVA-Mini checkpoint whose `mm_vision_tower` is that folder, storing the same tower)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig

    from llavamini import LlavaMiniForCausalLM
    from llavamini.model import LlavaMiniConfig
    from llavamini.model.image_processors import CLIP_L_336_PROCESSOR
    from llavamini.model.vision_tower import CLIP_L_336_VISION_CONFIG

    clip_dir = os.path.join(work_dir, "clip")
    checkpoint_dir = os.path.join(work_dir, "checkpoint")
    os.makedirs(clip_dir, exist_ok=True)
    config = LlavaMiniConfig(
        **LLM,
        mm_vision_tower=os.path.abspath(clip_dir),
        vision_config=dict(CLIP_L_336_VISION_CONFIG),
        mm_hidden_size=CLIP_L_336_VISION_CONFIG["hidden_size"],
        compressor_size=1,
        compressor_num_heads=8,
        prefusion_layer_num=4,
    )
    torch.manual_seed(0)
    model = LlavaMiniForCausalLM(config).eval()
    model.save_pretrained(checkpoint_dir)
    encoder = model.model.vision_tower.encoder
    tensors = {f"vision_model.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, os.path.join(clip_dir, "model.safetensors"), metadata={"format": "pt"})
    vision = CLIPVisionConfig(**CLIP_L_336_VISION_CONFIG).to_dict()
    vision.update(model_type="clip_vision_model", architectures=["CLIPVisionModel"])
    with open(os.path.join(clip_dir, "config.json"), "w") as f:
        json.dump(vision, f, indent=2)
    processor = dict(CLIP_L_336_PROCESSOR, image_processor_type="CLIPImageProcessor")
    processor.update(do_resize=True, do_center_crop=True, do_normalize=True, do_rescale=True)
    with open(os.path.join(clip_dir, "preprocessor_config.json"), "w") as f:
        json.dump(processor, f, indent=2)
    return checkpoint_dir


# ---- run (either environment) ------------------------------------------------------------------


def load(impl: str, checkpoint_dir: str):
    """The model of `impl`, float32, SDPA, in eval mode. Ours is loaded as the README's snippet
    loads it, in this plain process, calling nothing else ('ours'), or with the vision weights
    packed as `--pack-vision-weights` does ('ours-packed')."""
    if impl in OURS:
        from transformers import AutoModelForCausalLM

        import llavamini  # noqa: F401  (registers the Auto classes, as the README's snippet)

        model = AutoModelForCausalLM.from_pretrained(
            checkpoint_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        if impl == "ours-packed":
            model.model.vision_tower.pack_weights()
        return model.to(DEVICE).eval()
    from llavamini.model.language_model.llavamini_llama import LlavaMiniLlamaForCausalLM

    model = LlavaMiniLlamaForCausalLM.from_pretrained(
        checkpoint_dir, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    tower = vision_tower(impl, model)
    if not tower.is_loaded:
        tower.load_model()  # as the reference's own builder does after from_pretrained
    tower.to(torch.float32)
    return model.to(DEVICE).eval()


def vision_tower(impl: str, model) -> torch.nn.Module:
    """The CLIP tower module of `impl`'s model."""
    if impl in OURS:
        return model.model.vision_tower
    return model.get_model().get_vision_tower()


def prompt(batch: int, seed: int = 0) -> torch.Tensor:
    """`(batch, 1 + TEXT_TOKENS)` ids, the image placeholder after 5 tokens (no id <= 2, which
    the reference would take for padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, TEXT_TOKENS + 1), generator=generator)
    ids[:, 5] = IMAGE_TOKEN_INDEX
    return ids.to(DEVICE)


def pixels(*shape: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(DEVICE)


def video_images(impl: str, frames: int):
    """One video of `frames` frames in the form each codebase takes."""
    video = pixels(frames, 1, seed=2)  # (T, parts, 3, H, W)
    return [video] if impl in OURS else video[None]


def greedy(model, ids, images, new_tokens: int, **kwargs) -> torch.Tensor:
    return model.generate(
        inputs=ids,
        images=images,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        use_cache=True,
        pad_token_id=0,
        **kwargs,
    )


class StepClock:
    """A logits processor (the same hook in both transformers versions) that notes when each
    generation step's logits are ready."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        synchronize()
        self.times.append(time.perf_counter())
        return scores


def decode_ms(model, ids, images) -> float:
    """Per-token decode time of one greedy generation of `DECODE_TOKENS` tokens: from the first
    token's logits to the last's, over the `DECODE_TOKENS - 1` decode steps between them.

    Timed inside `generate` rather than as (generate N minus generate 1): the difference of two
    prefills of ~2 s each left the per-token time to their noise (runs gave 0.73 and 1.99).
    """
    clock = StepClock()
    greedy(model, ids, images, DECODE_TOKENS, logits_processor=LogitsProcessorList([clock]))
    return (clock.times[-1] - clock.times[0]) * 1000 / (DECODE_TOKENS - 1)


def train_step(model, ids, images) -> float:
    labels = ids.clone()
    labels[:, : ids.shape[1] - 10] = IGNORE_INDEX
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, images=images, labels=labels).loss
    loss.backward()
    return loss.item()


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn, repeats: int) -> list[float]:
    """Wall times in ms of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return times


def peak_memory_mib() -> float:
    """The process's peak RSS (CPU) or peak CUDA allocation so far, MiB."""
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated(DEVICE) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """The process's resident memory now (CPU), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_row(impl: str, checkpoint_dir: str, row: str, repeats: int, frames: int) -> dict:
    """One row's measurement for one codebase (a fresh process each time), with the process's
    RSS after loading and its peak RSS at the end (CPU: the whole process, not only growth)."""
    model = load(impl, checkpoint_dir)
    result: dict = {"impl": impl, "row": row}
    if DEVICE.type == "cpu":
        result["loaded_mib"] = rss_mib()
    measure(model, impl, row, repeats, frames, result)
    if DEVICE.type == "cpu":
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure(model, impl: str, row: str, repeats: int, frames: int, result: dict) -> None:
    """Time `row` with `model` into `result`."""
    image, ids = pixels(1, 1), prompt(1)
    if row == "ttft":
        with torch.no_grad():
            result["ms"] = timed(lambda: greedy(model, ids, image, 1), repeats)
    elif row == "batch8":
        batch_ids, batch_images = prompt(8, seed=3), pixels(8, 1, seed=3)
        with torch.no_grad():
            times = timed(lambda: model(input_ids=batch_ids, images=batch_images), repeats)
        result["ms"] = [t / 8 for t in times]
    elif row == "decode":
        with torch.no_grad():
            decode_ms(model, ids, image)  # warm-up
            result["ms"] = [decode_ms(model, ids, image) for _ in range(repeats)]
    elif row == "train":
        model.train()
        # Both codebases' training keeps the vision tower frozen (the reference's tower even
        # runs under no_grad); the rest trains, as in stage 2.
        vision_tower(impl, model).requires_grad_(False)
        batch_ids, batch_images = prompt(4, seed=4), pixels(4, 1, seed=4)
        result["ms"] = timed(lambda: train_step(model, batch_ids, batch_images), repeats)
    elif row == "video":
        with torch.no_grad():
            model(input_ids=ids, images=video_images(impl, 1))  # warm: one frame
            video = video_images(impl, frames)
            before = peak_memory_mib()
            synchronize()
            start = time.perf_counter()
            model(input_ids=ids, images=video)
            synchronize()
            result["ms"] = [(time.perf_counter() - start) * 1000]
            result["mem_mib"] = peak_memory_mib() - before
        result["frames"] = frames
    elif row == "check":
        with torch.no_grad():
            result["image_logits"] = model(input_ids=ids, images=image).logits[0, -8:].tolist()
            result["video_logits"] = (
                model(input_ids=ids, images=video_images(impl, 2)).logits[0, -8:].tolist()
            )
            result["tokens"] = greedy(model, ids, image, 8)[0].tolist()
        model.train()
        result["loss"] = train_step(model, prompt(2, seed=5), pixels(2, 1, seed=5))
    else:
        raise ValueError(f"unknown row {row!r}")


# ---- compare (our environment) -----------------------------------------------------------------


def subprocess_row(args, impl: str, row: str, frames: int = 0) -> dict:
    python = args.ours_python if impl in OURS else args.reference_python
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = args.ours_dir if impl in OURS else args.reference_dir
    command = [
        python, os.path.abspath(__file__), "run", "--impl", impl, "--row", row,
        "--checkpoint", os.path.join(args.work_dir, "checkpoint"),
        "--repeats", str(args.repeats), "--frames", str(frames), "--threads", str(args.threads),
        "--device", args.device,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{impl} {row} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_outputs(args) -> float:
    """Max |difference| of the image and video logits; raises if tokens differ or it is large."""
    ours, reference = (subprocess_row(args, impl, "check") for impl in ("ours", "reference"))
    diff = max(
        (torch.tensor(ours[key]) - torch.tensor(reference[key])).abs().max().item()
        for key in ("image_logits", "video_logits")
    )
    loss_diff = abs(ours["loss"] - reference["loss"])
    same_tokens = ours["tokens"] == reference["tokens"]
    print(
        f"outputs: max |logit difference| {diff:.2e}, loss difference {loss_diff:.2e}, "
        f"greedy tokens {'equal' if same_tokens else 'DIFFER'}"
    )
    if ours["tokens"] != reference["tokens"] or diff > args.tolerance:
        raise SystemExit("The two codebases disagree: timings would not compare the same model.")
    return diff


def compare(args) -> None:
    args.ours_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(args.work_dir, "checkpoint")):
        env = dict(os.environ, PYTHONPATH=args.ours_dir)
        subprocess.run(
            [args.ours_python, os.path.abspath(__file__), "build", args.work_dir],
            env=env,
            check=True,
        )
    check_outputs(args)
    jobs = [(row, 0) for row in args.rows if row != "video"]
    if "video" in args.rows:
        jobs += [("video", frames) for frames in args.frames]
    samples: dict[tuple[str, int], dict[str, dict[str, list[float]]]] = {}
    for repetition in range(max(args.repetitions, args.video_repetitions)):
        for row, frames in jobs:
            if repetition >= (args.video_repetitions if row == "video" else args.repetitions):
                continue
            impls = args.impls if repetition % 2 == 0 else args.impls[::-1]
            for impl in impls:
                result = subprocess_row(args, impl, row, frames)
                entry = samples.setdefault((row, frames), {}).setdefault(impl, {})
                entry.setdefault("ms", []).append(min(result["ms"]))
                for key in ("mem", "peak", "loaded"):
                    if f"{key}_mib" in result:
                        entry.setdefault(key, []).append(result[f"{key}_mib"])
                logger.info("%s %s %s: %.1f ms", row, frames or "", impl, min(result["ms"]))
    print_table(samples, args.impls)


def span(values: list[float]) -> str:
    low, mid = min(values), statistics.median(values)
    return f"{low:.1f} / {mid:.1f}"


def print_table(samples, impls: list[str]) -> None:
    """The table: min / median over process repetitions; ratios = reference / ours on the
    minima (> 1: ours faster, or for memory: ours smaller). Under every timed row, the peak RSS
    of the whole process that timed it."""
    ours = [impl for impl in impls if impl != "reference"]
    print(
        "| row | " + " | ".join(f"{impl} (min / median)" for impl in impls) + " | "
        + " | ".join(f"reference / {impl}" for impl in ours) + " |"
    )  # fmt: skip
    print("|---" * (1 + len(impls) + len(ours)) + "|")

    def line(title: str, key: str, by_impl: dict, floor: float = 0.0) -> None:
        cells = [span(by_impl[impl][key]) for impl in impls]
        reference = max(min(by_impl["reference"][key]), floor)
        ratios = [f"{reference / max(min(by_impl[impl][key]), floor):.2f}" for impl in ours]
        print(f"| {title} | " + " | ".join(cells + ratios) + " |")

    loaded_shown = False
    for (row, frames), by_impl in samples.items():
        line(ROW_TITLES[row].format(frames=frames), "ms", by_impl)
        if "mem" in by_impl["reference"]:
            line(ROW_TITLES["video_mem"].format(frames=frames), "mem", by_impl, floor=0.1)
        if "peak" in by_impl["reference"]:
            line(f"&nbsp;&nbsp;{ROW_TITLES['peak']}", "peak", by_impl)
        if "loaded" in by_impl["reference"] and not loaded_shown and row != "train":
            line(ROW_TITLES["loaded"], "loaded", by_impl)
            loaded_shown = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build")
    build_parser.add_argument("work_dir")
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--impl", choices=(*OURS, "reference"), required=True)
    run_parser.add_argument("--row", required=True)
    run_parser.add_argument("--checkpoint", required=True)
    run_parser.add_argument("--repeats", type=int, default=2)
    run_parser.add_argument("--frames", type=int, default=8)
    run_parser.add_argument("--threads", type=int, default=2)
    run_parser.add_argument("--device", default="cpu")
    compare_parser = sub.add_parser("compare")
    compare_parser.add_argument("--work-dir", required=True)
    compare_parser.add_argument("--ours-python", default=sys.executable)
    compare_parser.add_argument("--reference-python", required=True)
    compare_parser.add_argument("--reference-dir", required=True)
    compare_parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    compare_parser.add_argument(
        "--impls", nargs="+", choices=(*OURS, "reference"), default=["ours", "reference"],
        help="what to time, alternating process by process (add ours-packed for the opt-in)",
    )  # fmt: skip
    compare_parser.add_argument("--frames", nargs="+", type=int, default=[8, 32, 64])
    compare_parser.add_argument("--repeats", type=int, default=2, help="timed calls a process")
    compare_parser.add_argument(
        "--repetitions", type=int, default=3, help="processes a row and codebase (not video)"
    )
    compare_parser.add_argument(
        "--video-repetitions", type=int, default=2, help="processes a video row and codebase"
    )
    compare_parser.add_argument("--threads", type=int, default=2)
    compare_parser.add_argument("--tolerance", type=float, default=1e-4)
    compare_parser.add_argument("--device", default="cpu", help="cpu or cuda (ours and theirs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.command == "build":
        print(build(args.work_dir))
    elif args.command == "run":
        global DEVICE
        DEVICE = torch.device(args.device)
        torch.set_num_threads(args.threads)
        result = run_row(args.impl, args.checkpoint, args.row, args.repeats, args.frames)
        print(json.dumps(result))
    else:
        compare(args)


if __name__ == "__main__":
    main()
