"""Pre-fusion's last layer on the read rows only equals the layer run on every row."""

import pytest
import torch

from llavamini.constants import IMAGE_TOKEN_INDEX
from llavamini.model import family_of
from tests.conftest import VOCAB, make_config, random_images


def _model(backbone: str, attn: str, layers: int):
    overrides = {"head_dim": 32} if backbone == "qwen3" else {}
    config = make_config(backbone=backbone, prefusion_layer_num=layers, **overrides)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return family_of(backbone).causal_lm_class(config).eval()


def _padded_batch():
    """Two prompts of different lengths, left-padded, each with one image placeholder."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12), generator=generator)
    ids[:, 2] = IMAGE_TOKEN_INDEX
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    ids[1, 5] = IMAGE_TOKEN_INDEX
    return ids, mask


@pytest.mark.parametrize(
    "backbone, attn, layers",
    [("llama", "sdpa", 2), ("llama", "eager", 1), ("qwen3", "sdpa", 2), ("qwen2", "eager", 2)],
)
def test_read_rows_only_equals_every_row(backbone, attn, layers):
    model = _model(backbone, attn, layers)
    ids, mask = _padded_batch()
    images = random_images(2)
    labels = ids.masked_fill(mask == 0, -100)
    outputs = {}
    for skip in (True, False):
        model.model.prefusion_layers.skip_unread_rows = skip
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, images=images, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outputs[skip] = (out.logits.detach(), grads)
    (fast, fast_grads), (full, full_grads) = outputs[True], outputs[False]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(fast_grads[name], full_grads[name], atol=1e-5, rtol=1e-4)


def test_only_the_read_rows_go_through_the_last_mlp():
    """The last layer's MLP sees compressed + text rows; the first layer's sees every row."""
    model = _model("llama", "sdpa", 2)
    ids, mask = _padded_batch()
    rows = {}

    def count(name):
        def hook(module, args, output):
            rows[name] = args[0].shape[1]

        return hook

    layers = model.model.prefusion_layers
    handles = [layers[i].mlp.register_forward_hook(count(i)) for i in (0, 1)]
    # A hook on the last attention (a profiler's, say) does not change which path runs.
    handles.append(layers[1].self_attn.register_forward_pre_hook(lambda module, args: None))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, images=random_images(2))
        context = model.model.vision_tower.grid_size**2
        read = 1 + ids.shape[1]  # one compressed token + the prompt
        assert rows == {0: context + read, 1: read}
        layers.skip_unread_rows = False  # the explicit choice: every row
        model(input_ids=ids, attention_mask=mask, images=random_images(2))
        assert rows == {0: context + read, 1: context + read}
    for handle in handles:
        handle.remove()


def test_gradient_checkpointing_keeps_the_read_rows_right():
    """transformers drops the KV cache of a checkpointed layer in training, so the last layer
    then runs on every row: loss and gradients equal those without checkpointing."""
    ids, mask = _padded_batch()
    images = random_images(2)
    labels = ids.masked_fill(mask == 0, -100)
    results = []
    for checkpointing in (False, True):
        model = _model("llama", "sdpa", 2).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        out = model(input_ids=ids, attention_mask=mask, images=images, labels=labels)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
    (loss, grads), (checkpointed_loss, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-5, rtol=1e-4)
