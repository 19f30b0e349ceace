#!/usr/bin/env bash
# Run `python -m lm train ARGS...` on a SLURM GPU cluster: one process per GPU on every node.
#
#   sbatch --nodes=4 scripts/launch_slurm.sh \
#       --config experiments/gpt_wikitext.py:base --workdir /shared/runs/gpt_base
#
# srun starts one task per GPU; lm.distributed sees a SLURM job step with several tasks and
# lets jax.distributed.initialize() read the coordinator, process count, process id and the
# task's GPU from SLURM's variables. The workdir must be on a filesystem every node sees.
# Five minutes before the time limit SLURM sends SIGTERM (--signal), as it does on preemption:
# every process saves at the same step and exits with status 75 (lm's "stopped, resumable");
# this script then requeues the job, which resumes from the workdir's latest checkpoint.
# A finished run exits 0, bad input 1: neither is requeued.
#SBATCH --job-name=lm-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: sbatch [--nodes=N] $0 --config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...]" >&2; exit 2; }

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false
# --kill-on-bad-exit: one failed process ends the others instead of leaving them waiting in
# a collective.
status=0
srun --kill-on-bad-exit=1 python -m lm train "$@" || status=$?
if [ "$status" -eq 75 ]; then
  echo "lm: checkpoint saved at SIGTERM; requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
