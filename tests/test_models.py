"""GPT, BERT, T5 on tiny configs: shapes, causality, padding, code-path equivalence."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.generation.generate import generate
from lm.models import ModelConfig, build, model_config
from lm.nn.transformer import stack_layers
from tests.conftest import assert_grads_close, assert_trees_close, f32_tolerance, model_roundings

V, B, T = 97, 2, 8


def tiny(family, **overrides):
    return model_config(family, "tiny", vocab_size=V, **overrides)


def tokens(seed=0, shape=(B, T)):
    return jax.random.randint(jax.random.key(seed), shape, 1, V)


def inputs(cfg, seed=0):
    toks = tokens(seed)
    return (toks, tokens(seed + 1, (B, T - 2))) if cfg.family == "t5" else (toks,)


@functools.cache
def init(cfg, seed=0):
    return jax.jit(lambda key: nn.unbox(build(cfg).init(key, *inputs(cfg)))["params"])(
        jax.random.key(seed)
    )


@functools.cache
def compiled(cfg, method=None, **static):
    """One jitted apply per (config, method, static flags): eager flax re-traces every call."""
    model = build(cfg)

    def run(params, *args, rngs=None, **kwargs):
        return model.apply({"params": params}, *args, method=method, rngs=rngs, **static, **kwargs)

    return jax.jit(run)


def apply(cfg, params, *args, method=None, **kwargs):
    static = {k: kwargs.pop(k) for k in ("deterministic", "decode") if k in kwargs}
    return compiled(cfg, method, **static)(params, *args, **kwargs)


def assert_close(cfg, got, want):
    """Two float32 computations of `cfg`'s outputs that may round differently."""
    assert_trees_close(got, want, model_roundings(cfg))


def num_params(cfg):
    shapes = jax.eval_shape(lambda: build(cfg).init(jax.random.key(0), *inputs(cfg)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(d_model=64, num_heads=6), "num_heads=6 does not divide d_model=64"),
        (dict(num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=4"),
        (dict(position="alibi"), "position='alibi' is not one of"),
        (dict(norm="batchnorm"), "norm='batchnorm' is not one of"),
        (dict(activation="tanh"), "activation='tanh' is not one of"),
        (dict(remat_policy="some"), "remat_policy='some' is not one of"),
        (dict(kernels="gpu"), "kernels='gpu' is not one of"),
        (dict(position="relative"), "only implemented for family='t5'"),
    ],
)
def test_bad_config_raises_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny("gpt", **overrides)


def test_bad_family_size_or_field():
    with pytest.raises(ValueError, match="family='llama' is not one of"):
        model_config("llama", "tiny")
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        model_config("gpt", "huge")
    with pytest.raises(ValueError, match=r"unknown ModelConfig fields \['d_modle'\]"):
        model_config("gpt", "tiny", d_modle=3)
    with pytest.raises(ValueError, match="heads has"):
        model_config("bert", "tiny", heads=("mlm", "sop"))


def test_every_activation_name_has_one_function():
    """The config's names, the layers' functions and the HF converters' targets agree."""
    from lm.convert.common import HF_ACTIVATIONS
    from lm.nn import config, layers

    assert set(layers.ACTIVATIONS) == set(config.ACTIVATIONS)
    assert set(HF_ACTIVATIONS.values()) <= set(config.ACTIVATIONS)


def test_config_round_trips_through_a_flat_dict():
    cfg = tiny("bert")
    d = dataclasses.asdict(cfg)
    d["heads"] = list(d["heads"])  # as it comes back from a ConfigDict / JSON
    assert ModelConfig(**d) == cfg
    # A config recorded before `kernels` existed reads back with it at its default.
    del d["kernels"]
    assert ModelConfig(**d) == cfg and cfg.kernels == "auto"


def test_gpt2_base_has_124m_params():
    assert num_params(model_config("gpt", "base")) == 124_439_808


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("gpt", {}),
        (
            "gpt",
            dict(
                tie_embeddings=False,
                position="rope",
                num_kv_heads=2,
                gated=True,
                activation="silu",
                norm="rmsnorm",
                use_bias=False,
            ),
        ),
        ("t5", {}),
        (
            "t5",
            dict(tie_embeddings=False, gated=True, activation="gelu_tanh", num_decoder_layers=3),
        ),
        ("bert", dict(num_labels=1)),
    ],
)
def test_shapes(family, overrides):
    cfg = tiny(family, **overrides)
    variables = jax.eval_shape(lambda: build(cfg).init(jax.random.key(0), *inputs(cfg)))
    out = jax.eval_shape(lambda v: build(cfg).apply(v, *inputs(cfg)), variables)
    if family == "bert":
        want = dict(
            hidden=(B, T, 64),
            pooled=(B, 64),
            mlm_logits=(B, T, V),
            nsp_logits=(B, 2),
            logits=(B, 1),
        )
        assert {k: v.shape for k, v in out.items()} == want
    else:
        assert out.shape == (B, inputs(cfg)[-1].shape[1], V) and out.dtype == jnp.float32
        assert ("lm_head" in variables["params"]) == (not cfg.tie_embeddings)
        layers = nn.unbox(variables["params"]["decoder"]["layers"])
        assert layers["mlp"]["wo"]["kernel"].shape == (cfg.decoder_layers, cfg.d_ff, 64)


