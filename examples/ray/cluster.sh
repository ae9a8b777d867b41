#!/usr/bin/env bash
# A Ray cluster for `cotforge run --executor ray`, and N vLLM replicas as teacher endpoints.
#
# Every node needs: the same virtualenv with cotforge installed (pip install 'cotforge[ray]'), and the
# dataset at the same path (decode tasks read clips wherever they run). The run folder lives on the head
# only: ledger, cache, bundles and shards are written by the cotforge process there.
#
# Ray 2.60 clusters authenticate with a token: `head` makes one (~/.ray/auth_token); copy that file to every
# worker node and to wherever cotforge runs, or export RAY_AUTH_TOKEN there, before `worker` and `cotforge run`.
#
# Usage, on each machine:   bash cluster.sh head | bash cluster.sh worker HEAD_IP | bash cluster.sh replicas N
set -euo pipefail
export RAY_AUTH_MODE=token

case "${1:-}" in
  head)
    ray get-auth-token --generate > /dev/null
    # the head also runs cotforge (the driver); keep a few of its CPUs for it
    ray start --head --port 6379 --num-cpus "$(( $(nproc) - 2 ))" --include-dashboard false
    ;;
  worker)
    ray start --address "${2:?HEAD_IP}:6379" --num-cpus "$(nproc)"
    ;;
  replicas)
    # one vLLM replica per GPU of this node (ports 8000, 8001, ...); see README "Teacher" for the flags
    n="${2:-$(nvidia-smi -L | wc -l)}"
    for i in $(seq 0 $(( n - 1 ))); do
      CUDA_VISIBLE_DEVICES=$i nohup vllm serve Qwen/Qwen3-Omni-30B-A3B-Instruct --host 0.0.0.0 --port $(( 8000 + i )) \
        --dtype bfloat16 --max-model-len 16384 --max-num-seqs 64 --limit-mm-per-prompt '{"image":0,"video":1,"audio":1}' \
        --trust-request-mm-kwargs --mm-processor-cache-gb 0 > "vllm-$i.log" 2>&1 &
    done
    ;;
  *)
    echo "usage: $0 head | worker HEAD_IP | replicas [N]" >&2
    exit 2
    ;;
esac
