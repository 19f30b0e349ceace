"""Logical axis names for params and activations; the mesh rules live with the trainer.

Params carry names through `param_init`; activations go through `constrain`. Without
active rules (`flax.linen.logical_axis_rules`) both are no-ops, which is how CPU tests run.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

LogicalAxes = Sequence[str | None]


def constrain(x: jax.Array, names: LogicalAxes) -> jax.Array:
    """Sharding constraint on an activation, by logical axis names (no-op without rules)."""
    if len(names) != x.ndim:
        raise ValueError(f"{len(names)} logical names {tuple(names)} for shape {x.shape}")
    return nn.with_logical_constraint(x, tuple(names))


def param_init(init: Callable, names: LogicalAxes) -> Callable:
    """An initializer whose params carry logical axis names (for sharded init)."""
    return nn.with_logical_partitioning(init, tuple(names))
