"""The benchmark's output: Markdown tables (stdout and docs), a JSON file and a PNG figure.

Every function reads the results dict that `run.run_benchmark` returns; nothing is measured here.
"""

from __future__ import annotations

import json
import os

from matplotlib.figure import Figure

from llavamini.bench.configs import baseline_of

MIB = 2**20


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table; cells are written with `str`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def tflops(value: float) -> str:
    """FLOPs as TFLOPs, with more decimals below 0.1 T."""
    tera = value / 1e12
    return f"{tera:.4f}" if tera < 0.1 else f"{tera:.3f}"


def percent(value: float) -> str:
    return f"{value * 100:+.1f}%"


def flops_table(models: dict, text_tokens: int) -> str:
    """One table per LLM: FLOPs per component (`executed` convention), KV cache per image; the
    ratio is to LLaVA-1.5 mode at the same resolution."""
    parts = []
    for llm, variants in models.items():
        rows = []
        for name, counts in variants.items():
            baseline = variants.get(baseline_of(name), {}).get("prefill_total")
            versus = "-" if not baseline else f"{counts['prefill_total'] / baseline:.3f}"
            rows.append(
                [
                    name,
                    counts["llm_tokens"],
                    tflops(counts["vision_tower"]),
                    tflops(counts["projector"]),
                    tflops(counts["compressor"]),
                    tflops(counts["prefusion"]),
                    tflops(counts["llm_prefill"]),
                    tflops(counts["prefill_total"]),
                    versus,
                    f"{counts['decode_token'] / 1e9:.2f}",
                    f"{counts['kv_cache_bytes_per_image'] / MIB:.3f}",
                    {True: "equal", False: "DIFFERS", None: "-"}[counts.get("meta_check")],
                ]
            )
        headers = [
            "variant",
            "LLM tokens",
            "vision",
            "projector",
            "compressor",
            "pre-fusion",
            "LLM prefill",
            "prefill total",
            "× LLaVA-1.5 mode",
            "decode GFLOPs/token",
            "KV MiB/image (bf16)",
            "meta-device count",
        ]
        parts.append(
            f"**{llm}**, TFLOPs, {text_tokens} text tokens + 1 image, batch 1\n\n"
            + markdown_table(headers, rows)
        )
    return "\n\n".join(parts)


def paper_table(comparison: dict) -> str:
    """Our counts against the paper's Table 14, Table 8 and stated totals."""
    rows = []
    for row in comparison["rows"]:
        rows.append(
            [
                row["variant"],
                row["component"],
                f"{row['paper']:.4g}",
                f"{row['ours_paper']:.4f}",
                percent(row["diff_paper"]),
                "yes" if row["match"] else "**no**",
                f"{row['ours_executed']:.4f}",
                percent(row["diff_executed"]),
            ]
        )
    headers = [
        "variant",
        "component",
        "paper (T)",
        "ours, paper convention (T)",
        "diff",
        "within 5%",
        "ours, executed (T)",
        "diff",
    ]
    return (
        f"{comparison['llm']}, {comparison['text_tokens']} text tokens + 1 image\n\n"
        + markdown_table(headers, rows)
    )


