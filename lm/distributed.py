"""Multi-host start-up: join this process to the others with `jax.distributed`.

Call `initialize()` once, before anything touches a JAX device. Three cases:

- explicit: a coordinator address, process count and process id, given as arguments or in
  the environment (`LM_COORDINATOR_ADDRESS`, `LM_NUM_PROCESSES`, `LM_PROCESS_ID`), e.g. several
  CPU processes on 127.0.0.1 (how tests exercise the multi-host path) or a hand-rolled
  launcher;
- auto-detected: a SLURM job step with several tasks (`srun`), a TPU pod whose environment
  lists several workers, or `LM_DISTRIBUTED=auto` (what scripts/launch_tpu_pod.sh sets: a
  Cloud TPU VM's topology comes from its metadata server, not the environment); JAX reads
  the topology itself;
- otherwise (or with `LM_DISTRIBUTED=off`) a single process: nothing to do.
"""

import os
from collections.abc import Mapping

import jax

from lm.errors import UserError

ENV_COORDINATOR = "LM_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LM_NUM_PROCESSES"
ENV_PROCESS_ID = "LM_PROCESS_ID"
ENV_MODE = "LM_DISTRIBUTED"  # 'auto': always let JAX detect the cluster; 'off': never


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} must be an integer") from None


def cluster_detected(environ: Mapping[str, str] | None = None) -> str | None:
    """Names the multi-host cluster JAX can auto-detect from `environ`, or None."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV_MODE, "").lower()
    if mode in ("auto", "off"):
        return "auto" if mode == "auto" else None
    # Inside an `srun` step only: a batch script's own shell has SLURM_NTASKS too, but it is
    # one process, and initialising would wait forever for the others.
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        return "slurm"
    # A TPU VM pod lists every worker host; a single-host TPU VM lists one (or nothing).
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    if "MEGASCALE_COORDINATOR_ADDRESS" in env:  # multi-slice TPU
        return "tpu"
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the JAX processes of this job; returns True when running multi-process.

    Explicit values (arguments, else `$LM_*` variables) win over auto-detection. All three
    must be given together. CPU collectives use gloo, which is what lets several CPU
    processes run sharded steps (the default CPU backend has no cross-process collectives).
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    explicit = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) != 3:
        missing = sorted(set(explicit) - set(given))
        raise UserError(
            f"multi-process start needs coordinator_address, num_processes and process_id "
            f"together; got {given}, missing {missing} (flags or ${ENV_COORDINATOR}, "
            f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})"
        )
    if given and not 0 <= process_id < num_processes:
        raise UserError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if given:
        if num_processes == 1:
            return False
        jax.distributed.initialize(**explicit)
        return True
    if cluster_detected():
        jax.distributed.initialize()  # JAX reads the TPU / SLURM topology itself
        return True
    return False
