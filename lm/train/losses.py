"""Losses as weighted sums, in float32.

Every function returns `{metric: (sum, weight)}` rather than a mean, so that sums over
micro-batches, eval batches and hosts add up exactly; the caller divides once at the end.
Weights are 0 on padding (tokens, or whole rows of a padded eval batch).
"""

import jax
import jax.numpy as jnp

Sum = tuple[jax.Array, jax.Array]  # (Σ weight·value, Σ weight)


def weighted_sum(values: jax.Array, weights: jax.Array) -> Sum:
    weights = weights.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * weights), jnp.sum(weights)


def cross_entropy(logits_xV: jax.Array, labels_x: jax.Array, weights_x: jax.Array
                  ) -> dict[str, Sum]:
    """Softmax cross-entropy and accuracy for integer labels; `x` is any leading shape."""
    logits_xV = logits_xV.astype(jnp.float32)
    log_z_x = jax.nn.logsumexp(logits_xV, axis=-1)
    label_logit_x = jnp.take_along_axis(logits_xV, labels_x[..., None], axis=-1)[..., 0]
    correct_x = jnp.argmax(logits_xV, axis=-1) == labels_x
    return {
        "loss": weighted_sum(log_z_x - label_logit_x, weights_x),
        "accuracy": weighted_sum(correct_x, weights_x),
    }


def squared_error(preds_x: jax.Array, targets_x: jax.Array, weights_x: jax.Array) -> dict[str, Sum]:
    """Mean squared error (regression heads, e.g. STS-B)."""
    err_x = preds_x.astype(jnp.float32) - targets_x.astype(jnp.float32)
    return {"loss": weighted_sum(jnp.square(err_x), weights_x)}


def add_sums(a: dict[str, Sum], b: dict[str, Sum]) -> dict[str, Sum]:
    """Element-wise sum of two `{name: (sum, weight)}` dicts with the same keys."""
    return jax.tree.map(jnp.add, a, b)


def finalize(sums: dict[str, Sum]) -> dict[str, jax.Array]:
    """`{name: sum / weight}` (0 where nothing was weighted, e.g. a batch of padding only)."""
    return {k: s / jnp.maximum(w, 1e-9) for k, (s, w) in sums.items()}