def timing_table(timing: dict) -> str:
    """TTFT, its components, decode speed and peak memory per variant."""
    rows = []
    for name, result in timing["variants"].items():
        components = result["components_ms"]
        rows.append(
            [
                name,
                result["prompt_tokens"],
                f"{result['prefill_gflops']:.1f}",
                f"{result['ttft_ms']:.1f}",
                f"{result['ttft_speedup']:.2f}" if result.get("ttft_speedup") else "-",
                f"{components.get('vision_tower', 0):.1f}",
                f"{components.get('projector', 0) + components.get('compressor', 0):.1f}",
                f"{components.get('prefusion', 0):.1f}",
                f"{components.get('llm_prefill', 0):.1f}",
                f"{result['decode_tokens_per_s']:.1f}",
                f"{result['peak_bytes'] / MIB:.1f}",
                f"{result['kv_cache_bytes'] / MIB:.3f}",
            ]
        )
    headers = [
        "variant",
        "LLM tokens",
        "prefill GFLOPs",
        "TTFT ms",
        "TTFT speed-up",
        "vision ms",
        "proj+compr ms",
        "pre-fusion ms",
        "LLM prefill ms",
        "decode tok/s",
        "peak MiB",
        "KV MiB",
    ]
    header = (
        f"scale {timing['scale']} ({timing['scale_description']}), {timing['device']}, "
        f"{timing['dtype']}, attention {timing['attention']}, {timing['text_tokens']} text tokens, "
        f"{timing['new_tokens']} new tokens, medians of {timing['repeats']} runs after "
        f"{timing['warmup']} warm-up"
    )
    if timing.get("shared_model"):
        header += (
            f"; one model for every variant ({timing['model_path'] or 'random weights'}, "
            f"quantization {timing['quantization'] or 'none'}): loaded in "
            f"{timing['load_s']:.1f} s (process peak RSS then "
            f"{timing['load_peak_rss_bytes'] / 2**30:.2f} GiB), process peak RSS after timing "
            f"{timing['process_peak_rss_bytes'] / 2**30:.2f} GiB"
        )
    return header + "\n\n" + markdown_table(headers, rows)


def fastpath_table(rows: list[dict]) -> str:
    body = []
    for row in rows:
        body.append(
            [
                row["path"],
                row["variant"],
                row["metric"],
                f"{row['before']}: {row['before_value']:.2f}",
                f"{row['after']}: {row['after_value']:.2f}",
                f"{row['speedup']:.2f}×",
                {True: "yes", False: "no", None: "-"}[row["same_output"]],
            ]
        )
    headers = ["fast path", "variant", "metric", "before", "after", "speed-up", "same output"]
    return markdown_table(headers, body)


def video_table(video: dict) -> str:
    rows = [
        [
            row["frames"],
            row["chunk"],
            f"{row['seconds']:.3f}",
            f"{row['frames_per_s']:.1f}",
            "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / MIB:.1f}",
            f"{row['llm_kv_cache_bytes'] / MIB:.3f}",
        ]
        for row in video["rows"]
    ]
    headers = ["frames", "chunk", "encode s", "frames/s", "peak MiB", "LLM KV MiB (bf16)"]
    speedups = ", ".join(f"{f} frames: {s:.2f}×" for f, s in video["batched_speedup"].items())
    rss = video.get("process_peak_rss_bytes")
    rss_text = f"; process peak RSS so far {rss / 2**30:.2f} GiB" if rss else ""
    return (
        f"variant {video['variant']}, scale {video['scale']}; batched over frame by frame: "
        f"{speedups}{rss_text}\n\n" + markdown_table(headers, rows)
    )


def targets_table(targets: list[dict]) -> str:
    rows = [[t["target"], t["measured"], t["status"]] for t in targets]
    return markdown_table(["target", "measured", "status"], rows)


def render(results: dict) -> str:
    """All tables, with section titles, as Markdown."""
    sections = []
    if "flops" in results:
        flops = results["flops"]
        sections.append(
            "## FLOPs per component (real shapes, analytic, executed convention)\n\n"
            + flops_table(flops["models"], flops["text_tokens"])
        )
    if "paper_comparison" in results:
        sections.append(
            "## Against the paper (Table 14, Table 8, §5.2–5.3)\n\n"
            + paper_table(results["paper_comparison"])
        )
    if "timing" in results:
        sections.append("## Time to first token and decode\n\n" + timing_table(results["timing"]))
    if results.get("fast_paths"):
        sections.append(
            "## Fast paths, before and after\n\n" + fastpath_table(results["fast_paths"])
        )
    if "video" in results:
        sections.append("## Video encoding\n\n" + video_table(results["video"]))
    if results.get("targets"):
        sections.append("## Targets of the issue\n\n" + targets_table(results["targets"]))
    return "\n\n".join(sections) + "\n"


def write_json(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=False)
        f.write("\n")


