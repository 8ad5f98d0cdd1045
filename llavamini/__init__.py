"""llavamini: LLaVA-Mini (arXiv 2501.03895), one vision token per image.

`import llavamini` registers `LlavaMiniConfig` / `LlavaMiniForCausalLM` / `LlavaMiniProcessor`
with `AutoConfig` / `AutoModelForCausalLM` / `AutoProcessor` (model_type "llava_mini_llama", and
the Qwen2/Qwen3 families).
"""

from llavamini.model import (
    LlavaMiniConfig,
    LlavaMiniForCausalLM,
    LlavaMiniLlamaForCausalLM,
    LlavaMiniModel,
    LlavaMiniProcessor,
)

__all__ = [
    "LlavaMiniConfig",
    "LlavaMiniForCausalLM",
    "LlavaMiniLlamaForCausalLM",
    "LlavaMiniModel",
    "LlavaMiniProcessor",
]
