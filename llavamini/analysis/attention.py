"""Where text and answer tokens look, layer by layer: vision, system prompt or other text.

For each sample (an image question, answered greedily unless the data file gives the answer) the
prompt and the answer are run once through the model with an `AttentionRecorder` on every LLM
layer and every pre-fusion layer. For each query row of a kind (text: the prompt's tokens after
the image, i.e. the question and the assistant header; answer: the answer tokens the model
reads, i.e. all but the last generated one) and each key group g (vision; system: the template's
system segment and a BOS before it; text: every other token, the user header before the image
and earlier answer tokens included), with the attention averaged over heads:

    mass_g  = sum of the attention probabilities on the group's visible keys      (sums to 1)
    share_g = (mass_g / n_g) / sum_h (mass_h / n_h),  n_g = visible keys of g      (sums to 1)
    vision entropy = -sum_j p_j log p_j over the visible vision keys, p renormalised to sum to
                     one there, computed per head then averaged over heads (nats); also divided
                     by log(number of vision keys) when there are at least two

`share` is the paper's per-token normalisation: a group with one token that gets 10 % of the
attention outweighs a group of 500 tokens that gets 50 %. A group a row cannot see (no system
prompt, say) has share 0 for that row. Layer values average over every row of the kind in every
sample. In pre-fusion the sequence is `[vision context; compressed tokens; prompt text]`, both
vision parts count as vision, and only text rows exist (answers never enter pre-fusion).

Shape notation: S sequence, H heads, R query rows, G = 3 key groups.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from llavamini.analysis.recorder import (
    DEFAULT_MAX_ELEMENTS,
    AttentionInputs,
    AttentionRecorder,
    recompute_attention,
    row_chunks,
)
from llavamini.analysis.tokens import (
    ANSWER,
    BEFORE_IMAGE,
    GROUPS,
    KIND_CODES,
    QUERY_KINDS,
    SYSTEM,
    TEXT,
    VISION,
    AnalysisSample,
    PromptTokens,
    given_answer_ids,
    key_groups,
    llm_kinds,
    prefusion_kinds,
    prompt_tokens,
    system_text,
)
from llavamini.conversation import get_template
from llavamini.data.video import media_kind
from llavamini.inference import GenerationSettings, generate_ids

logger = logging.getLogger(__name__)


# ---- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowStatistics:
    """Per query row (R rows, G groups).

    Attributes:
        mass: `(R, G)` attention probability on each group (head-averaged).
        share: `(R, G)` per-token attention of each group, normalised across groups.
        visible_tokens: `(R, G)` keys of each group the row can attend to.
        vision_entropy: `(R,)` nats over the visible vision keys (head-mean; NaN if none).
    """

    mass: torch.Tensor
    share: torch.Tensor
    visible_tokens: torch.Tensor
    vision_entropy: torch.Tensor


def attention_statistics(
    probs: torch.Tensor, visible: torch.Tensor, groups: torch.Tensor
) -> RowStatistics:
    """The measures of the module docstring for some query rows.

    Args:
        probs: `(H, R, S)` attention probabilities.
        visible: `(R, S)` bool, the keys each row may attend to.
        groups: `(S,)` group index into `GROUPS` of each key (-1: none).
    """
    one_hot = torch.zeros(groups.shape[0], len(GROUPS), device=probs.device)
    member = groups >= 0
    one_hot[member.nonzero().flatten(), groups[member]] = 1.0
    visible = visible.float()
    mass = (probs.mean(0) * visible) @ one_hot  # (R, G)
    counts = visible @ one_hot
    per_token = torch.where(counts > 0, mass / counts.clamp(min=1), torch.zeros_like(mass))
    share = per_token / per_token.sum(-1, keepdim=True)

    vision_keys = (groups == GROUPS.index("vision")).to(probs.device)
    on_vision = probs[:, :, vision_keys] * visible[:, vision_keys]  # (H, R, V)
    p = on_vision / on_vision.sum(-1, keepdim=True)
    entropy = -torch.special.xlogy(p, p).sum(-1).mean(0)  # (R,), NaN where nothing is visible
    return RowStatistics(mass, share, counts, entropy)


class LayerTotals:
    """Running sums of `RowStatistics` over the rows of one query kind in one layer."""

    def __init__(self):
        self.rows = 0
        self.mass = torch.zeros(len(GROUPS), dtype=torch.float64)
        self.share = torch.zeros(len(GROUPS), dtype=torch.float64)
        self.seen = torch.zeros(len(GROUPS), dtype=torch.long)
        self.entropy = [0.0, 0]
        self.entropy_normalised = [0.0, 0]

    def add(self, stats: RowStatistics) -> None:
        self.rows += stats.mass.shape[0]
        self.mass += stats.mass.sum(0).double().cpu()
        self.share += stats.share.sum(0).double().cpu()
        self.seen += (stats.visible_tokens > 0).sum(0).cpu()
        entropy = stats.vision_entropy.double().cpu()
        defined = ~entropy.isnan()
        self.entropy[0] += float(entropy[defined].sum())
        self.entropy[1] += int(defined.sum())
        num_vision = stats.visible_tokens[:, GROUPS.index("vision")].double().cpu()
        usable = defined & (num_vision > 1)
        self.entropy_normalised[0] += float((entropy[usable] / num_vision[usable].log()).sum())
        self.entropy_normalised[1] += int(usable.sum())

    def summary(self) -> dict:
        """Means over the rows; a group no row could see is None."""

        def mean(total: torch.Tensor) -> dict:
            return {
                group: float(total[g]) / self.rows if self.seen[g] else None
                for g, group in enumerate(GROUPS)
            }

        return {
            "rows": self.rows,
            "share": mean(self.share),
            "mass": mean(self.mass),
            "vision_entropy": _ratio(*self.entropy),
            "vision_entropy_normalised": _ratio(*self.entropy_normalised),
        }


def _ratio(total: float, count: int) -> float | None:
    return total / count if count else None


class AttentionCollector:
    """The recorder's handler: recomputes the rows of each kind and adds their statistics.

    `layouts[part]` gives the `(S,)` token kinds of the sequence that part (`"llm"`,
    `"prefusion"`) runs over, from its length; set it before each sample's forward.
    """

    def __init__(self, max_elements: int = DEFAULT_MAX_ELEMENTS):
        self.max_elements = max_elements
        self.layouts: dict[str, Callable[[int], torch.Tensor]] = {}
        self.totals: dict[str, dict[str, LayerTotals]] = {}

    def __call__(self, name: str, module: torch.nn.Module, inputs: AttentionInputs) -> None:
        part = name.split(".")[0]
        length = inputs.sequence_length
        kinds = self.layouts[part](length)
        if kinds.shape[0] != length:
            raise ValueError(
                f"{name} ran over {length} positions but the sample's layout has "
                f"{kinds.shape[0]}: the recorded forward is not the one the layout describes."
            )
        groups = key_groups(kinds).to(inputs.hidden_states.device)
        heads = module.config.num_attention_heads
        for kind, code in KIND_CODES.items():
            rows = (kinds == code).nonzero().flatten()
            if len(rows) == 0:
                continue
            totals = self.totals.setdefault(name, {}).setdefault(kind, LayerTotals())
            for chunk in row_chunks(rows, heads, length, self.max_elements):
                probs, visible = recompute_attention(module, inputs, chunk)
                for b in range(probs.shape[0]):  # pre-fusion runs a video's frames as a batch
                    totals.add(attention_statistics(probs[b], visible[b], groups))

    def summary(self, part: str, num_layers: int) -> dict:
        """`{"layers": [...], kind: {"rows", "share": {group: [per layer]}, ...}}` of a part."""
        layers = list(range(num_layers))
        result: dict = {"layers": layers}
        for kind in QUERY_KINDS:
            per_layer = [self.totals.get(f"{part}.{i}", {}).get(kind) for i in layers]
            if all(totals is None for totals in per_layer):
                continue
            summaries = [t.summary() if t is not None else None for t in per_layer]
            result[kind] = _transpose(summaries)
        return result


def _transpose(summaries: list[dict | None]) -> dict:
    """Per-layer summaries -> one list per measure (and per group)."""

    def column(get) -> list:
        return [get(s) if s is not None else None for s in summaries]

    return {
        "rows": column(lambda s: s["rows"]),
        "share": {g: column(lambda s, g=g: s["share"][g]) for g in GROUPS},
        "mass": {g: column(lambda s, g=g: s["mass"][g]) for g in GROUPS},
        "vision_entropy": column(lambda s: s["vision_entropy"]),
        "vision_entropy_normalised": column(lambda s: s["vision_entropy_normalised"]),
    }


# ---- running the model -----------------------------------------------------------------------


def generate_answer_ids(loaded, prompt: PromptTokens, visual: torch.Tensor, template, limit: int):
    """Greedy answer token ids (the stop token included when reached): the processor's batch of
    the prompt answered by `inference.generate_ids`, the call every answer goes through.

    Raises `ValueError` when the processor tokenizes `prompt.text` other than `prompt`."""

    inputs = loaded.processor.model_inputs([prompt.text], [[visual]])
    if inputs["input_ids"][0].tolist() != prompt.input_ids:
        raise ValueError(
            "The processor tokenizes the analysed prompt differently: the token kinds would "
            "not describe the generated sequence."
        )
    settings = GenerationSettings(max_new_tokens=limit)
    return generate_ids(loaded, inputs, settings, template)[0].tolist()


def run_sample(
    loaded, prompt: PromptTokens, visual: torch.Tensor, collector: AttentionCollector
) -> dict:
    """One forward over prompt + answer (all answer tokens but the last, which the model never
    reads) with the recorder on every attention module; returns the sample's token counts.

    The prompt is embedded as generation embeds it (pre-fusion over the prompt only), and the
    answer tokens get their plain embeddings, as in the decode steps of generation.
    """
    model = loaded.model
    device = model.device
    ids = torch.tensor([prompt.input_ids], device=device)
    answer = torch.tensor([prompt.answer_ids[:-1]], dtype=torch.long, device=device)
    collector.layouts["prefusion"] = lambda length: prefusion_kinds(prompt, length)
    with AttentionRecorder(model, collector), torch.no_grad():
        spliced = model.model.embed_multimodal(
            ids,
            torch.ones_like(ids),
            None,
            [[visual]],
            padding_side="left",
            return_vision_mask=True,
        )
        kinds = llm_kinds(prompt, spliced.vision_mask[0], answer.shape[1])
        collector.layouts["llm"] = lambda length: kinds
        embeds = torch.cat([spliced.inputs_embeds, model.model.embed_tokens(answer)], dim=1)
        length = embeds.shape[1]
        positions = torch.arange(length, device=device)[None]
        model(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, length, dtype=torch.long, device=device),
            position_ids=positions,
            use_cache=False,
            logits_to_keep=1,
        )
    names = (
        ("vision", VISION),
        ("system", SYSTEM),
        ("text_before_image", BEFORE_IMAGE),
        ("text", TEXT),
        ("answer", ANSWER),
    )
    return {name: int((kinds == code).sum()) for name, code in names}


def analyze_attention(
    loaded,
    samples: Sequence[AnalysisSample],
    conv_mode: str = "llava_llama_3_1",
    max_new_tokens: int = 32,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> dict:
    """The attention report of the module docstring over `samples` (a JSON-ready dict)."""

    model, tokenizer = loaded.model, loaded.tokenizer
    template = get_template(conv_mode)
    system = system_text(template, tokenizer)
    collector = AttentionCollector(max_elements)
    counts: dict[str, int] = {}
    details = []
    for sample in samples:
        visual = loaded.processor.process(media_kind(sample.image), sample.image)
        visual = visual.to(model.device, model.dtype)
        prompt = prompt_tokens(template, tokenizer, sample.user_message, sample.sample_id, system)
        if sample.answer is None:
            answer_ids = generate_answer_ids(loaded, prompt, visual, template, max_new_tokens)
        else:
            answer_ids = given_answer_ids(
                template, tokenizer, prompt, sample.user_message, sample.answer, sample.sample_id
            )
        prompt = PromptTokens(prompt.text, prompt.input_ids, prompt.kinds, answer_ids)
        for name, count in run_sample(loaded, prompt, visual, collector).items():
            counts[name] = counts.get(name, 0) + count
        details.append(
            {
                "id": sample.sample_id,
                "image": sample.image,
                "answer": tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
                "answer_given": sample.answer is not None,
            }
        )
    report = {
        "samples": len(samples),
        "conv_mode": conv_mode,
        "groups": list(GROUPS),
        "tokens_per_sample": {k: v / max(1, len(samples)) for k, v in counts.items()},
        "llm": collector.summary("llm", len(model.model.layers)),
    }
    if len(model.model.prefusion_layers):
        report["prefusion"] = collector.summary("prefusion", len(model.model.prefusion_layers))
    report["details"] = details
    return report


def summary_lines(report: dict) -> list[str]:
    """A per-layer table of the vision share (and entropy) for the terminal."""
    lines = []
    for part in ("prefusion", "llm"):
        if part not in report:
            continue
        section = report[part]
        kinds = [k for k in QUERY_KINDS if k in section]
        header = f"{part:9} layer " + " ".join(f"{k + '->vision':>14}" for k in kinds)
        header += " " + " ".join(f"{k + ' entropy':>14}" for k in kinds)
        lines += [header, "-" * len(header)]
        for i in section["layers"]:
            shares = [section[k]["share"]["vision"][i] for k in kinds]
            entropies = [section[k]["vision_entropy"][i] for k in kinds]
            lines.append(
                f"{'':9} {i:5} "
                + " ".join(f"{_fmt(v):>14}" for v in shares)
                + " "
                + " ".join(f"{_fmt(v):>14}" for v in entropies)
            )
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
