"""llavamini: LLaVA-Mini (arXiv 2501.03895), one vision token per image.

`import llavamini` registers `LlavaMiniConfig` / `LlavaMiniForCausalLM` with `AutoConfig` /
`AutoModelForCausalLM` (model_type "llava_mini_llama").
"""

from llavamini.model import (
    LlavaMiniConfig,
    LlavaMiniForCausalLM,
    LlavaMiniLlamaForCausalLM,
    LlavaMiniModel,
)

__all__ = ["LlavaMiniConfig", "LlavaMiniForCausalLM", "LlavaMiniLlamaForCausalLM", "LlavaMiniModel"]
