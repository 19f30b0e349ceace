"""The speed-motivated code paths compute what the plain ones do: values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.models import build, model_config
from tests.conftest import (
    assert_grads_close,
    assert_trees_close,
    f32_tolerance,
    model_roundings,
)

V, B, T = 97, 2, 8


def _inputs(cfg):
    toks = jax.random.randint(jax.random.key(0), (B, T), 1, V)
    if cfg.family == "t5":
        return toks, jax.random.randint(jax.random.key(1), (B, T - 2), 1, V)
    return (toks,)


def _loss_and_grads(cfg, params):
    def loss(p):
        out = build(cfg).apply({"params": p}, *_inputs(cfg))
        logits = out["mlm_logits"] if isinstance(out, dict) else out
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * jnp.arange(logits.shape[-1])[3])

    return jax.jit(jax.value_and_grad(loss))(params)


def _params(cfg):
    return jax.jit(lambda k: nn.unbox(build(cfg).init(k, *_inputs(cfg)))["params"])(
        jax.random.key(0))


@pytest.mark.parametrize("family", ["gpt", "t5"])  # T5: cross-attention, relative bias
def test_unrolled_scan_equals_the_scan_loop(family):
    cfg = model_config(family, "tiny", vocab_size=V, num_layers=3, dropout_rate=0.0)
    params = _params(cfg)
    unrolled = cfg.replace(scan_unroll=3)
    # The same parameter tree, and the same values and gradients from it.
    shapes = lambda c: jax.eval_shape(lambda: _params(c))
    assert shapes(unrolled) == shapes(cfg)
    (want, want_grads), (got, got_grads) = (_loss_and_grads(c, params) for c in (cfg, unrolled))
    np.testing.assert_allclose(got, want, **f32_tolerance(model_roundings(cfg)))
    assert_grads_close(got_grads, want_grads, model_roundings(cfg))


def test_scan_unroll_must_be_positive():
    with pytest.raises(ValueError, match="scan_unroll"):
        model_config("gpt", "tiny", scan_unroll=0)


# Exact GELU everywhere (GPT's default is the tanh one, which has no 'cpu' variant); T5 with
# grouped-query attention (separate q and kv projections) and a gated MLP.
KERNEL_MODELS = {
    "gpt": dict(activation="gelu"),
    "bert": {},
    "t5": dict(num_kv_heads=2, gated=True, activation="gelu"),
}


def _kernel_model(family, kernels):
    return model_config(family, "tiny", vocab_size=V, dropout_rate=0.0, kernels=kernels,
                        **KERNEL_MODELS[family])


def _program(cfg, params):
    return str(jax.make_jaxpr(lambda p: build(cfg).apply({"params": p}, *_inputs(cfg)))(params))


@pytest.mark.parametrize("family", KERNEL_MODELS)
def test_cpu_and_plain_kernels_give_the_same_loss_and_gradients(family):
    cpu, plain = _kernel_model(family, "cpu"), _kernel_model(family, "plain")
    params = _params(cpu)
    assert jax.eval_shape(lambda: _params(plain)) == jax.eval_shape(lambda: params)
    # Two programs, not one: the hand-written derivatives (GELU, LayerNorm or attention)
    # are in the 'cpu' one only.
    assert "custom_vjp_call" in _program(cpu, params)
    assert "custom_vjp_call" not in _program(plain, params)
    (want, want_grads), (got, got_grads) = (_loss_and_grads(c, params) for c in (cpu, plain))
    np.testing.assert_allclose(got, want, **f32_tolerance(model_roundings(cpu)))
    assert_grads_close(got_grads, want_grads, model_roundings(cpu))


def test_auto_kernels_on_cpu_are_the_cpu_ones():
    assert jax.default_backend() == "cpu"
    auto, cpu = _kernel_model("bert", "auto"), _kernel_model("bert", "cpu")
    params = _params(cpu)
    assert _program(auto, params) == _program(cpu, params)
    for x, y in zip(*(jax.tree.leaves(_loss_and_grads(c, params)) for c in (auto, cpu)),
                    strict=True):
        np.testing.assert_array_equal(x, y)


def _attention_formula(q, k, v, mask, bias, scale):
    """The plain formula in jnp (float64 under enable_x64): what autodiff differentiates."""
    G = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) * scale + bias
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("kernels", ["cpu", "plain"])  # written out, autodiff in float32
@pytest.mark.parametrize("num_kv_heads", [4, 2])  # multi-head, grouped-query
@pytest.mark.parametrize("bias_batch", [1, 2])  # T5's shared bias, and one per example
def test_attention_gradients_equal_autodiff_of_the_formula_in_float64(num_kv_heads, bias_batch,
                                                                      kernels):
    from lm.nn import attention as A

    B, T, S, N, H = 2, 5, 7, 4, 8
    G = N // num_kv_heads
    # Sums in sequence: logits (H), softmax and values (S, S); backward: dprobs (H), the
    # softmax row (S), dq (S), dk and dv (T per query head, G heads per kv head), dbias (B).
    n = 2 * H + 3 * S + G * T + B
    rng = np.random.default_rng(0)
    q, g = (rng.normal(size=(B, T, N, H)).astype(np.float32) for _ in range(2))
    k, v = (rng.normal(size=(B, S, num_kv_heads, H)).astype(np.float32) for _ in range(2))
    bias = rng.normal(size=(bias_batch, N, T, S)).astype(np.float32)
    causal = A.causal_mask(jnp.arange(T)[None] + S - T, jnp.arange(S)[None])  # last T of S
    mask = np.broadcast_to(np.asarray(causal), (B, 1, T, S)).copy()
    mask[1, :, :, -2:] = False  # example 1 has two padding keys
    mask[0, 0, 1] = False  # one query of example 0 sees no key at all
    args = (q, k, v, bias)
    got = jax.jit(lambda *a: jax.vjp(
        lambda q, k, v, b: A.attention(q, k, v, mask=mask, bias=b, scale=0.3, kernels=kernels),
        *a)[1](g))(*args)
    with jax.enable_x64(True):
        a64 = [jnp.asarray(x, jnp.float64) for x in (*args, g)]
        want = jax.vjp(lambda q, k, v, b: _attention_formula(q, k, v, mask, b, 0.3),
                       *a64[:4])[1](a64[4])
    for name, x, y in zip(("dq", "dk", "dv", "dbias"), got, want, strict=True):
        assert x.shape == y.shape, name
        y = np.asarray(y)
        np.testing.assert_allclose(x, y, **f32_tolerance(n, np.abs(y).max()), err_msg=name)


@pytest.mark.parametrize("kernels", ["cpu", "plain"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_layer_norm_module_equals_flax_layer_norm(use_bias, kernels):
    """Same params (names, shapes, init) and the same values and gradients."""
    from lm.nn.layers import LayerNorm

    cfg = model_config("gpt", "tiny", use_bias=use_bias, norm_eps=1e-5, kernels=kernels)
    ours = LayerNorm(cfg)
    flax_ln = nn.LayerNorm(epsilon=1e-5, use_bias=use_bias, use_fast_variance=False)
    x = jax.random.normal(jax.random.key(0), (2, 3, cfg.d_model)) * 3 + 1
    params = nn.unbox(ours.init(jax.random.key(1), x))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, flax_ln.init(jax.random.key(1), x))
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)

    def grads(module):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), (0, 1))(params, x)

    # Two length-D means forward, two more backward, then the scale and bias gradients sum
    # over the B T rows.
    n = 4 * cfg.d_model + x.size // cfg.d_model
    want = flax_ln.apply(params, x)
    np.testing.assert_allclose(ours.apply(params, x), want, **f32_tolerance(n, jnp.abs(want).max()))
    assert_trees_close(grads(ours), grads(flax_ln), n)


def test_mlm_scored_at_listed_positions_equals_scoring_every_position():
    """The MLM head on the gathered `mlm_positions` (what training feeds) gives the loss,
    accuracy and gradients of the head on all T positions weighted by `weights`."""
    from lm.train import objectives

    cfg = model_config("bert", "tiny", vocab_size=V, num_layers=2, dropout_rate=0.0,
                       heads=("mlm", "nsp"))
    rng = np.random.default_rng(0)
    B, T, P = 3, 16, 5
    batch = {"inputs": rng.integers(1, V, (B, T)).astype(np.int32),
             "token_type_ids": np.zeros((B, T), np.int32),
             "input_mask": np.ones((B, T), np.int32),
             "targets": np.zeros((B, T), np.int32), "weights": np.zeros((B, T), np.float32),
             "mlm_positions": np.zeros((B, P), np.int32),
             "mlm_weights": np.zeros((B, P), np.float32),
             "nsp_labels": rng.integers(0, 2, B).astype(np.int32)}
    batch["input_mask"][2, 12:] = 0  # a padded row
    for b, n in enumerate([5, 3, 0]):  # full, partly filled and empty slot lists
        chosen = np.sort(rng.choice(np.arange(1, 12), n, replace=False))
        batch["targets"][b, chosen] = rng.integers(1, V, n)
        batch["weights"][b, chosen] = 1.0
        batch["mlm_positions"][b, :n], batch["mlm_weights"][b, :n] = chosen, 1.0
    every = {k: v for k, v in batch.items() if not k.startswith("mlm_")}
    objective, model = objectives.get("mlm_nsp", cfg), build(cfg)
    params = jax.jit(lambda k: nn.unbox(objectives.init_params(objective, model, k, batch)))(
        jax.random.key(0))

    def loss(p, b):
        out = objectives.forward(objective, model, p, b, deterministic=True)
        sums = objectives.metric_sums(objective, out, b)
        loss = objectives.total_loss(objective, sums, objectives.term_weights(objective, b))
        return loss, sums

    (got, got_sums), got_grads = jax.value_and_grad(loss, has_aux=True)(params, batch)
    (want, want_sums), want_grads = jax.value_and_grad(loss, has_aux=True)(params, every)
    n = model_roundings(cfg) + B * T  # the model, then sums over the scored positions
    np.testing.assert_allclose(got, want, **f32_tolerance(n))
    assert got_sums.keys() == want_sums.keys()
    for k in want_sums:
        np.testing.assert_allclose(got_sums[k], want_sums[k], **f32_tolerance(n), err_msg=k)
    assert_grads_close(got_grads, want_grads, n)
