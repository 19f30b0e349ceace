"""`python -m lm plan`: will an experiment fit on N devices? Compiles its train step ahead of
time for N devices and runs nothing.

    python -m lm plan --config experiments/<file>.py[:<arg>] --devices 64 \\
        [--device_memory 80GB] [--devices_per_host 8] [--json] [--config.<key>=<value> ...]

The step is `jax.jit(...).lower(...).compile()`d for a mesh of N CPU devices of this one
process (`--xla_force_host_platform_device_count`, set before JAX starts): compiling runs no
collective, so unlike training it does not need one process per device. Per device it
reports parameters and optimizer state (from the shardings), activations (what the forward
pass saves for the backward, jax's saved_residuals), XLA's temporaries and the peak
(`memory_analysis()`), and FLOPs per step (`cost_analysis()` of the step with its layers
unrolled: a scanned loop body counts once). With --device_memory, a peak that does not fit
brings a search for the first remat policy, then micro-batching (train.grad_accum_steps),
that does.

The numbers are XLA's CPU compiler's: a GPU or TPU compiler fuses, schedules, lays out and
keeps bf16 differently, so read temporaries and peak as estimates (not yet compared with an
accelerator's real peak), and leave headroom (JAX takes 75% of a GPU by default).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from lm.units import format_bytes

# Cheapest first: each recomputes more of the forward pass in the backward.
REMAT_ORDER = ("none", "dots_with_no_batch_dims_saveable", "full")
MAX_COMPILES = 12
@dataclasses.dataclass
class Estimate:
    """Per-device bytes of one compiled train step (remat policy, micro-batches)."""
    remat: str
    accum: int
    params: int
    opt_state: int
    activations: int | None  # saved for the backward pass, one micro-batch
    arguments: int  # XLA: the state and batch shards the step takes
    temporaries: int  # XLA temp buffers: activations, gradients, gathered weights, scratch
    peak: int  # arguments + outputs - donated + temporaries
    compile_s: float
    flops: float | None = None  # per step, all devices (filled for the reported ones)
    fits: bool | None = None


class Planner:
    """Compiles the experiment's train step for a mesh over `devices`, per candidate."""

    def __init__(self, config, devices: list, devices_per_host: int):
        import jax

        from lm.data import specs
        from lm.train import setup, sharding

        mesh = sharding.make_mesh(config.mesh, devices, devices_per_host)
        self.setup = setup.build(config, mesh=mesh, tokenizer=None)
        self.config, self.model_cfg, self.mesh = self.setup.config, self.setup.model_cfg, mesh
        self.batch_splits = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
        spec = specs.batch_spec(self.config.data, self.config.train.batch_size)
        self.batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.setup.batch_sharding)
                      for k, (shape, dtype) in spec.items()}
        self._one_row = {k: jax.numpy.zeros((1, *shape[1:]), dtype)
                         for k, (shape, dtype) in spec.items()}
        self.state, self.shardings = self.setup.abstract_state(self._one_row)

    def device_bytes(self, tree) -> int:
        """Bytes of this tree's shards on one device (the first: FSDP shards are equal)."""
        import jax

        return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                   for x in jax.tree.leaves(tree))

    def _lower(self, remat: str, accum: int, scan: bool = True):
        """The jitted train step of this variant of the model, lowered."""
        import dataclasses as dc

        from lm import models
        from lm.train import sharding

        model = models.build(self.model_cfg.replace(remat_policy=remat, scan_layers=scan))
        variant = dc.replace(self.setup, model=model)
        state, shardings = (self.state, self.shardings) if scan else \
            variant.abstract_state(self._one_row)
        train_step = variant.train_step(shardings, accum_steps=accum)
        with sharding.use_mesh(self.mesh, self.setup.rules):
            return train_step.lower(state, self.batch)

    def estimate(self, remat: str, accum: int) -> Estimate:
        start = time.perf_counter()
        compiled = self._lower(remat, accum).compile()
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
        return Estimate(remat, accum, params=self.device_bytes(self.state.params),
                        opt_state=self.device_bytes(self.state.opt_state),
                        activations=self.activations(remat, accum),
                        arguments=mem.argument_size_in_bytes,
                        temporaries=mem.temp_size_in_bytes, peak=peak,
                        compile_s=time.perf_counter() - start)

    def activations(self, remat: str, accum: int) -> int | None:
        """Bytes the forward pass of one device's micro-batch keeps for the backward (not
        counting the parameters; tensor-parallel meshes split some of it further)."""
        import jax
        import numpy as np

        from lm import models
        from lm.train import objectives
        try:  # not public API: degrade to "unknown" if it moves
            from jax._src.ad_checkpoint import saved_residuals
        except ImportError:
            return None
        rows = max(self.config.train.batch_size // self.batch_splits // accum, 1)
        batch = {k: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype)
                 for k, x in self.batch.items()}
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              self.state.params)
        model = models.build(self.model_cfg.replace(remat_policy=remat))

        def loss(p, b):
            out = objectives.forward(self.setup.objective, model, p, b, deterministic=False,
                                     rngs={"dropout": jax.random.key(0)})
            sums = objectives.metric_sums(self.setup.objective, out, b)
            return objectives.total_loss(self.setup.objective, sums,
                                         objectives.term_weights(self.setup.objective, b))

        saved = saved_residuals(loss, params, batch)
        return int(sum(np.prod(aval.shape) * aval.dtype.itemsize for aval, why in saved
                       if "from the argument" not in why))

    def flops(self, remat: str) -> float:
        """FLOPs of one step on all devices, from the step with unrolled layers (XLA's cost
        analysis counts a loop body once) and one micro-batch (the same total work)."""
        return float(self._lower(remat, 1, scan=False).cost_analysis()["flops"])

    def candidates(self) -> list[tuple[str, int]]:
        """(remat, micro-batches) to try: cheaper recomputation first, then more micro-
        batches while each still gives every device a row."""
        t, own = self.config.train, self.model_cfg.remat_policy
        if own in REMAT_ORDER:
            remats = list(REMAT_ORDER[REMAT_ORDER.index(own):])
        else:  # a policy outside the ladder: it, then recompute everything
            remats = [own, "full"]
        out, accum = [], t.grad_accum_steps
        while t.batch_size % (accum * t.parallel_micro_batches * self.batch_splits) == 0:
            out += [(r, accum) for r in remats]
            accum *= 2
        return out[:MAX_COMPILES]


