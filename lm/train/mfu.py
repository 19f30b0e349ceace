"""Model FLOPs utilisation: model FLOPs per token over the device's peak FLOP/s.

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6·N for the matmuls of
forward + backward over the N parameters that multiply (embedding lookups do not), plus
12·L·D·T for attention scores and their weighted sum (L layers, D = heads·head_dim, T the
sequence length). Rematerialisation is not counted: that is what makes it *model* FLOPs.
"""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per chip by device_kind substring (first match wins: order matters).
# bfloat16 is the tensor-core/MXU rate; float32 matmuls run on TPU as bf16 passes and on
# NVIDIA GPUs (XLA default precision) as TF32.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("v6", {"bfloat16": 918e12, "float32": 918e12}),  # TPU v6e (Trillium)
    ("v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("v5", {"bfloat16": 197e12, "float32": 197e12}),  # v5e / v5 lite
    ("v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("v3", {"bfloat16": 123e12, "float32": 123e12}),
    ("v2", {"bfloat16": 45e12, "float32": 45e12}),
    ("H200", {"bfloat16": 989e12, "float32": 494e12}),
    ("H100", {"bfloat16": 989e12, "float32": 494e12}),  # SXM; PCIe is lower (756e12)
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float32": 60e12}),
    ("V100", {"bfloat16": 125e12, "float32": 15.7e12}),  # fp16 tensor cores
]

# Parameter collections that are looked up, not multiplied: no matmul FLOPs.
_LOOKUP_TABLES = ("pos_embed", "type_embed", "rel_bias")


def matmul_params(params: Any, *, tie_embeddings: bool) -> int:
    """Parameters taking part in matmuls: all but position/type/relative-bias tables, and the
    input token embedding unless it doubles as the (tied) output projection."""
    lookups = _LOOKUP_TABLES + (() if tie_embeddings else ("token_embed",))
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = {str(getattr(k, "key", "")) for k in path}
        if not keys.intersection(lookups):
            total += int(np.prod(leaf.shape))
    return total


def flops_per_token(n_matmul_params: int, *, num_layers: int, attn_width: int, seq_len: int
                    ) -> float:
    """Training FLOPs per token, forward + backward (PaLM's 6N + 12·L·D·T)."""
    return 6.0 * n_matmul_params + 12.0 * num_layers * attn_width * seq_len


def model_flops_per_token(model_cfg: Any, params: Any, seq_len: int) -> float:
    """Training FLOPs per input token of a model; encoder-decoders count both stacks at the
    encoder length, an upper bound (the decoder of span corruption sees ~1/4 of the tokens)."""
    layers = model_cfg.num_layers + (model_cfg.decoder_layers if model_cfg.family == "t5" else 0)
    return flops_per_token(matmul_params(params, tie_embeddings=model_cfg.tie_embeddings),
                           num_layers=layers,
                           attn_width=model_cfg.num_heads * model_cfg.dim_per_head,
                           seq_len=seq_len)


@functools.cache
def cpu_matmul_peak(n: int = 1024, reps: int = 5) -> float:
    """Measured float32 matmul FLOP/s on this host's CPU (best of a few runs; once per process)."""
    x = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for compute in `dtype`; None for an unknown accelerator."""
    if device.platform == "cpu":
        return cpu_matmul_peak()
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device.device_kind.lower():
            return peaks.get(dtype, peaks["float32"])
    return None
