"""The training state: everything a step reads and writes, one pytree."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """`step` counts completed optimizer updates (int32 scalar); params and opt_state are pytrees.

    The dropout key is not stored: each step derives it from (seed, step), so a resumed run
    draws the same masks as an uninterrupted one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
