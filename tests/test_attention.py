"""Attention math against float64 numpy references; masks, RoPE, T5 relative buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.nn import attention as A
from tests.conftest import f32_tolerance


def attention_roundings(H: int, S: int) -> int:
    """n for f32_tolerance of attention outputs: sums over H (logits) then S (the softmax
    denominator, the weighted values); the outputs are averages of v, so at most max |v|."""
    return H + 2 * S


def reference_attention(q, k, v, mask, bias, scale):
    """float64 numpy: kv head n // G serves query head n (repeat_kv as in HF Llama)."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    G = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    logits = np.where(np.asarray(mask), logits, np.finfo(np.float32).min)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", probs, v)


def random_qkv(num_kv_heads, B=2, T=5, S=7, N=4, H=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k = rng.normal(size=(B, S, num_kv_heads, H)).astype(np.float32)
    v = rng.normal(size=(B, S, num_kv_heads, H)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("impl", ["xla", "dot"])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_attention_matches_float64_reference(impl, num_kv_heads):
    q, k, v = random_qkv(num_kv_heads)
    B, T, N, _ = q.shape
    S = k.shape[1]
    rng = np.random.default_rng(1)
    valid_BxS = np.ones((B, S), np.int32)
    valid_BxS[1, -3:] = 0
    q_index = jnp.arange(T)[None] + (S - T)  # queries are the last T of S positions
    mask = A.combine_masks(
        A.causal_mask(q_index, jnp.arange(S)[None]), A.padding_mask(jnp.asarray(valid_BxS))
    )
    bias = rng.normal(size=(1, N, T, S)).astype(np.float32)
    got = A.attention(q, k, v, mask=mask, bias=bias, scale=0.3, impl=impl)
    want = reference_attention(q, k, v, mask, bias, 0.3)
    tol = f32_tolerance(attention_roundings(q.shape[3], S), np.abs(v).max())
    np.testing.assert_allclose(np.asarray(got), want, **tol)


def test_fully_masked_row_is_finite_and_other_rows_unaffected():
    q, k, v = random_qkv(4)
    mask = np.ones((2, 1, 5, 7), bool)
    mask[0, 0, 2] = False
    out = np.asarray(A.attention(q, k, v, mask=jnp.asarray(mask), scale=0.5))
    assert np.isfinite(out).all()
    want = reference_attention(q, k, v, mask, None, 0.5)[1]
    np.testing.assert_allclose(out[1], want, **f32_tolerance(attention_roundings(8, 7),
                                                             np.abs(v).max()))


def test_dot_impl_refuses_attention_dropout():
    q, k, v = random_qkv(4)
    with pytest.raises(ValueError, match="attention_dropout_rate=0"):
        A.attention(q, k, v, impl="dot", dropout_rate=0.1, dropout_rng=jax.random.key(0))
    with pytest.raises(ValueError, match="not one of"):
        A.attention(q, k, v, impl="flash")


def test_attention_dropout_zeroes_or_rescales_probabilities_unbiased():
    # v = identity over (S, H) makes the output the attention probabilities themselves;
    # n copies of one example in a batch draw n independent dropout masks.
    n = 1000
    q, k, _ = random_qkv(4, B=1, S=8, H=8)
    q, k = np.repeat(q, n, axis=0), np.repeat(k, n, axis=0)
    v = np.broadcast_to(np.eye(8, dtype=np.float32)[None, :, None, :], (n, 8, 4, 8))
    probs = np.asarray(A.attention(q[:1], k[:1], v[:1], scale=0.5))[0]
    dropped = np.asarray(
        A.attention(q, k, v, scale=0.5, dropout_rate=0.5, dropout_rng=jax.random.key(0))
    )
    kept = dropped != 0
    assert 0.45 < kept.mean() < 0.55
    # Scaling by 1 / (1 - 0.5) is exact; batch 1000 and batch 1 may sum in other orders.
    np.testing.assert_allclose(
        dropped[kept], np.broadcast_to(2 * probs, dropped.shape)[kept],
        **f32_tolerance(attention_roundings(8, 8)),
    )
    # Each element's mean over n samples has std p / sqrt(n): allow 5 of them.
    np.testing.assert_allclose(dropped.mean(0), probs, rtol=5 / np.sqrt(n), atol=1e-7)


def test_masks_match_their_definitions():
    seg = jnp.array([[1, 1, 2, 2, 0]])
    got = np.asarray(A.segment_mask(seg, seg))[0, 0]
    s = np.asarray(seg[0])
    want = np.array([[s[i] == s[j] and s[j] != 0 for j in range(5)] for i in range(5)])
    np.testing.assert_array_equal(got, want)
    causal = np.asarray(A.causal_mask(jnp.arange(4)[None], jnp.arange(4)[None]))[0, 0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), bool)))
    assert A.combine_masks(None, None) is None


def test_rope_is_a_relative_rotation():
    """<rope(q, m), rope(k, n)> depends on m - n only, and rope keeps norms."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)

    def score(m, n):
        qm = A.apply_rope(q, jnp.array([[m]]), 10000.0)
        kn = A.apply_rope(k, jnp.array([[n]]), 10000.0)
        return float(jnp.sum(qm * kn))

    # A float32 angle m θ (θ <= 1) is off by up to m eps radians, in q and in k; then a sum
    # of H products whose sizes add up to at most |q| |k|.
    H, qk = 8, float(jnp.linalg.norm(q) * jnp.linalg.norm(k))
    np.testing.assert_allclose(score(3, 1), score(10, 8), **f32_tolerance(H + 2 * 10, qk))
    np.testing.assert_allclose(score(0, 0), float(jnp.sum(q * k)), **f32_tolerance(H, qk))
    assert abs(score(5, 0) - score(0, 0)) > 1e-3
    rotated = A.apply_rope(q, jnp.array([[7]]), 10000.0)
    np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q),
                               **f32_tolerance(H + 7))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40)])
def test_relative_position_bucket_matches_hugging_face(bidirectional, num_buckets, max_distance):
    torch = pytest.importorskip("torch")
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-600, 601)
    want = T5Attention._relative_position_bucket(
        torch.tensor(rel),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    ).numpy()
    got = A.relative_position_bucket(
        jnp.asarray(rel, jnp.int32),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(np.asarray(got), want)


def test_cudnn_falls_back_to_the_same_math_off_gpu():
    """attention_impl='cudnn' runs where there is no cuDNN (this CPU) with the same result."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 4, 8)), jnp.float32) for _ in range(3))
    mask = A.causal_mask(jnp.arange(6)[None], jnp.arange(6)[None])
    want = A.attention(q, k, v, mask=mask, scale=8**-0.5, impl="xla")
    got = A.attention(q, k, v, mask=mask, scale=8**-0.5, impl="cudnn")
    np.testing.assert_allclose(got, want, **f32_tolerance(attention_roundings(8, 6),
                                                          jnp.abs(v).max()))
