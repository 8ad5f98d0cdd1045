"""Training-free token reduction (llavamini.model.reduction): equal to the authors' code on the
fixtures of tests/fixtures/reduction (see its README for how they were made), and applied by the
model without touching its default path."""

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig

from llavamini.model.reduction import (
    METHODS,
    Method,
    TokenReduction,
    TokenReductionError,
    VisionEvidence,
    fastv,
    prumerge_plus,
    visionzip,
)
from llavamini.model.vision_tower import VisionTower
from tests.conftest import make_model, random_images
from tests.model.test_model import PROMPT_A, PROMPT_B, greedy, left_pad

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reduction"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "token_reduction.md"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def seeded_tower(clip: dict, std: float, seed: int) -> VisionTower:
    """The fixtures' CLIP: parameters in sorted name order drawn from one seeded generator."""
    tower = VisionTower(CLIPVisionConfig(**clip), -2, "patch").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(tower.encoder.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return tower


def seeded_image(clip: dict, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, clip["image_size"], clip["image_size"], generator=generator)


def evidence_for(data: dict, case: dict) -> VisionEvidence:
    tower = seeded_tower(data["clip"], data["weight_std"], case["weights_seed"])
    with torch.no_grad():
        return VisionEvidence.from_tower(tower, seeded_image(data["clip"], case["image_seed"]))


VISIONZIP = fixture("visionzip")
PRUMERGE = fixture("prumerge_plus")
FASTV = fixture("fastv")


@pytest.mark.parametrize("case", VISIONZIP["cases"], ids=lambda c: f"w{c['weights_seed']}")
def test_visionzip_equals_the_authors_code(case):
    assert visionzip.split_budget(case["budget"]) == (case["dominant"], case["contextual"])
    with torch.no_grad():
        reduced = visionzip.reduce(
            evidence_for(VISIONZIP, case), TokenReduction("visionzip", case["budget"])
        )
    dominant = reduced.kept[0, : case["dominant"]].tolist()
    assert dominant == case["kept"]
    torch.testing.assert_close(
        reduced.tokens[0], torch.tensor(case["tokens"]), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("case", PRUMERGE["cases"], ids=lambda c: f"w{c['weights_seed']}")
def test_prumerge_plus_equals_the_authors_code(case):
    evidence = evidence_for(PRUMERGE, case)
    with torch.no_grad():
        reduced = prumerge_plus.reduce(evidence, TokenReduction("prumerge_plus"))
    assert (reduced.kept[0] - 1).tolist() == case["kept"]  # their indices count patches only
    torch.testing.assert_close(
        reduced.tokens[0], torch.tensor(case["tokens"]), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("case", FASTV["cases"], ids=lambda c: f"s{c['seed']}")
def test_fastv_selection_equals_the_authors_code(case):
    generator = torch.Generator().manual_seed(case["seed"])
    length = case["length"]
    attention = torch.randn(1, case["heads"], length, length, generator=generator).softmax(-1)
    vision = torch.arange(case["sys_length"], case["sys_length"] + case["image_tokens"])
    kept = fastv.select(attention[0, :, -1], vision, case["rank"])
    assert kept.tolist() == case["kept"]


def test_fixtures_cover_at_least_three_inputs_per_method():
    for data in (VISIONZIP, PRUMERGE, FASTV):
        assert len(data["cases"]) >= 3


LLAVA_15 = {"compressor_type": "none", "prefusion_layer_num": 0}


@pytest.fixture(scope="module")
def llava15():
    return make_model(**LLAVA_15)


@pytest.mark.parametrize(
    ("reduction", "vision_tokens"),
    [
        (TokenReduction("pool", 4), 4),
        (TokenReduction("pool", 1), 1),
        (TokenReduction("random", 4, seed=3), 4),
        (TokenReduction("visionzip", 4), 4),
        (TokenReduction("visionzip", 12), 12),
        (TokenReduction("prumerge_plus", 4), 4),
        (TokenReduction("fastv", 4, fastv_layer=1), 4),
    ],
    ids=lambda value: f"{value.method}-{value.tokens}" if isinstance(value, TokenReduction) else "",
)
def test_each_method_gives_its_budget_and_then_leaves_the_model_as_it_was(
    llava15, reduction, vision_tokens
):
    ids, mask = left_pad([PROMPT_A, PROMPT_B])
    images = random_images(2)
    before = greedy(llava15, ids, mask, images)
    reduced = llava15.generate(
        inputs=ids,
        attention_mask=mask,
        images=images,
        token_reduction=reduction,
        do_sample=False,
        max_new_tokens=3,
        pad_token_id=0,
    )
    assert reduced.shape[0] == 2
    llava15.set_token_reduction(reduction)
    try:
        out = llava15(torch.tensor([PROMPT_A]), images=random_images(1))
    finally:
        llava15.set_token_reduction(None)
    assert out.logits.shape[1] == len(PROMPT_A) - 1 + vision_tokens
    assert torch.equal(greedy(llava15, ids, mask, images), before)


def test_fastv_keeping_every_vision_token_is_the_plain_model(llava15):
    ids, mask = left_pad([PROMPT_A, PROMPT_B])
    images = random_images(2)
    every = llava15.model.vision_tower.grid_size**2
    plain = greedy(llava15, ids, mask, images)
    llava15.set_token_reduction(TokenReduction("fastv", every, fastv_layer=1))
    try:
        assert torch.equal(greedy(llava15, ids, mask, images), plain)
    finally:
        llava15.set_token_reduction(None)


def test_fastv_ranks_by_the_last_tokens_eager_attention_at_layer_k_minus_1():
    model = make_model(**LLAVA_15, num_hidden_layers=3)
    model.config._attn_implementation = "eager"
    ids = torch.tensor([PROMPT_A])
    images = random_images(1)
    with torch.no_grad():
        plain = model(ids, images=images, output_attentions=True)
        model.set_token_reduction(TokenReduction("fastv", 5, fastv_layer=2))
        model(ids, images=images)
    kept = model.model.llm_pruner.kept[0]
    model.set_token_reduction(None)
    start = PROMPT_A.index(-200)
    vision = torch.arange(start, start + model.model.vision_tower.grid_size**2)
    assert torch.equal(kept, fastv.select(plain.attentions[1][0, :, -1], vision, 5))


def test_random_is_seeded_and_pool_needs_a_square_budget(llava15):
    images = random_images(1)
    tower = llava15.model.vision_tower
    evidence = VisionEvidence.from_tower(tower, images[:, 0])
    first = METHODS["random"].reduce(evidence, TokenReduction("random", 5, seed=1)).kept
    again = METHODS["random"].reduce(evidence, TokenReduction("random", 5, seed=1)).kept
    other = METHODS["random"].reduce(evidence, TokenReduction("random", 5, seed=2)).kept
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first[0].tolist() == sorted(first[0].tolist())
    with pytest.raises(TokenReductionError, match="square grid"):
        METHODS["pool"].reduce(evidence, TokenReduction("pool", 5))
    with pytest.raises(TokenReductionError, match="outside 1..16"):
        METHODS["random"].reduce(evidence, TokenReduction("random", 17))


def test_refusals_name_what_is_wrong(llava15):
    with pytest.raises(TokenReductionError, match="compressor_type 'query'"):
        make_model().set_token_reduction(TokenReduction("pool", 4))
    with pytest.raises(TokenReductionError, match="Unknown token reduction 'tome'"):
        llava15.set_token_reduction(TokenReduction("tome", 4))
    with pytest.raises(TokenReductionError, match="integer >= 1"):
        TokenReduction("pool", 0)
    with pytest.raises(TokenReductionError, match="fastv_layer 2 must be below"):
        llava15.set_token_reduction(TokenReduction("fastv", 4, fastv_layer=2))
    assert llava15.model.token_reduction is None


def test_the_docs_example_adds_a_method_with_one_module_and_one_line(llava15, monkeypatch):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    module: dict = {}
    exec(compile(code, str(DOCS), "exec"), module)
    monkeypatch.setitem(METHODS, "first_patches", Method("vision", module["reduce"]))
    llava15.set_token_reduction(TokenReduction("first_patches", 3))
    try:
        out = llava15(torch.tensor([PROMPT_A]), images=random_images(1))
    finally:
        llava15.set_token_reduction(None)
    assert out.logits.shape[1] == len(PROMPT_A) - 1 + 3


def test_a_checkpoint_with_a_compressor_is_refused_before_its_weights_load(
    tiny_checkpoint, monkeypatch
):
    """`ModelSpec.load` reads the checkpoint's config.json first: an 8B model would otherwise
    load for minutes before the refusal."""
    from llavamini.model.loading import ModelSpec

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the reduction was checked")

    monkeypatch.setattr(ModelSpec, "_load", no_weights)
    with pytest.raises(TokenReductionError, match="without a compressor"):
        ModelSpec(tiny_checkpoint, device="cpu", reduction="pool", reduction_tokens=4).load()
