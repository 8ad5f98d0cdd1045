"""`ModelSpec.quantization` on a CPU (torchao): the weights are quantized, the skip table is kept
unquantized, the logits stay close to the unquantized model's, `generate` runs, and bad
combinations are refused with a message that says what to do."""

import gc
import os

import pytest
import torch
import torch.nn.functional as F

from llavamini.model import checkpoint as checkpoint_module
from llavamini.model import int8_linear, loading
from llavamini.model.loading import (
    CPU_FLOAT32_MODULES,
    QUANTIZATION_SKIP_MODULES,
    ModelLoadError,
    ModelSpec,
)
from tests.conftest import (
    bfloat16_logits,
    build_quantization_checkpoint,
    needs_torchao,
    quantization_inputs,
)

needs_torchao()

ERROR_BOUNDS = {"8bit": (0.995, 0.85), "4bit": (0.75, 0.2)}
"""Quantization -> (least mean cosine of the logits, least top-1 agreement) against bfloat16.
Measured on this checkpoint (random weights, 3 decoder layers of width 256), for two draws of
its random weights: 8-bit 0.9985 / 0.94; 4-bit 0.833 / 0.40 and 0.814 / 0.29 (top-1 among a
random model's near-tied logits moves with the draw). A wrong scale or layout leaves the hidden
states unrelated to the reference's: a cosine near 0, top-1 near chance (1 / 500)."""


