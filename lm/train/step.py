"""Pure, module-level train and eval steps (bound with functools.partial, jitted by the loop).

Gradient accumulation: the global batch of B rows is split into k micro-batches; each one's
gradient is of Σ(weight·loss)/W where W is the weight of the WHOLE batch, so the summed
gradients equal the gradient of the whole batch's mean loss exactly, however the real
(unpadded) tokens are spread over the micro-batches.

Accumulated micro-batches run one after another (a scan: memory for one). Parallel ones
(`parallel_micro_batches`) are independent gradient computations in the same program, summed
the same way: XLA:CPU runs them side by side, one per core, where it would otherwise split
every small op over its threads and pay for the hand-over at each one.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lm.train import losses, objectives
from lm.train.state import TrainState

Batch = dict[str, jax.Array]


def split_micro_batches(batch: Batch, k: int) -> Batch:
    """Leaves B×... → k×(B/k)×...; micro-batch i holds rows i, i+k, i+2k, ...

    Strided rather than contiguous so that each micro-batch spans every data shard (rows are
    sharded contiguously over devices) and no device idles while another works.
    """
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _micro_step(params, micro: Batch, rng, totals, *, model, objective, parallel: int = 1):
    """(gradient of this micro-batch's share of the whole-batch loss, its metric sums), as
    `parallel` independent computations over strided slices of its rows, summed."""
    def grad_fn(part, rng):
        def loss_fn(p):
            outputs = objectives.forward(objective, model, p, part, deterministic=False,
                                         rngs={"dropout": rng})
            sums = objectives.metric_sums(objective, outputs, part)
            return objectives.total_loss(objective, sums, totals), sums

        return jax.grad(loss_fn, has_aux=True)(params)

    if parallel == 1:
        return grad_fn(micro, rng)
    parts = split_micro_batches(micro, parallel)
    results = [grad_fn(jax.tree.map(lambda x, j=j: x[j], parts), jax.random.fold_in(rng, j))
               for j in range(parallel)]
    return jax.tree.map(lambda *xs: functools.reduce(jnp.add, xs), *results)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    objective: objectives.Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int = 1,
    parallel_micro_batches: int = 1,
    dropout_seed: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update from one global batch; metrics are device scalars."""
    totals = objectives.term_weights(objective, batch)
    micro = split_micro_batches(batch, accum_steps)
    rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
    grad_fn = lambda i, mb: _micro_step(
        state.params, mb, jax.random.fold_in(rng, i), totals, model=model, objective=objective,
        parallel=parallel_micro_batches)
    carry = grad_fn(0, jax.tree.map(lambda x: x[0], micro))
    if accum_steps > 1:
        rest = (jnp.arange(1, accum_steps), jax.tree.map(lambda x: x[1:], micro))
        carry, _ = jax.lax.scan(lambda c, xs: (jax.tree.map(jnp.add, c, grad_fn(*xs)), None),
                                carry, rest)
    grads, sums = carry
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    metrics = objectives.summarize(objective, sums)
    metrics.update(grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    return new_state, metrics


def eval_step(params: Any, batch: Batch, *, model: nn.Module, objective: objectives.Objective
              ) -> tuple[dict[str, losses.Sum], tuple | None]:
    """Metric sums of one eval batch (padding rows weigh 0; add them up, then summarize),
    and the outputs the task's host metrics need (None for most tasks)."""
    outputs = objectives.forward(objective, model, params, batch, deterministic=True)
    return (objectives.metric_sums(objective, outputs, batch),
            objectives.host_outputs(objective, outputs, batch))


def jit_train_step(*, model: nn.Module, objective: objectives.Objective,
                   tx: optax.GradientTransformation, schedule: optax.Schedule, accum_steps: int,
                   dropout_seed: int, state_shardings: Any, batch_sharding: Any,
                   parallel_micro_batches: int = 1):
    """`train_step` jitted with the state's shardings, the state donated (the loop's, and what
    `lm plan` compiles ahead of time)."""
    return jax.jit(
        functools.partial(train_step, model=model, objective=objective, tx=tx,
                          schedule=schedule, accum_steps=accum_steps,
                          parallel_micro_batches=parallel_micro_batches,
                          dropout_seed=dropout_seed),
        in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
        donate_argnums=0)
