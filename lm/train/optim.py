"""AdamW with warmup + decay, a weight-decay mask and global-norm clipping.

Gradient accumulation lives in step.py (it needs the loss), not here: optax.MultiSteps
averages per-micro-batch means, which weighs a micro-batch of few real tokens as much as
a full one; step.py instead normalises by the real tokens of the whole batch.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lm.errors import UserError

# Decay shape after warmup, as a function of progress f in [0, 1]: 1 → peak lr, 0 → min_lr.
_DECAY_SHAPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "cosine": lambda f: 0.5 * (1.0 + jnp.cos(jnp.pi * f)),
    "linear": lambda f: 1.0 - f,
    "constant": lambda f: jnp.ones_like(f),
}


def make_schedule(
    lr: float, *, warmup_steps: int, decay_steps: int, min_lr: float = 0.0, shape: str = "cosine"
) -> optax.Schedule:
    """nanoGPT's schedule: lr·(s+1)/(warmup+1) during warmup, then decay to min_lr at decay_steps.

    Steps count from 0 (the first update uses schedule(0)); after decay_steps it stays at min_lr.
    """
    if shape not in _DECAY_SHAPES:
        raise UserError(f"train.schedule={shape!r}; valid: {sorted(_DECAY_SHAPES)}")
    if decay_steps <= warmup_steps and shape != "constant":
        raise UserError(
            f"the lr decays over steps warmup_steps..decay_steps, but decay_steps={decay_steps}"
            f" <= warmup_steps={warmup_steps}"
        )
    decay = _DECAY_SHAPES[shape]

    def schedule(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = lr * (step + 1.0) / (warmup_steps + 1.0)
        frac = jnp.clip((step - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
        decayed = min_lr + decay(frac) * (lr - min_lr)
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def _leaf_name(path: tuple) -> str:
    """The last dict key on a pytree path (skips the `.value` of nn.Partitioned boxes)."""
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def decay_mask(params: Any, *, decay_embeddings: bool) -> Any:
    """True where weight decay applies: dense kernels, and embedding tables if asked.

    By name, not by rank: with scanned layers a bias has shape (L, F), as 2-D as a matrix.
    Biases, norm scales/biases and BERT's `mlm_bias` are never decayed.
    """
    decayed = {"kernel"} | ({"embedding"} if decay_embeddings else set())
    return jax.tree_util.tree_map_with_path(lambda p, _: _leaf_name(p) in decayed, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm as one scalar factor on every gradient (as torch's
    clip_grad_norm_ does), not a per-element select of g / norm · max_norm.

    The same clipping to float rounding, but XLA:CPU fuses a multiply by a scalar into
    AdamW's moment updates, where it wrote optax's select out as a whole clipped copy of the
    gradients first: one more write and two more reads of every gradient, in a step that
    is bound by memory traffic on CPU.
    """

    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        factor = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(train_cfg: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation,
                                                                   optax.Schedule]:
    """(clip → AdamW) from the `train` config, and its learning-rate schedule."""
    t = train_cfg
    schedule = make_schedule(
        t.lr, warmup_steps=t.warmup_steps, decay_steps=t.decay_steps or t.steps,
        min_lr=t.min_lr, shape=t.schedule,
    )
    adamw = optax.adamw(
        schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
        mask=lambda params: decay_mask(params, decay_embeddings=t.decay_embeddings),
    )
    clip = clip_by_global_norm(t.clip_norm) if t.clip_norm > 0 else optax.identity()
    return optax.chain(clip, adamw), schedule
