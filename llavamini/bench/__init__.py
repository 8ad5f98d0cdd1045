"""`llavamini bench`: FLOPs, latency, memory and KV-cache size of LLaVA-1.5 mode, LLaVA-Mini and HD.

Modules:

* `configs`: the compared variants (LLaVA-1.5 mode, 1/4/16/64 tokens, HD) and model scales (the
  real Vicuna-7B / Llama-3.1-8B shapes, and reduced widths for a CPU);
* `flops`: an analytic FLOP counter driven by the config (no weights), the paper's Table 14, and a
  cross-check with `torch.utils.flop_counter` on real (tiny) or meta-device models;
* `timing`: time to first token, decode tokens/s, per-component times, peak memory;
* `video`: frames/s of `encode_video`, batched against frame by frame;
* `fastpaths`: before/after measurements (SDPA vs eager, bf16 vs fp32, compressor weights,
  static KV cache + `torch.compile`);
* `report`: tables, JSON and PNG; `run`: the whole benchmark; `cli`: the subcommand.
"""
