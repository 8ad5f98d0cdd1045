"""The one table of module names (`llavamini.model.modules`) names the model's modules, and the
tables read from it keep the names they had (checkpoint keys and quantization settings are
public)."""

from torch import nn

from llavamini.model.loading import CPU_FLOAT32_MODULES, QUANTIZATION_SKIP_MODULES
from llavamini.model.modules import COMPONENTS, MULTIMODAL_MODULES, key_prefix, module_name
from tests.conftest import make_model


def test_the_table_names_every_module_around_the_llm():
    model = make_model()
    modules = dict(model.named_modules())
    for attribute in COMPONENTS.values():
        assert isinstance(getattr(model.model, attribute), nn.Module), attribute
        assert module_name(attribute) in modules
        assert any(n.startswith(key_prefix(attribute)) for n in model.state_dict())
    top = {".".join(n.split(".")[:2]) for n in model.state_dict() if n.startswith("model.")}
    llm = {"model.embed_tokens", "model.layers", "model.norm"}
    assert top - llm == {module_name(attribute) for attribute in COMPONENTS.values()}
    assert set(MULTIMODAL_MODULES) == set(COMPONENTS.values()) - {COMPONENTS["vision_tower"]}


def test_the_tables_read_from_it_keep_their_names():
    from llavamini.bench.flops import COMPONENTS as FLOP_COMPONENTS
    from llavamini.train.model_setup import CHANGED_MODULE, QLORA_SKIP_MODULES
    from llavamini.train.stages import MULTIMODAL_PREFIXES, PROJECTOR_PREFIX, VISION_TOWER_PREFIX

    assert list(QUANTIZATION_SKIP_MODULES) == [
        "model.vision_tower",
        "model.mm_projector",
        "model.compressor",
        "lm_head",
    ]
    assert CPU_FLOAT32_MODULES == ("model.vision_tower", "model.mm_projector", "model.compressor")
    assert QLORA_SKIP_MODULES == (*QUANTIZATION_SKIP_MODULES, "model.prefusion_layers")
    assert MULTIMODAL_PREFIXES == (
        "model.mm_projector.",
        "model.compressor.",
        "model.prefusion_layers.",
    )
    assert (PROJECTOR_PREFIX, VISION_TOWER_PREFIX) == ("model.mm_projector.", "model.vision_tower.")
    assert set(CHANGED_MODULE.values()) == set(MULTIMODAL_PREFIXES)
    assert FLOP_COMPONENTS == (
        "vision_tower",
        "projector",
        "compressor",
        "prefusion",
        "llm_prefill",
    )