def plan(config, devices: list, *, devices_per_host: int, device_memory: int | None = None,
         log=lambda line: None) -> dict[str, Any]:
    """The experiment's own estimate, and with `device_memory` the first candidate that fits
    (if its own does not); a JSON-able dict (see `report`)."""
    import jax

    from lm.train import mfu, topology

    planner = Planner(config, devices, devices_per_host)
    tried: list[Estimate] = []
    for remat, accum in planner.candidates():
        est = planner.estimate(remat, accum)
        est.fits = None if device_memory is None else est.peak <= device_memory
        tried.append(est)
        log(f"compiled remat={remat} micro-batches={accum}: peak {format_bytes(est.peak)} "
            f"per device ({est.compile_s:.0f} s)")
        if device_memory is None or est.fits:
            break
    own, fit = tried[0], next((e for e in tried if e.fits), None)
    own.flops = planner.flops(own.remat)
    if fit:
        fit.flops = own.flops if fit.remat == own.remat else planner.flops(fit.remat)
    shapes = planner.state.params
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    t = config.train
    return dict(
        devices=len(devices), devices_per_host=devices_per_host, device_memory=device_memory,
        mesh=dict(planner.mesh.shape), preset=config.mesh.get("preset", ""),
        topology=topology.axes_across_hosts(planner.mesh,
                                            lambda d: d.id // devices_per_host),
        model=dict(family=planner.model_cfg.family, params=n_params,
                   layers=planner.model_cfg.num_layers, dtype=planner.model_cfg.dtype),
        batch=dict(rows=t.batch_size, seq_len=config.data.seq_len,
                   rows_per_device=t.batch_size // planner.batch_splits),
        model_flops=mfu.model_flops_per_token(
            planner.model_cfg, shapes, config.data.seq_len,
            mlm_slots=slots.shape[-1] if (slots := planner.batch.get("mlm_positions")) else None)
        * t.batch_size * config.data.seq_len,
        own=dataclasses.asdict(own), tried=[dataclasses.asdict(e) for e in tried],
        fit=dataclasses.asdict(fit) if fit else None,
        total_state_bytes=sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
            (planner.state.params, planner.state.opt_state))),
    )


