"""Optimizer: schedule and weight-decay mask against hand-computed values, AdamW vs PyTorch."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from lm import config as config_lib
from lm.train import optim


def nanogpt_lr(it, *, lr, min_lr, warmup, decay_iters):
    """nanoGPT train.py get_lr, verbatim."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    decay_ratio = (it - warmup) / (decay_iters - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)


def test_cosine_schedule_matches_nanogpt():
    schedule = optim.make_schedule(1e-3, warmup_steps=100, decay_steps=2000, min_lr=1e-4)
    steps = np.arange(0, 2200, 7)
    got = np.asarray(jax.vmap(schedule)(steps))
    want = [nanogpt_lr(s, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_linear_and_constant_schedules():
    linear = optim.make_schedule(1.0, warmup_steps=3, decay_steps=13, min_lr=0.5, shape="linear")
    # warmup (s+1)/4, then 1 → 0.5 over 10 steps, then flat
    want = [0.25, 0.5, 0.75, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.5]
    np.testing.assert_allclose([float(linear(s)) for s in range(15)], want, rtol=1e-6)
    constant = optim.make_schedule(2.0, warmup_steps=0, decay_steps=0, shape="constant")
    assert [float(constant(s)) for s in (0, 10, 10_000)] == [2.0, 2.0, 2.0]


def test_bad_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="valid: .*cosine"):
        optim.make_schedule(1.0, warmup_steps=0, decay_steps=10, shape="cosin")
    with pytest.raises(ValueError, match="decay_steps=5 <= warmup_steps=10"):
        optim.make_schedule(1.0, warmup_steps=10, decay_steps=5)


def _params():
    """A tree shaped like a model's: scanned layers (leading L axis), norms, embeddings."""
    box = lambda x, names: nn.Partitioned(x, names)
    return {
        "token_embed": {"embedding": jnp.ones((5, 3))},
        "decoder": {
            "layers": {
                "attn_norm": {"scale": jnp.ones((2, 3)), "bias": jnp.ones((2, 3))},
                "mlp": {"wi": {"kernel": box(jnp.ones((2, 3, 4)), ("layers", "embed", "mlp")),
                               "bias": jnp.ones((2, 4))}},  # 2-D, but a bias
            },
            "final_norm": {"scale": jnp.ones((3,))},
        },
        "mlm_bias": jnp.ones((5,)),
    }


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_decay_mask(decay_embeddings):
    mask = optim.decay_mask(nn.meta.unbox(_params()), decay_embeddings=decay_embeddings)
    assert mask == {
        "token_embed": {"embedding": decay_embeddings},
        "decoder": {
            "layers": {"attn_norm": {"scale": False, "bias": False},
                       "mlp": {"wi": {"kernel": True, "bias": False}}},
            "final_norm": {"scale": False},
        },
        "mlm_bias": False,
    }
    # nn.Partitioned boxes (params straight from model.init) are seen through.
    boxed = optim.decay_mask(_params(), decay_embeddings=decay_embeddings)
    assert nn.meta.unbox(boxed)["decoder"]["layers"]["mlp"]["wi"]["kernel"] is True


def test_adamw_matches_torch():
    """Clip + AdamW + schedule + mask for 5 steps == torch.optim.AdamW with two param groups."""
    train_cfg = config_lib.default_train_config()
    train_cfg.update(lr=0.1, min_lr=0.01, warmup_steps=2, steps=5, weight_decay=0.3, b2=0.99,
                     clip_norm=0.5, decay_embeddings=False)
    tx, schedule = optim.make_optimizer(train_cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                          nn.meta.unbox(_params()))
    leaves, treedef = jax.tree.flatten(params)
    mask = jax.tree.leaves(optim.decay_mask(params, decay_embeddings=False))
    torch_params = [torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
                    for x in leaves]
    decayed = [p for p, m in zip(torch_params, mask, strict=True) if m]
    not_decayed = [p for p, m in zip(torch_params, mask, strict=True) if not m]
    torch_opt = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.3}, {"params": not_decayed, "weight_decay": 0.0}],
        lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    opt_state = tx.init(params)
    for step in range(5):
        grads = [rng.normal(size=x.shape) for x in leaves]
        updates, opt_state = tx.update(
            jax.tree.unflatten(treedef, [jnp.asarray(g, jnp.float32) for g in grads]),
            opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)
        for p, g in zip(torch_params, grads, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64)
        torch.nn.utils.clip_grad_norm_(torch_params, 0.5)
        for group in torch_opt.param_groups:
            group["lr"] = float(schedule(step))
        torch_opt.step()
    for got, want in zip(jax.tree.leaves(params), torch_params, strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["clipped", "not_clipped"])
def test_clip_by_global_norm_equals_optax(max_norm):
    rng = np.random.default_rng(0)
    grads = {"a": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    got, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    want, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
    norm = float(optax.tree.norm(got))
    assert norm == pytest.approx(min(max_norm, float(optax.tree.norm(grads))), rel=1e-6)


def test_optimizer_from_default_config_builds():
    tx, _ = optim.make_optimizer(config_lib.default_train_config())
    state = tx.init({"kernel": jnp.ones((2, 2))})
    assert jax.tree.leaves(state)
    assert isinstance(config_lib.default_train_config(), ml_collections.ConfigDict)
