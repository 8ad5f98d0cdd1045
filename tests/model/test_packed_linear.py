"""The vision tower's MKL-packed linears: same parameters and keys as `nn.Linear`, the same
results to float32 rounding, and a plain linear wherever packing does not apply."""

import copy
import io

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig

from llavamini.model.packed_linear import PackedLinear, mkl_packing_available, pack_linears
from llavamini.model.vision_tower import VisionTower

needs_mkl = pytest.mark.skipif(not mkl_packing_available(), reason="torch built without MKL")

ROWS = 5


def linear_pair(seed: int = 0) -> tuple[nn.Linear, PackedLinear]:
    torch.manual_seed(seed)
    linear = nn.Linear(16, 24)
    return linear, PackedLinear.from_linear(linear, ROWS)


def counting_packs(monkeypatch) -> list[int]:
    """Counts the calls of MKL's packing op (the packed path was taken)."""
    calls = []
    reorder = torch.ops.mkl._mkl_reorder_linear_weight

    def counted(weight, rows):
        calls.append(rows)
        return reorder(weight, rows)

    monkeypatch.setattr(torch.ops.mkl, "_mkl_reorder_linear_weight", counted)
    return calls


@needs_mkl
def test_packed_path_agrees_with_linear_and_packs_once(monkeypatch):
    linear, packed = linear_pair()
    packs = counting_packs(monkeypatch)
    x = torch.randn(1, ROWS, 16)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
    assert packs == [ROWS]


@needs_mkl
def test_copies_and_pickles_leave_the_packing_out():
    linear, packed = linear_pair()
    x = torch.randn(ROWS, 16)
    with torch.no_grad():
        expected = packed(x)
        buffer = io.BytesIO()
        torch.save(packed, buffer)
        buffer.seek(0)
        for clone in (copy.deepcopy(packed), torch.load(buffer, weights_only=False)):
            assert clone._packed is None
            torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)


@needs_mkl
def test_a_changed_weight_is_packed_again(monkeypatch):
    linear, packed = linear_pair()
    packs = counting_packs(monkeypatch)
    x = torch.randn(ROWS, 16)
    with torch.no_grad():
        packed(x)
        linear.weight.mul_(2)  # the shared parameter, written in place
        torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
    assert packs == [ROWS, ROWS]


@needs_mkl
@pytest.mark.parametrize("case", ["other row count", "gradient", "float64"])
def test_plain_linear_where_packing_does_not_apply(monkeypatch, case):
    linear, packed = linear_pair()
    packs = counting_packs(monkeypatch)
    x = torch.randn(ROWS + 1 if case == "other row count" else ROWS, 16)
    if case == "float64":
        linear.double()
        x = x.double()
    if case == "gradient":
        out = packed(x)
        out.sum().backward()
        assert linear.weight.grad is not None
    else:
        with torch.no_grad():
            out = packed(x)
    assert torch.equal(out, linear(x))
    assert packs == []


@needs_mkl
def test_frozen_linear_without_bias_packs_with_gradients_on(monkeypatch):
    torch.manual_seed(0)
    linear = nn.Linear(16, 24, bias=False).requires_grad_(False)
    packed = PackedLinear.from_linear(linear, ROWS)
    packs = counting_packs(monkeypatch)
    x = torch.randn(ROWS, 16)
    torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
    assert packs == [ROWS]


def test_pack_linears_keeps_parameters_and_keys():
    block = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Sequential(nn.Linear(8, 4)))
    attention = nn.MultiheadAttention(4, 2)
    block.append(attention)
    before = dict(block.state_dict())
    assert pack_linears(block, rows=3) == 2
    assert isinstance(block[0], PackedLinear) and isinstance(block[2][0], PackedLinear)
    assert type(attention.out_proj) is not PackedLinear  # a subclass MultiheadAttention reads
    after = block.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], before[key]) for key in before)


@needs_mkl
def test_tower_packs_its_blocks_for_one_image_once_asked(monkeypatch):
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=28, patch_size=14, hidden_act="quick_gelu",
    )  # fmt: skip
    torch.manual_seed(0)
    tower = VisionTower(config, select_layer=-2, select_feature="patch").eval()
    assert tower.tokens_per_image == 5  # 2 x 2 patches + the class token
    images = torch.randn(3, 3, 28, 28)
    packs = counting_packs(monkeypatch)
    with torch.no_grad():
        unpacked = tower(images[:1])
    assert packs == []  # opt-in: nothing packed by default
    assert tower.pack_weights() == 3 * 6 and tower.pack_weights() == 0
    first_linear = tower.encoder.encoder.layers[0].self_attn.q_proj

    def packed_before_forward(module, args):
        assert len(packs) == 2 * 6  # all made before the encoder allocates anything

    hook = tower.encoder.register_forward_pre_hook(packed_before_forward)
    with torch.no_grad():
        alone = torch.cat([tower(image[None]) for image in images])
        assert len(packs) == 2 * 6  # the 2 blocks that run (of 3), 6 linears each, packed once
        assert first_linear._packed is not None
        hook.remove()
        batch = tower(images)  # 15 rows: the plain path
        assert len(packs) == 12
        tower.double()  # packing does not apply either
        plain = tower(images.double()).float()
    torch.testing.assert_close(alone, batch, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[:1], unpacked, rtol=1e-5, atol=1e-5)