@pytest.fixture(autouse=True)
def torchao_only(monkeypatch):
    """These are torchao's tests: the whole model in torch, as where llama-cpp-python is not
    installed (the LLM through llama.cpp is `test_llama_cpp.py`'s)."""
    monkeypatch.setattr(loading, "llama_cpp_available", lambda: False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return build_quantization_checkpoint(str(tmp_path_factory.mktemp("quant") / "tiny"))


@pytest.fixture(scope="module")
def inputs():
    return quantization_inputs()


@pytest.fixture(scope="module")
def reference_logits(checkpoint, inputs):
    return bfloat16_logits(checkpoint, inputs)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_cpu_quantization_close_to_bfloat16(checkpoint, inputs, reference_logits, quantization):
    from torchao.utils import TorchAOBaseTensor

    model = ModelSpec(checkpoint, device="cpu", quantization=quantization).load().model
    quantized = {
        name
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), TorchAOBaseTensor)
    }
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    skipped = {n for n in linears if n.startswith(tuple(QUANTIZATION_SKIP_MODULES))}
    assert quantized == linears - skipped and len(quantized) > 10
    for name in CPU_FLOAT32_MODULES:
        assert {p.dtype for p in model.get_submodule(name).parameters()} == {torch.float32}
    assert model.lm_head.weight.dtype == torch.bfloat16

    with torch.inference_mode():
        logits = model(input_ids=inputs[0], images=inputs[1]).logits.float()
    cosine = F.cosine_similarity(logits, reference_logits, dim=-1).mean().item()
    top1 = (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()
    least_cosine, least_top1 = ERROR_BOUNDS[quantization]
    assert cosine >= least_cosine and top1 >= least_top1, (cosine, top1)

    gc.collect()
    if os.path.exists("/proc/self/maps"):  # Linux: the loaded model maps no checkpoint file
        with open("/proc/self/maps") as f:
            assert checkpoint not in f.read()


def test_cpu_quantization_generates(checkpoint, inputs):
    model = ModelSpec(checkpoint, device="cpu", quantization="4bit").load().model
    prompt, image = inputs[0][:1], inputs[1][:1]
    new = model.generate(inputs=prompt, images=image, max_new_tokens=3, min_new_tokens=3)
    assert new.shape == (1, 3)


def test_8bit_runs_atens_int8_kernel(checkpoint, inputs, reference_logits, monkeypatch):
    """Every 8-bit linear takes ATen's int8 kernel, with torchao's parameters and keys; without
    the kernel (a torch that lacks the private operator) the same model takes torchao's path.
    Both are as close to bfloat16 (measured: mean logit cosine 0.9982 with the kernel, 0.9981
    without; 0.9997 between them, bfloat16 rounding compounded over the layers)."""
    taken = {}  # linear -> whether each of its calls took the kernel
    applies = int8_linear.int8_kernel_applies

    def spy(x, linear):
        taken.setdefault(linear, []).append(applies(x, linear))
        return taken[linear][-1]

    monkeypatch.setattr(int8_linear, "int8_kernel_applies", spy)
    spec = ModelSpec(checkpoint, device="cpu", quantization="8bit")
    model = spec.load().model
    kernel_linears = [m for m in model.modules() if isinstance(m, int8_linear.Int8KernelLinear)]
    with torch.inference_mode():
        logits = model(input_ids=inputs[0], images=inputs[1]).logits.float()
    assert len(kernel_linears) > 10 and set(taken) == set(kernel_linears)
    assert all(all(calls) for calls in taken.values())

    monkeypatch.setattr(int8_linear, "int8_kernel_available", lambda: False)
    torchao_model = spec.load().model
    assert not any(isinstance(m, int8_linear.Int8KernelLinear) for m in torchao_model.modules())
    assert model.state_dict().keys() == torchao_model.state_dict().keys()
    with torch.inference_mode():
        torchao_logits = torchao_model(input_ids=inputs[0], images=inputs[1]).logits.float()

    def cosine(a, b):
        return F.cosine_similarity(a, b, dim=-1).mean().item()

    assert cosine(logits, torchao_logits) > 0.999
    assert cosine(logits, reference_logits) > cosine(torchao_logits, reference_logits) - 1e-3


def test_int8_kernel_leaves_gradients_to_torchao():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    linear = torch.nn.Linear(256, 64, dtype=torch.bfloat16)
    quantize_(linear, Int8WeightOnlyConfig(set_inductor_config=False))
    kernel_linear = int8_linear.Int8KernelLinear.from_linear(linear)
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = linear(x).float()
        assert int8_linear.int8_kernel_applies(x, kernel_linear)
        out = kernel_linear(x).float()
    assert out.shape == (3, 5, 64)
    assert F.cosine_similarity(out.flatten(), expected.flatten(), dim=0) > 0.9999
    x.requires_grad_()
    assert not int8_linear.int8_kernel_applies(x, kernel_linear)
    kernel_linear(x).sum().backward()
    assert x.grad is not None


def test_cpu_quantization_reads_the_files_per_tensor(checkpoint, monkeypatch):
    """Each tensor is read through a mapping of its own (a quantized weight's pages leave the
    process's RSS with it), and the model equals a load that maps the files throughout."""
    reads = []
    real = checkpoint_module.per_tensor_state_dict
    monkeypatch.setattr(
        checkpoint_module, "per_tensor_state_dict", lambda path: reads.append(path) or real(path)
    )
    spec = ModelSpec(checkpoint, device="cpu", quantization="4bit")
    model = spec.load().model
    assert reads == [checkpoint]
    monkeypatch.setattr(
        checkpoint_module, "load_weights", mapped_reads(checkpoint_module.load_weights)
    )
    mapped = spec.load().model
    assert reads == [checkpoint]
    ids = torch.randint(6, 400, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, mapped(input_ids=ids).logits)


def mapped_reads(load_weights):
    """`load_weights` that always memory-maps (what a load without quantization does)."""
    return lambda load, name, folder, file_reads, *args, **kwargs: load_weights(
        load, name, folder, "map", *args, **kwargs
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(device="cpu", quantization="4bit", dtype="float32"), r"bfloat16.*drop --dtype"),
        (dict(device="mps", quantization="8bit"), r"not on 'mps'.*--device cpu"),
        (dict(device="cuda", quantization="8bit"), r"no CUDA GPU.*--device cpu"),
    ],
)
def test_bad_combinations_refused(checkpoint, spec, message):
    if spec["device"] == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ModelLoadError, match=message):
        ModelSpec(checkpoint, **spec).load()


def test_missing_torchao_names_the_install(checkpoint, monkeypatch):
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "torchao" else real(name, *a)
    )
    with pytest.raises(ModelLoadError, match=r"torchao.*pip install"):
        ModelSpec(checkpoint, device="cpu", quantization="8bit").load()
