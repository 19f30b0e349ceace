"""Model FLOPs utilisation: model FLOPs per token over the device's peak FLOP/s.

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B): 6·N for the matmuls of
forward + backward over the N parameters that multiply (embedding lookups do not), plus
12·L·D·T for attention scores and their weighted sum (L layers, D = heads·head_dim, T the
sequence length). Rematerialisation is not counted: that is what makes it *model* FLOPs.

The peak of an accelerator comes from its data sheet (PEAK_FLOPS); a CPU's is the best matmul
rate measured on the machine, cached across runs (`cached_cpu_peak`); `LM_PEAK_FLOPS=<FLOP/s>`
overrides both.
"""

import functools
import json
import os
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lm.compile_cache import cpu_name

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
# BERT's heads on the pooled [CLS] vector: one row per sequence, not per token.
_PER_SEQUENCE = ("pooler", "nsp", "classifier")
# BERT's MLM head (with the tied token embedding as its output projection): at every
# position, or only at the `mlm_positions` a pretraining batch lists.
_MLM_HEAD = ("mlm_transform", "mlm_norm", "mlm_bias")


def _count(params: Any, keep) -> int:
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if keep({str(getattr(k, "key", "")) for k in path}):
            total += int(np.prod(leaf.shape))
    return total


def matmul_params(params: Any, *, tie_embeddings: bool) -> int:
    """Parameters multiplied at every token: all but position/type/relative-bias tables and
    the per-sequence heads, and the token embedding only when `tie_embeddings` (it is then
    also the output projection: GPT, T5, BERT's MLM head)."""
    excluded = _LOOKUP_TABLES + _PER_SEQUENCE + (() if tie_embeddings else ("token_embed",))
    return _count(params, lambda keys: not keys.intersection(excluded))


def per_sequence_params(params: Any) -> int:
    """Parameters of the heads that multiply one pooled vector per sequence."""
    return _count(params, lambda keys: bool(keys.intersection(_PER_SEQUENCE)))


def embedding_is_output(model_cfg: Any) -> bool:
    """Whether the token embedding also projects to the vocabulary: tied, and a vocabulary
    head runs (BERT finetuned for classification, heads=(), only looks tokens up)."""
    has_vocab_head = model_cfg.family != "bert" or "mlm" in model_cfg.heads
    return model_cfg.tie_embeddings and has_vocab_head


def flops_per_token(n_matmul_params: float, *, num_layers: int, attn_width: int, seq_len: int
                    ) -> float:
    """Training FLOPs per token, forward + backward (PaLM's 6N + 12·L·D·T)."""
    return 6.0 * n_matmul_params + 12.0 * num_layers * attn_width * seq_len


def model_flops_per_token(model_cfg: Any, params: Any, seq_len: int,
                          mlm_slots: int | None = None) -> float:
    """Training FLOPs per input token of a model; encoder-decoders count both stacks at the
    encoder length, an upper bound (the decoder of span corruption sees ~1/4 of the tokens).
    `mlm_slots`: BERT's MLM head runs at that many positions of each sequence (the batch's
    `mlm_positions`), not at all `seq_len`."""
    layers = model_cfg.num_layers + (model_cfg.decoder_layers if model_cfg.family == "t5" else 0)
    tied_output = embedding_is_output(model_cfg)
    n = matmul_params(params, tie_embeddings=tied_output)
    if mlm_slots is not None:
        head_names = _MLM_HEAD + (("token_embed",) if tied_output else ())
        head = _count(params, lambda keys: bool(keys.intersection(head_names)))
        n -= head * (1.0 - mlm_slots / seq_len)
    per_token = flops_per_token(n, num_layers=layers,
                                attn_width=model_cfg.num_heads * model_cfg.dim_per_head,
                                seq_len=seq_len)
    return per_token + 6.0 * per_sequence_params(params) / seq_len


def cpu_matmul_peak(n: int = 1024, seconds: float = 1.0) -> float:
    """Measured float32 matmul FLOP/s of this host's CPU: the best of as many n×n products as
    fit in about `seconds` (other processes only ever slow a run down, so the best is the
    least disturbed one)."""
    x = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    best, deadline, runs = float("inf"), time.perf_counter() + seconds, 0
    while runs < 5 or time.perf_counter() < deadline:
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best, runs = min(best, time.perf_counter() - start), runs + 1
    return 2.0 * n**3 / best


def _cache_file() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "lm" / "cpu_peak_flops.json"


def cached_cpu_peak(seconds: float = 0.25) -> tuple[float, str]:
    """(FLOP/s, where it came from): the best float32 matmul rate ever measured on this
    machine (CPU model, core count, jax version), kept in ~/.cache/lm. Each run measures
    briefly and only ever raises the cached value, so MFU does not fall with the load of the
    moment a run starts; a machine that got slower needs its cache file deleted."""
    key = f"{cpu_name()} x{os.cpu_count()} jax {jax.__version__}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    measured = cpu_matmul_peak(seconds=seconds)
    if measured <= cache.get(key, 0.0):
        return float(cache[key]), f"the best measured on this CPU, cached in {path}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**cache, key: measured}, indent=1) + "\n")
        return measured, f"measured now (the best yet on this CPU), cached in {path}"
    except OSError:
        return measured, "measured now (not cached: the cache is not writable)"


@functools.cache
def peak_flops_and_source(device: jax.Device, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s of one device for compute in `dtype`, where it comes from); None for an
    unknown accelerator. `LM_PEAK_FLOPS` overrides."""
    if os.environ.get("LM_PEAK_FLOPS"):
        return float(os.environ["LM_PEAK_FLOPS"]), "LM_PEAK_FLOPS"
    if device.platform == "cpu":
        return cached_cpu_peak()
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device.device_kind.lower():
            return peaks.get(dtype, peaks["float32"]), f"data sheet ({device.device_kind})"
    return None, f"unknown device {device.device_kind!r}: set LM_PEAK_FLOPS"


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for compute in `dtype`; None for an unknown accelerator."""
    return peak_flops_and_source(device, dtype)[0]


class Rates(NamedTuple):
    steps: float
    tokens: float
    flops: float


class Throughput:
    """Steps, tokens and FLOPs per second over a window of steps, timed by when each step was
    seen to finish (`tick(done=...)`), not by when the host read it. The host reads a step
    one step late, and where a step runs inside its call (CPU) the two reads at an eval or
    checkpoint step come microseconds apart with a whole step between the steps they report:
    timed by the reads, that window reads 100× too fast. A window starts at the first step
    finished after a pause (compile, eval, checkpoint: `reset`); its own time is not counted."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._start, self._last, self._count, self._tokens, self._flops = None, None, 0, 0, 0.0

    def tick(self, tokens: int = 0, flops: float = 0.0, done: float | None = None) -> None:
        """A step was read; `done`: the perf_counter time it was seen finished (default now).
        The first step of a window only starts its clock (its time is not measured)."""
        done = time.perf_counter() if done is None else done
        if self._start is None:
            self._start = done
        else:
            self._count, self._tokens, self._flops, self._last = (
                self._count + 1, self._tokens + tokens, self._flops + flops, done)

    def rate(self) -> Rates | None:
        """Rates over the window (None if too few steps), and start a new one at its end."""
        if not self._count:
            return None
        seconds = max(self._last - self._start, 1e-9)
        rates = Rates(self._count / seconds, self._tokens / seconds, self._flops / seconds)
        last = self._last
        self.reset()
        self._start = last
        return rates
