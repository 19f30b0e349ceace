"""Pieces every family converter uses: tensor layout changes and HF config field checks."""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lm.errors import UserError

Path = tuple[str, ...]  # an lm parameter path: ('decoder', 'layers_0', 'attn', 'query', 'kernel')
Rule = tuple[str, Callable[[np.ndarray], np.ndarray]]  # (HF tensor name, its layout change)

# HF activation names (transformers' ACT2FN) -> lm activation. 'gelu' is the exact erf form;
# gelu_new / gelu_fast / gelu_pytorch_tanh are all the tanh approximation.
HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
}


# Layout changes shared by the families. torch nn.Linear stores weight as [out, in]; flax
# Dense kernels are [in, out]; attention kernels split the head axis (N heads of width H).
def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear(w_OxI: np.ndarray) -> np.ndarray:
    return w_OxI.T


def heads_in(num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch Linear [N*H, D] -> lm query/key/value kernel D×N×H."""
    return lambda w: w.T.reshape(w.shape[1], num_heads, -1)


def heads_out(num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """torch Linear [D, N*H] -> lm attention output kernel N×H×D."""
    return lambda w: w.T.reshape(num_heads, -1, w.shape[0])


def split_heads(num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Bias [N*H] -> N×H."""
    return lambda b: b.reshape(num_heads, -1)


def field(hf: Mapping, name: str, allowed: Mapping[Any, Any], default: Any = None) -> Any:
    """`allowed[hf[name]]`, or a clear error naming the field, its value and what is supported."""
    value = hf.get(name, default)
    try:
        return allowed[value]
    except (KeyError, TypeError):
        raise UserError(f"HF config field {name}={value!r} is not supported by the converter; "
                         f"supported: {sorted(allowed, key=repr)}") from None


def require(hf: Mapping, required: Mapping[str, tuple[Any, tuple]]) -> None:
    """Checks `hf[name]` (or its HF default) is one of the values lm reproduces exactly."""
    for name, (default, supported) in required.items():
        field(hf, name, {v: v for v in supported}, default)


def prefixed(prefix: Path, rules: Mapping[Path, Rule]) -> dict[Path, Rule]:
    """The same rules with `prefix` put in front of every lm path."""
    return {(*prefix, *path): rule for path, rule in rules.items()}


def dense_rules(name: str, bias: bool = True) -> dict[Path, Rule]:
    """lm Dense {kernel, bias} from torch Linear `name`."""
    rules = {("kernel",): (name + ".weight", linear)}
    if bias:
        rules[("bias",)] = (name + ".bias", identity)
    return rules


def norm_rules(name: str, bias: bool = True) -> dict[Path, Rule]:
    """lm norm {scale[, bias]} from torch LayerNorm / T5LayerNorm `name`."""
    rules = {("scale",): (name + ".weight", identity)}
    if bias:
        rules[("bias",)] = (name + ".bias", identity)
    return rules


def attention_rules(names: Mapping[str, str], num_heads: int, num_kv_heads: int,
                    bias: bool) -> dict[Path, Rule]:
    """lm attention {query, key, value, out} from four torch Linear layers.

    `names` maps each lm projection to its HF module name.
    """
    rules: dict[Path, Rule] = {}
    for ours, theirs in names.items():
        n = num_kv_heads if ours in ("key", "value") else num_heads
        is_out = ours == "out"
        rules[(ours, "kernel")] = (theirs + ".weight", heads_out(n) if is_out else heads_in(n))
        if bias:
            rules[(ours, "bias")] = (theirs + ".bias", identity if is_out else split_heads(n))
    return rules