def write_png(results: dict, path: str) -> None:
    """Four panels: FLOPs per component, TTFT, KV cache per image, video frames/s (a panel
    whose section did not run stays empty)."""
    figure = Figure(figsize=(13, 9))
    panels = (
        ("flops", plot_flops),
        ("timing", plot_ttft),
        ("flops", plot_kv_cache),
        ("video", plot_video),
    )
    for axis, (section, plot) in zip(figure.subplots(2, 2).flat, panels, strict=True):
        if section in results:
            plot(axis, results)
        else:
            axis.set_visible(False)
    figure.suptitle(results["meta"]["title"])
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=100)


COMPONENT_LABELS = {
    "vision_tower": "vision tower",
    "projector": "projector",
    "compressor": "compressor",
    "prefusion": "pre-fusion",
    "llm_prefill": "LLM prefill",
}


def _stacked_bars(axis, names: list[str], stacks: dict[str, list[float]]) -> None:
    """One bar per name, stacked from `stacks` (label -> one value per name), bottom first."""
    bottom = [0.0] * len(names)
    for label, values in stacks.items():
        axis.bar(names, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]


def _label_bar_chart(axis, ylabel: str, title: str) -> None:
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.tick_params(axis="x", rotation=30)
    axis.legend(fontsize=8)


def plot_flops(axis, results: dict) -> None:
    """Stacked prefill FLOPs per variant, for the first LLM of the FLOPs section."""
    llm, variants = next(iter(results["flops"]["models"].items()))
    names = list(variants)
    stacks = {
        label: [variants[name][component] / 1e12 for name in names]
        for component, label in COMPONENT_LABELS.items()
    }
    _stacked_bars(axis, names, stacks)
    title = f"FLOPs per component, {llm}, {results['flops']['text_tokens']} text tokens"
    _label_bar_chart(axis, "prefill TFLOPs", title)


def plot_ttft(axis, results: dict) -> None:
    """Measured TTFT per variant, split into components."""
    variants = results["timing"]["variants"]
    names = list(variants)
    stacks = {
        label: [variants[name]["components_ms"].get(component, 0.0) for name in names]
        for component, label in {**COMPONENT_LABELS, "other": "other"}.items()
    }
    _stacked_bars(axis, names, stacks)
    axis.scatter(
        names, [variants[n]["ttft_ms"] for n in names], color="black", label="TTFT", zorder=3
    )
    timing = results["timing"]
    title = f"Time to first token, scale {timing['scale']}, {timing['device']}"
    _label_bar_chart(axis, "ms", title)


def plot_kv_cache(axis, results: dict) -> None:
    """KV-cache MiB per image (bf16), per LLM and variant, log scale."""
    models = results["flops"]["models"]
    width = 0.8 / len(models)
    for index, (llm, variants) in enumerate(models.items()):
        names = list(variants)
        positions = [i + index * width for i in range(len(names))]
        values = [variants[n]["kv_cache_bytes_per_image"] / MIB for n in names]
        axis.bar(positions, values, width=width, label=llm)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30)
    axis.set_yscale("log")
    axis.set_ylabel("MiB per image (log)")
    axis.set_title("KV cache per image (bf16)")
    axis.legend(fontsize=8)


def plot_video(axis, results: dict) -> None:
    """Frames/s of video encoding against the number of frames, one line per chunk size."""
    rows = results["video"]["rows"]
    for chunk in sorted({row["chunk"] for row in rows}):
        points = [(row["frames"], row["frames_per_s"]) for row in rows if row["chunk"] == chunk]
        label = "frame by frame" if chunk == 1 else f"batched, chunk {chunk}"
        axis.plot(*zip(*points, strict=True), marker="o", label=label)
    axis.set_xscale("log")
    axis.minorticks_off()
    frames = sorted({row["frames"] for row in rows})
    axis.set_xticks(frames, [str(f) for f in frames])
    axis.set_ylim(bottom=0)
    axis.set_xlabel("frames")
    axis.set_ylabel("frames/s")
    axis.set_title(
        f"Video encoding, {results['video']['variant']}, scale {results['video']['scale']}"
    )
    axis.legend(fontsize=8)
