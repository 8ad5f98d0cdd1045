"""The quickstart's results table and figures (loss curves, accuracy per question type)."""

from __future__ import annotations

import os

from matplotlib.figure import Figure


def summary_table(rows: list[dict], baseline: dict) -> str:
    """One line per row (`label`, `vision_tokens`, `accuracy`, `per_type`, `flops`, `ttft_ms`;
    or `label` and `skipped`, the reason it did not run), under the majority baseline."""
    types = sorted(baseline)
    header = (
        f"{'variant':32} {'LLM vision tokens':>17} {'overall':>8} "
        + " ".join(f"{t:>9}" for t in types)
        + f" {'MFLOPs/question':>15} {'TTFT ms':>9}"
    )
    lines = [header, "-" * len(header)]
    base = f"{'majority baseline':32} {'':>17} {'':>8} " + " ".join(
        f"{baseline[t]:>9.1f}" for t in types
    )
    lines.append(base)
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['label']:32} not run: {row['skipped']}")
            continue
        per_type = " ".join(f"{row['per_type'].get(t, 0):>9.1f}" for t in types)
        lines.append(
            f"{row['label']:32} {row['vision_tokens']:>17} {row['accuracy']:>8.1f} "
            f"{per_type} {row['flops'] / 1e6:>15.1f} {row['ttft_ms']:>9.1f}"
        )
    return "\n".join(lines)


def plot_results(results: dict, curves: dict, baseline: dict, output_dir: str) -> list[str]:
    """Loss curves and per-type accuracy bars as PNGs."""
    paths = []
    # Figure objects, not pyplot: no global backend is chosen for the process.
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    for name, curve in curves.items():
        if curve:
            steps, values = zip(*curve, strict=True)
            axis.plot(steps, values, label=name)
    # Log scale: the variants part where the loss is already small.
    axis.set(
        xlabel="step",
        ylabel="training loss (log scale)",
        yscale="log",
        title="Loss (stage 1, then each variant)",
    )
    if any(curves.values()):
        axis.legend()
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "loss_curves.png"))
    figure.savefig(paths[-1], dpi=100)

    types = sorted(baseline)
    figure = Figure(figsize=(8, 4))
    axis = figure.subplots()
    width = 0.8 / (len(results) + 1)
    positions = range(len(types))
    axis.bar(
        [p - 0.4 + width / 2 for p in positions],
        [baseline[t] for t in types],
        width,
        label="majority baseline",
        color="lightgrey",
    )
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
    return paths
