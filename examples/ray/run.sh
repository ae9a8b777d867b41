#!/usr/bin/env bash
# On the head node: CMU-MOSEI on the Ray cluster of cluster.sh, against every vLLM replica.
# Re-run the same command to resume (after a lost driver, or a stop): nothing done is redone or paid twice.
set -euo pipefail
export RAY_AUTH_MODE=token  # the token of cluster.sh head, in ~/.ray/auth_token (or RAY_AUTH_TOKEN)

HEAD=${HEAD:-$(hostname -i | awk '{print $1}')}
# every replica serving the model: GPU_NODES x GPUS_PER_NODE endpoints
GPU_NODES=${GPU_NODES:-"gpu-node-1 gpu-node-2"}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
endpoints=()
for node in $GPU_NODES; do
  for i in $(seq 0 $(( GPUS_PER_NODE - 1 ))); do endpoints+=("http://$node:$(( 8000 + i ))/v1"); done
done
list=$(IFS=,; echo "${endpoints[*]}")

cotforge run pipelines/mosei.yaml --run runs/mosei --executor ray --ray-address "$HEAD:6379" \
  --set source.root=/shared/data/MOSEI \
  --set "teacher.endpoints=[$list]" \
  --set teacher.concurrency=64 \
  --set teacher.media_workers=8
