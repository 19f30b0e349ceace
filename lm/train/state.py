"""The training state: everything a step reads and writes, one pytree."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from lm.train import objectives


@flax.struct.dataclass
class TrainState:
    """`step` counts completed optimizer updates (int32 scalar); params and opt_state are pytrees.

    The dropout key is not stored: each step derives it from (seed, step), so a resumed run
    draws the same masks as an uninterrupted one.
    """

    step: jax.Array
    params: Any
    opt_state: Any


def init_state(objective: objectives.Objective, model: nn.Module,
               tx: optax.GradientTransformation, rng: jax.Array,
               batch: objectives.Batch) -> TrainState:
    """Step 0, fresh params for inputs shaped like `batch` (nn.Partitioned-boxed, so that
    sharding.init_sharded can place them) and their optimizer state."""
    params = objectives.init_params(objective, model, rng, batch)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
