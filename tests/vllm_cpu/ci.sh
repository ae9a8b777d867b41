#!/usr/bin/env bash
# Make what tests/test_vllm_cpu.py needs, once per DIR: the vLLM virtualenv (make_venv.sh, about 1.5 min)
# and the tiny Qwen2.5-Omni (tiny_omni.py, seconds). Each is rebuilt only when missing or when the
# script that makes it changed. Progress goes to stderr; stdout is only the two lines to eval:
#   eval "$(tests/vllm_cpu/ci.sh DIR)"   # exports COTFORGE_VLLM_PYTHON and COTFORGE_VLLM_MODEL
set -euo pipefail
dir=${1:?usage: ci.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stamp() { cat "$@" | sha256sum | cut -c1-16; }  # contents only: the same scripts in another checkout match

venv_stamp=$(stamp "$here/make_venv.sh" "$here/_tv_cpu_shim.py")
if [[ "$(cat "$dir/venv/.cotforge-stamp" 2>/dev/null)" != "$venv_stamp" ]]; then
  echo "building the vLLM virtualenv in $dir/venv" >&2
  rm -rf "$dir/venv"
  bash "$here/make_venv.sh" "$dir/venv" >&2
  echo "$venv_stamp" > "$dir/venv/.cotforge-stamp"
fi

model_stamp=$(stamp "$here/tiny_omni.py" "$dir/venv/.cotforge-stamp")
if [[ "$(cat "$dir/tiny-omni/.cotforge-stamp" 2>/dev/null)" != "$model_stamp" ]]; then
  echo "building the tiny Qwen2.5-Omni in $dir/tiny-omni" >&2
  rm -rf "$dir/tiny-omni"
  "$dir/venv/bin/python" "$here/tiny_omni.py" "$dir/tiny-omni" >&2
  echo "$model_stamp" > "$dir/tiny-omni/.cotforge-stamp"
fi

printf 'export COTFORGE_VLLM_PYTHON=%q\nexport COTFORGE_VLLM_MODEL=%q\n' "$dir/venv/bin/python" "$dir/tiny-omni"
