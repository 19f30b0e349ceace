"""The one typed model config: every hyperparameter of a GPT, BERT or T5 model.

`lm.nn` modules read it; `lm.models.config` adds the size table and each family's published
defaults. `dataclasses.asdict(cfg)` is the flat dict that experiment files keep in
`config.model`; `ModelConfig(**d)` reads it back (lists are accepted where tuples are expected).
"""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("gpt", "bert", "t5")
POSITIONS = ("learned", "rope", "relative", "none")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("xla", "dot", "cudnn")
# Op variants (lm.nn.ops.kernels): 'cpu' = tuned on CPU, 'plain' = formulas with autodiff,
# 'auto' = 'cpu' on the CPU backend, else 'plain'. Both compute the same function.
KERNELS = ("auto", "cpu", "plain")
BERT_HEADS = ("mlm", "nsp")
# How parameters start (lm.nn.layers.init_std): 'normal' N(0, init_std) everywhere (BERT);
# 'gpt2' also scales the projections into the residual stream by 1/sqrt(2 L) (GPT-2,
# nanoGPT); 't5' fan-in scaled normals, embeddings N(0, 1) (Mesh TF T5, HF).
INITS = ("normal", "gpt2", "t5")
# 'none' = no rematerialisation, 'full' = save nothing (recompute the whole block); any
# other name is a `jax.checkpoint_policies` attribute that takes no arguments.
REMAT_POLICIES = (
    "none",
    "full",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
    "nothing_saveable",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a GPT, BERT or T5 model (defaults: GPT-2 124M)."""

    family: str = "gpt"
    vocab_size: int = 50257
    num_layers: int = 12
    num_decoder_layers: int | None = None  # t5 only; None = num_layers
    d_model: int = 768
    num_heads: int = 12
    num_kv_heads: int | None = None  # None = num_heads; 1 = multi-query
    head_dim: int | None = None  # None = d_model // num_heads
    d_ff: int = 3072
    max_len: int = 1024  # learned position table size
    position: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    prenorm: bool = True  # False = post-LN (BERT): norm after the residual add
    activation: str = "gelu_tanh"
    gated: bool = False  # MLP out = wo(act(wi x) * wi_linear x)
    use_bias: bool = True
    tie_embeddings: bool = True
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    # Divide attention logits by sqrt(head_dim). T5 does not (it folds it into its init).
    scale_attention: bool = True
    init_std: float = 0.02
    init: str = "normal"  # INITS
    type_vocab_size: int = 2  # bert
    num_labels: int = 0  # bert, gpt classifier: 0 = none, 1 = regression
    heads: tuple[str, ...] = ()  # bert pretraining heads, subset of ('mlm', 'nsp')
    rel_buckets: int = 32  # t5 relative position bias
    rel_max_distance: int = 128
    dtype: str = "float32"  # compute dtype; params are always float32
    attention_impl: str = "xla"
    kernels: str = "auto"  # KERNELS
    scan_layers: bool = True
    # Layers per iteration of the scan's loop (params stay stacked either way); num_layers
    # unrolls it fully, which saves the loop's per-layer slicing and stacking where layers
    # are small (CPU), at a compile time that grows with depth.
    scan_unroll: int = 1
    remat_policy: str = "none"

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(self.heads))
        _validate(self)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    def replace(self, **overrides: Any) -> ModelConfig:
        return dataclasses.replace(self, **overrides)


def field_names() -> set[str]:
    """Every ModelConfig field name."""
    return {f.name for f in dataclasses.fields(ModelConfig)}


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"ModelConfig.{name}={value!r} is not one of {choices}")


def _validate(cfg: ModelConfig) -> None:
    for name, choices in [
        ("family", FAMILIES),
        ("position", POSITIONS),
        ("norm", NORMS),
        ("activation", ACTIVATIONS),
        ("dtype", DTYPES),
        ("attention_impl", ATTENTION_IMPLS),
        ("kernels", KERNELS),
        ("remat_policy", REMAT_POLICIES),
        ("init", INITS),
    ]:
        check_choice(name, getattr(cfg, name), choices)
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "d_ff", "max_len",
                 "scan_unroll"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"ModelConfig.{name}={getattr(cfg, name)} must be positive")
    if cfg.head_dim is None and cfg.d_model % cfg.num_heads:
        raise ValueError(
            f"num_heads={cfg.num_heads} does not divide d_model={cfg.d_model}: "
            "pick a divisor of d_model or set head_dim explicitly"
        )
    if cfg.num_heads % cfg.kv_heads:
        raise ValueError(
            f"num_kv_heads={cfg.num_kv_heads} does not divide num_heads={cfg.num_heads}: "
            "each kv head must serve the same number of query heads"
        )
    if cfg.position == "rope" and cfg.dim_per_head % 2:
        raise ValueError(f"rope needs an even head_dim, got {cfg.dim_per_head}")
    unknown = set(cfg.heads) - set(BERT_HEADS)
    if unknown:
        raise ValueError(f"ModelConfig.heads has {sorted(unknown)}; allowed: {BERT_HEADS}")
    if cfg.heads and cfg.family != "bert":
        raise ValueError(f"heads={cfg.heads} only apply to family='bert'")
    if cfg.num_labels < 0:
        raise ValueError(f"num_labels={cfg.num_labels} must be >= 0 (0 = no classifier)")
    if cfg.family == "t5" and cfg.position != "relative":
        raise ValueError(f"family='t5' needs position='relative', got {cfg.position!r}")
    if cfg.position == "relative" and cfg.family != "t5":
        raise ValueError("position='relative' (T5 bias) is only implemented for family='t5'")