@pytest.mark.parametrize("cfg", [tiny("gpt"), tiny("bert", num_labels=3)])  # t5: below
def test_outputs_are_finite(cfg):
    kwargs = dict(token_type_ids=jnp.ones((B, T), jnp.int32)) if cfg.family == "bert" else {}
    out = apply(cfg, init(cfg), *inputs(cfg), **kwargs)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(out))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = tiny("gpt", dtype="bfloat16")
    params = init(cfg)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out = apply(cfg, params, tokens())
    assert out.dtype == jnp.float32 and np.isfinite(out).all()


def test_dropout_is_random_in_training_and_off_in_eval():
    cfg = tiny("bert", num_labels=3)
    params = init(cfg)
    train = [
        apply(cfg, params, tokens(), deterministic=False, rngs={"dropout": jax.random.key(i)})
        for i in range(2)
    ]
    assert not np.allclose(train[0]["hidden"], train[1]["hidden"])
    np.testing.assert_array_equal(
        apply(cfg, params, tokens())["hidden"], apply(cfg, params, tokens())["hidden"]
    )


# ----------------------------------------------------------------------------- causality


def jacobian_wrt_decoder_embeddings(cfg, params, toks, call):
    """d(output at t) / d(decoder input embedding at s): (T, T) norms.

    A perturbation is added to the token embedding lookup of the decoder tokens (found by
    their length) through a method interceptor, so the model code stays untouched.
    """
    n = toks.shape[1]
    w_V = jax.random.normal(jax.random.key(9), (V,))

    def f(delta_TxD):
        def add_delta(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            is_decoder_lookup = (
                context.module.name == "token_embed"
                and context.method_name == "__call__"
                and out.shape[1] == n
            )
            return out + delta_TxD if is_decoder_lookup else out

        with nn.intercept_methods(add_delta):
            return call(params) @ w_V  # (T,)

    jac_TxTxD = jax.jit(jax.jacrev(f))(jnp.zeros((n, cfg.d_model)))
    return np.abs(np.asarray(jac_TxTxD)).sum(-1)


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_output_at_t_ignores_inputs_after_t(family):
    cfg = tiny(family)
    params = init(cfg)
    enc, dec = tokens(0, (1, 6)), tokens(1, (1, 5))
    if family == "gpt":
        call = lambda p: apply(cfg, p, dec)[0]
    else:
        call = lambda p: apply(cfg, p, enc, dec)[0]
    jac = jacobian_wrt_decoder_embeddings(cfg, params, dec, call)
    assert np.all(jac[np.triu_indices(5, k=1)] == 0.0)  # exactly zero above the diagonal
    assert np.all(jac[np.tril_indices(5)] > 0.0)


# ----------------------------------------------------------------------------- padding


def test_bert_padding_does_not_leak():
    cfg = tiny("bert", num_labels=3)
    params = init(cfg)
    mask = jnp.array([[1] * T, [1] * 5 + [0] * 3])
    a, b = tokens(0), tokens(0).at[1, 5:].set(tokens(1)[1, 5:])
    out_a = apply(cfg, params, a, input_mask=mask)
    out_b = apply(cfg, params, b, input_mask=mask)
    for key in ("pooled", "nsp_logits", "logits"):
        assert_close(cfg, out_a[key], out_b[key])
    for key in ("hidden", "mlm_logits"):
        assert_close(cfg, out_a[key][:, :5], out_b[key][:, :5])
    assert not np.allclose(out_a["hidden"][1, 5:], out_b["hidden"][1, 5:])


def test_t5_encoder_padding_does_not_leak():
    cfg = tiny("t5")
    params = init(cfg)
    enc_mask = jnp.array([[1] * T, [1] * 4 + [0] * 4])
    enc_a = tokens(0)
    enc_b = enc_a.at[1, 4:].set(tokens(1)[1, 4:])
    dec = tokens(2, (B, 5))
    out_a = apply(cfg, params, enc_a, dec, encoder_mask=enc_mask)
    out_b = apply(cfg, params, enc_b, dec, encoder_mask=enc_mask)
    assert_close(cfg, out_a, out_b)
    enc = lambda t: apply(cfg, params, t, enc_mask, method="encode")
    assert_close(cfg, enc(enc_a)[1, :4], enc(enc_b)[1, :4])


def test_gpt_packed_documents_equal_separate_runs_and_ignore_padding():
    cfg = tiny("gpt")
    params = init(cfg)
    doc_a, doc_b = tokens(0, (1, 3)), tokens(1, (1, 4))
    packed = jnp.concatenate([doc_a, doc_b, jnp.array([[5]])], axis=1)  # + 1 padding
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
    out = apply(cfg, params, packed, segment_ids=segment_ids, positions=positions)
    assert_close(cfg, out[:, :3], apply(cfg, params, doc_a))
    assert_close(cfg, out[:, 3:7], apply(cfg, params, doc_b))
    other_pad = apply(
        cfg, params, packed.at[0, 7].set(9), segment_ids=segment_ids, positions=positions
    )
    assert_close(cfg, out[:, :7], other_pad[:, :7])


# ----------------------------------------------------------------------------- code paths


def test_jit_equals_no_jit():
    cfg = tiny("gpt")
    params = init(cfg)
    eager = build(cfg).apply({"params": params}, tokens())
    jitted = apply(cfg, params, tokens())
    assert_close(cfg, eager, jitted)


def restack(params):
    """Unrolled params -> scanned params, for every stack in the tree."""
    return {
        k: stack_layers(v, sum(n.startswith("layers_") for n in v))
        if k in ("encoder", "decoder")
        else v
        for k, v in params.items()
    }


# One T5 variant for the code-path tests: grouped-query, gated GELU, untied head (v1.1).
T5_VARIANT = tiny(
    "t5",
    num_kv_heads=2,
    gated=True,
    activation="gelu_tanh",
    tie_embeddings=False,
    scan_layers=False,
)
ENCODER_MASK = jnp.array([[1] * T, [1] * 5 + [0] * 3])


def t5_forward(cfg, params):
    return apply(cfg, params, *inputs(cfg), encoder_mask=ENCODER_MASK)


def test_scan_equals_unrolled():
    params = init(T5_VARIANT)
    assert "layers_1" in params["encoder"] and "layers_1" in params["decoder"]
    unrolled = t5_forward(T5_VARIANT, params)
    assert np.isfinite(unrolled).all()
    scanned = t5_forward(T5_VARIANT.replace(scan_layers=True), restack(params))
    assert_close(T5_VARIANT, unrolled, scanned)


def test_xla_and_dot_attention_agree():
    """T5 exercises every mask: bias, encoder padding, causal, cross-attention."""
    params = init(T5_VARIANT)
    dot = t5_forward(T5_VARIANT.replace(attention_impl="dot"), params)
    assert_close(T5_VARIANT, t5_forward(T5_VARIANT, params), dot)


@pytest.mark.parametrize("policy", ["full"])
def test_remat_equals_no_remat_values_and_gradients(policy):
    cfg = tiny("gpt")
    params = init(cfg)

    def loss(p, c):
        logits = build(c).apply({"params": p}, tokens())
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    want, want_grads = grad(params, cfg)
    got, got_grads = grad(params, cfg.replace(remat_policy=policy))
    np.testing.assert_allclose(got, want, **f32_tolerance(model_roundings(cfg)))
    assert_grads_close(got_grads, want_grads, model_roundings(cfg))


def decode_incrementally(cfg, params, toks, prefill, *, context=(), method=None):
    """Prefill `prefill` tokens, then one token at a time; logits of every step."""
    model = build(cfg)

    @jax.jit
    def step(variables, chunk):
        return model.apply(
            variables, *context, chunk, decode=True, method=method, mutable=["cache"]
        )

    _, state = step({"params": params}, toks)  # no cache yet: creates one, sized by toks
    cache = state["cache"]
    outs = []
    for chunk in [toks[:, :prefill]] + [toks[:, t : t + 1] for t in range(prefill, toks.shape[1])]:
        out, mutated = step({"params": params, "cache": cache}, chunk)
        cache = mutated["cache"]
        outs.append(out)
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize(
    "overrides", [{}, dict(position="rope", num_kv_heads=1, scan_layers=False)]
)
def test_gpt_kv_cache_decoding_equals_full_forward(overrides):
    cfg = tiny("gpt", **overrides)
    params = init(cfg)
    full = apply(cfg, params, tokens())
    assert_close(cfg, decode_incrementally(cfg, params, tokens(), 3), full)


def test_t5_kv_cache_decoding_equals_full_forward():
    cfg = T5_VARIANT.replace(scan_layers=True)
    params = restack(init(T5_VARIANT))
    enc, dec = inputs(cfg)
    encoded = apply(cfg, params, enc, ENCODER_MASK, method="encode")
    step = lambda mdl, encoded, chunk, decode: mdl.decode(
        encoded, chunk, encoder_mask=ENCODER_MASK, decode=decode
    )
    got = decode_incrementally(cfg, params, dec, 2, context=(encoded,), method=step)
    assert_close(cfg, got, t5_forward(cfg, params))


@pytest.mark.parametrize("family", ["gpt"])  # T5 decoding is checked by the KV-cache test
def test_greedy_generation_matches_argmax_of_full_forward(family):
    cfg = tiny(family)
    params = init(cfg)
    prompt, n = tokens(3, (B, 3)), 4
    enc = tokens(0) if family == "t5" else None
    new = generate(build(cfg), params, prompt, max_new_tokens=n, encoder_tokens=enc)
    assert new.shape == (B, n)
    full = jnp.concatenate([prompt, new], axis=1)[:, :-1]
    logits = apply(cfg, params, *((enc,) if family == "t5" else ()), full)
    np.testing.assert_array_equal(jnp.argmax(logits[:, -n:], -1), new)


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_traces_under_a_mesh_with_logical_rules(family):
    """Every param's logical names match its rank, and the activation constraints apply."""
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    rules = [
        ("batch", "data"),
        ("embed", "data"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv_heads", "model"),
        ("vocab", "model"),
    ]
    cfg = tiny(family, num_kv_heads=2, remat_policy="dots_saveable")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        variables = jax.eval_shape(build(cfg).init, jax.random.key(0), *inputs(cfg))
        jax.eval_shape(lambda v: build(cfg).apply(v, *inputs(cfg)), variables)
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(len(x.names) == x.value.ndim for x in boxed)
    assert len(boxed) == len(jax.tree.leaves(variables))