def _maybe(n: int | None) -> str:
    return "n/a" if n is None else format_bytes(n)


def report(result: dict[str, Any], title: str) -> str:
    """The plan as text."""
    own, n = result["own"], result["devices"]
    mesh = " × ".join(f"{k}={v}" for k, v in result["mesh"].items())
    b, m = result["batch"], result["model"]
    lines = [
        f"plan: {title} on {n} devices (compiled for {n} CPU devices: XLA estimates)",
        f"model: {m['family']}, {m['params'] / 1e9:.3f}B parameters, {m['layers']} layers, "
        f"compute {m['dtype']}",
        f"mesh: {mesh}" + (f" (preset {result['preset']})" if result["preset"] else "")
        + f"; with {result['devices_per_host']} devices per host, across hosts: "
        + (", ".join(result["topology"]) or "none"),
        f"batch: {b['rows']} rows × {b['seq_len']} tokens = {b['rows'] * b['seq_len']:,} "
        f"tokens per step; {b['rows_per_device']} rows per device",
        "",
        f"per device, remat {own['remat']}, {own['accum']} micro-batch(es):",
        f"  parameters        {format_bytes(own['params']):>10}",
        f"  optimizer state   {format_bytes(own['opt_state']):>10}",
        f"  activations       {_maybe(own['activations']):>10}"
        "   saved for the backward pass, one micro-batch (estimate)",
        f"  XLA temporaries   {format_bytes(own['temporaries']):>10}"
        "   activations, gradients, gathered weights, scratch",
        f"  peak              {format_bytes(own['peak']):>10}"
        "   arguments + outputs - donated + temporaries",
        f"FLOPs per step: {own['flops']:.3e} on all devices, {own['flops'] / n:.3e} per device"
        f" (model FLOPs 6N+attention: {result['model_flops']:.3e})",
    ]
    memory = result["device_memory"]
    if memory is None:
        return "\n".join(lines)
    lines.append(f"fits in {format_bytes(memory)}: {'yes' if own['fits'] else 'NO'}")
    if own["fits"]:
        return "\n".join(lines)
    lines += ["", "tried (cheapest first):"]
    lines += [f"  remat {e['remat']:<34} micro-batches {e['accum']:<3} "
              f"peak {format_bytes(e['peak']):>10}  {'fits' if e['fits'] else 'no'}"
              for e in result["tried"]]
    fit = result["fit"]
    if fit:
        flags = [f"--config.model.remat_policy={fit['remat']}"] * (fit["remat"] != own["remat"])
        flags += [f"--config.train.grad_accum_steps={fit['accum']}"] * (
            fit["accum"] != own["accum"])
        lines.append(f"fits with: {' '.join(flags)}  (peak {format_bytes(fit['peak'])}, "
                     f"{fit['flops']:.3e} FLOPs per step: +"
                     f"{100 * (fit['flops'] / own['flops'] - 1):.0f}% recomputation)")
    else:
        state = own["params"] + own["opt_state"]
        lines.append(f"nothing tried fits; parameters + optimizer state alone take "
                     f"{format_bytes(state)} per device: split them over more devices "
                     "(--config.mesh.preset=fsdp, a larger mesh.fsdp) or use more devices")
    return "\n".join(lines)
