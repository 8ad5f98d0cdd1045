"""How a checkpoint uses its vision tokens, layer by layer (the paper's preliminary analysis).

- `recorder`: attention weights recomputed in chosen layers from what their attention module
  receives, whatever the attention backend (SDPA returns none), without changing any output.
- `attention`: the share of attention that text and answer tokens give to vision, system and
  other text tokens, and the entropy over the vision tokens, per LLM and pre-fusion layer.
- `drop_vision`: answers with the vision tokens removed from layer L on, scored by the task.
- `plots`: the figures; `cli`: `llavamini analyze {attention,drop-vision,compression}`.

See docs/analysis.md.
"""
