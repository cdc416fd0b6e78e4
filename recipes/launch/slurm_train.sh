#!/usr/bin/env bash
# Multi-node training under SLURM: one task per GPU, Lightning reads the SLURM environment.
#
#   sbatch --nodes 4 recipes/launch/slurm_train.sh recipes/librispeech/ssl_sew_small.yaml \
#       trainer.accumulate_grad_batches=2 [more key=value overrides]
#
# Adjust --gpus-per-node / --ntasks-per-node together (GPUS_PER_NODE is read from SLURM). On time-out
# Lightning receives SIGUSR1, saves a checkpoint and requeues the job; exp_manager's resume_if_exists
# (set in the LibriSpeech recipes) resumes it. DRY_RUN=1 prints the command instead of running it.
#SBATCH --job-name=nemo-sew
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: sbatch [--nodes N] $0 RECIPE.yaml [key=value ...]" >&2
    exit 2
fi
RECIPE=$1
shift
if [[ ! -f "$RECIPE" ]]; then
    echo "recipe not found: $RECIPE" >&2
    exit 2
fi
NODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${SLURM_NTASKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
PYTHON=${PYTHON:-python}

CMD=(srun --kill-on-bad-exit=1 "$PYTHON" -m nemo_sew.cli train "$RECIPE"
     "trainer.num_nodes=$NODES" "trainer.devices=$GPUS_PER_NODE" "$@")
if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
exec "${CMD[@]}"
