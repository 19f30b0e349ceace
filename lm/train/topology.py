"""What a run sees at start-up, and the settings that cannot work, checked before any data.

    mesh, rules = topology.setup(config)   # UserError naming the setting; process 0 prints

Every process raises the same error at the same point (the checks read only the config and
the devices), so a bad setting ends every process at once instead of leaving some waiting
in a collective. Start-up problems before JAX runs (a duplicate process id, a coordinator
that never answers) are lm.distributed's.
"""

import math
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lm.errors import UserError
from lm.train import sharding


def setup(config: ml_collections.ConfigDict, *, echo: bool = True
          ) -> tuple[Mesh, sharding.Rules]:
    """The run's mesh and rules, after `check`; process 0 prints `describe` (with `echo`)."""
    mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)
    check(config, mesh)
    if echo and jax.process_index() == 0:
        print(describe(mesh, batch_size=config.train.batch_size,
                       grad_accum_steps=config.train.grad_accum_steps,
                       preset=config.mesh.get("preset", "")), flush=True)
    return mesh, rules


def check(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """UserError, naming the setting, when a batch does not split over the mesh and hosts."""
    t, shards = config.train, config.data.get("shards", 0)
    splits = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    axes = " × ".join(f"mesh {a}={mesh.shape[a]}" for a in sharding.BATCH_AXES)
    micro = {"train.grad_accum_steps": t.grad_accum_steps,
             "train.parallel_micro_batches": t.parallel_micro_batches}
    for key, rows, factors in [("train.batch_size", t.batch_size, micro),
                               ("train.eval_batch_size", t.eval_batch_size or t.batch_size, {})]:
        need = splits * math.prod(factors.values())  # every micro-batch splits over the devices
        if rows % need:
            shown = "".join(f" × {k}={v}" for k, v in factors.items() if v > 1)
            raise UserError(
                f"{key}={rows} does not split over the batch axes ({axes}{shown}): use a "
                f"multiple of {need}, or another mesh")
        if shards and rows % shards:
            raise UserError(f"{key}={rows} does not split into data.shards={shards} equal "
                             "slices: use a multiple of it, or another data.shards")


def axes_across_hosts(mesh: Mesh, host_of: Callable[[jax.Device], int] | None = None
                      ) -> list[str]:
    """The mesh axes along which devices belong to different hosts (`host_of(device)`,
    default: its process)."""
    procs = np.vectorize(host_of or (lambda d: d.process_index))(mesh.devices)
    return [name for i, name in enumerate(mesh.axis_names)
            if (np.moveaxis(procs, i, 0) != np.moveaxis(procs, i, 0)[:1]).any()]


def describe(mesh: Mesh, *, batch_size: int, grad_accum_steps: int = 1, preset: str = "") -> str:
    """A few lines: processes and devices, the mesh and its axes across hosts, batch rows."""
    device = jax.devices()[0]
    across = axes_across_hosts(mesh)
    within = [a for a in mesh.axis_names if a not in across and mesh.shape[a] > 1]
    index, count = sharding.process_batch_shard(mesh)
    rows = batch_size // count
    shared = jax.process_count() // count
    lines = [
        f"topology: {jax.process_count()} processes × {jax.local_device_count()} local "
        f"devices = {jax.device_count()} devices ({device.platform}, {device.device_kind})",
        "mesh: " + " × ".join(f"{a}={n}" for a, n in mesh.shape.items())
        + (f" (preset {preset})" if preset else "")
        + f"; across hosts: {', '.join(across) or 'none'}"
        + f"; within a host: {', '.join(within) or 'none'}",
        f"batch: {batch_size} rows per step = {count} host slices × {rows} rows"
        + (f" (each slice shared by {shared} processes)" if shared > 1 else "")
        + (f", in {grad_accum_steps} micro-batches" if grad_accum_steps > 1 else ""),
    ]
    return "\n".join(lines)
