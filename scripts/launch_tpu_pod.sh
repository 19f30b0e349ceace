#!/usr/bin/env bash
# Run `python -m lm train ARGS...` on every host of a Cloud TPU VM pod (one process per host).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b scripts/launch_tpu_pod.sh \
#       --config experiments/bert_mlm_nsp.py:base --workdir /mnt/runs/bert_base
#
# Every host runs the same command. LM_DISTRIBUTED=auto makes lm.distributed call
# jax.distributed.initialize() with no arguments: on a TPU VM, JAX reads the pod's topology
# from the metadata server. Each host feeds its own slice of every batch; host 0 writes the
# metrics. The workdir must be one directory that every host sees (NFS, Filestore or a
# gcsfuse mount): orbax writes each checkpoint from all hosts together. A preempted pod gets
# SIGTERM, every host saves at the same step, and rerunning this command resumes.
#
# Setup, once: the repo at $REPO_DIR (default ~/lm) on every host with its .venv, e.g.
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=all --command \
#     "git clone <repo> ~/lm && cd ~/lm && python3 -m venv .venv && . .venv/bin/activate \
#      && pip install -e . 'jax[tpu]'"
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
REPO_DIR="${REPO_DIR:-~/lm}"
[ $# -gt 0 ] || { echo "usage: TPU_NAME=... ZONE=... $0 --config FILE[:ARG] --workdir DIR [--config.KEY=VALUE ...]" >&2; exit 2; }

args=$(printf ' %q' "$@")  # quoted once more for the remote shell
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && . .venv/bin/activate && LM_DISTRIBUTED=auto TOKENIZERS_PARALLELISM=false python -m lm train$args"
