#!/usr/bin/env bash
# Multi-node training with torchrun (no scheduler): run this on every node.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS_PER_NODE=8 recipes/launch/torchrun_train.sh \
#       recipes/librispeech/ssl_sew_tiny.yaml trainer.accumulate_grad_batches=4
#
# Variables: NNODES (1), NODE_RANK (0), MASTER_ADDR (localhost), MASTER_PORT (29500), GPUS_PER_NODE (all
# visible GPUs, or 1 without CUDA), ACCELERATOR (gpu; cpu runs the same on CPU with gloo for a local
# check). DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 RECIPE.yaml [key=value ...]" >&2
    exit 2
fi
RECIPE=$1
shift
if [[ ! -f "$RECIPE" ]]; then
    echo "recipe not found: $RECIPE" >&2
    exit 2
fi
PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATOR=${ACCELERATOR:-gpu}
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi

CMD=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE"
     --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
     -m nemo_sew.cli train "$RECIPE"
     "trainer.num_nodes=$NNODES" "trainer.devices=$GPUS_PER_NODE" "trainer.accelerator=$ACCELERATOR" "$@")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
exec "${CMD[@]}"
