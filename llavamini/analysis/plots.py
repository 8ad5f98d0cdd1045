"""Figures of the analysis reports (matplotlib figures written to files, without pyplot's global
state), layer on the x axis."""

from __future__ import annotations

import math
import os

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from llavamini.analysis.tokens import GROUPS, QUERY_KINDS

PART_TITLES = {"prefusion": "pre-fusion layers", "llm": "LLM layers"}
GROUP_COLOURS = {"vision": "tab:red", "system": "tab:green", "text": "tab:blue"}
KIND_STYLES = {"text": "-", "answer": "--"}
ATTENTION_MEASURES = {
    "share": "attention per token of the group\n(normalised across groups)",
    "mass": "attention probability on the group",
}


def _values(values: list) -> list[float]:
    return [math.nan if value is None else value for value in values]


def _part_panels(parts: list[str]) -> tuple[Figure, list]:
    """A figure with one panel per part (pre-fusion, LLM), side by side."""
    figure = Figure(figsize=(5.5 * len(parts), 4.2))
    return figure, list(figure.subplots(1, len(parts), squeeze=False)[0])


def _layer_axis(axis, layers: list[int], title: str) -> None:
    axis.set_xlabel("layer")
    axis.set_title(title)
    if len(layers) <= 16:
        axis.set_xticks(layers)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(layers) == 1:
        axis.set_xlim(layers[0] - 0.5, layers[0] + 0.5)
    axis.grid(alpha=0.3)


def _largest(section: dict, measure: str) -> float:
    """The largest finite value of `measure` over the query kinds of a report section."""
    values = [v for k in QUERY_KINDS if k in section for v in section[k][measure]]
    return max((v for v in values if v is not None and math.isfinite(v)), default=0.0)


def _parts(report: dict) -> list[str]:
    return [part for part in ("prefusion", "llm") if part in report]


def plot_attention(report: dict, output_dir: str, title: str = "") -> list[str]:
    """`attention_share.png`, `attention_mass.png` and `vision_entropy.png` (one panel per part:
    pre-fusion, LLM); returns their paths."""
    parts = _parts(report)
    paths = []
    for measure, label in ATTENTION_MEASURES.items():
        figure, axes = _part_panels(parts)
        for axis, part in zip(axes, parts, strict=True):
            section = report[part]
            for kind in (k for k in QUERY_KINDS if k in section):
                for group in GROUPS:
                    axis.plot(
                        section["layers"],
                        _values(section[kind][measure][group]),
                        KIND_STYLES[kind],
                        color=GROUP_COLOURS[group],
                        marker="o",
                        markersize=3,
                        label=f"{kind} -> {group}",
                    )
            axis.set_ylim(-0.02, 1.02)
            axis.set_ylabel(label)
            _layer_axis(axis, section["layers"], PART_TITLES[part])
            axis.legend(fontsize=8)
        paths.append(_save(figure, os.path.join(output_dir, f"attention_{measure}.png"), title))

    figure, axes = _part_panels(parts)
    for axis, part in zip(axes, parts, strict=True):
        section = report[part]
        for kind in (k for k in QUERY_KINDS if k in section):
            axis.plot(
                section["layers"],
                _values(section[kind]["vision_entropy"]),
                KIND_STYLES[kind],
                color="tab:purple",
                marker="o",
                markersize=3,
                label=f"{kind} tokens",
            )
        axis.set_ylim(bottom=0, top=max(1.0, 1.1 * _largest(section, "vision_entropy")))
        axis.set_ylabel("entropy of the attention over vision tokens (nats)")
        _layer_axis(axis, section["layers"], PART_TITLES[part])
        axis.legend(fontsize=8)
    paths.append(_save(figure, os.path.join(output_dir, "vision_entropy.png"), title))
    return paths


def plot_drop_vision(report: dict, path: str, title: str = "") -> str:
    """Accuracy, and the share of answers unchanged, against the first layer without vision
    tokens; the last point (L = number of layers) drops nothing (dashed line)."""
    figure = Figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    layers, baseline = report["layers"], report["baseline_layer"]
    panels = (
        (left, "accuracy", f"{report['task']}: {report.get('metric') or 'accuracy'}"),
        (right, "same_answer", "answers identical to the no-drop answers (%)"),
    )
    for axis, key, label in panels:
        values = _values(report[key])
        axis.plot(layers, values, marker="o", color="tab:red", label="vision dropped from L on")
        if baseline in layers:
            axis.axhline(
                values[layers.index(baseline)],
                linestyle="--",
                color="grey",
                label=f"no drop (L = {baseline})",
            )
        finite = [v for v in values if math.isfinite(v)]
        axis.set_ylim(bottom=min([0.0, *finite]), top=max([1.0, *finite]) * 1.05)
        axis.set_ylabel(label)
        _layer_axis(axis, layers, "")
        axis.set_xlabel("L (first LLM layer without vision tokens)")
        axis.legend(fontsize=8)
    return _save(figure, path, title or "vision tokens dropped from layer L on")


def _save(figure, path: str, title: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
