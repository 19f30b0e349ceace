"""Models: configs, the size table, and `build(cfg)` (family -> module class).

The module classes are imported on first use, so that `lm.models.config` (what experiment
files read) costs no jax or flax import.
"""

import importlib
from typing import Any

from lm.models.config import ModelConfig, model_config

# family -> (module, class name)
_CLASSES = {"gpt": ("lm.models.gpt", "GPT"), "bert": ("lm.models.bert", "BERT"),
            "t5": ("lm.models.t5", "T5")}


def model_class(family: str) -> Any:
    """The (unbound) Flax module class of `family`."""
    module, name = _CLASSES[family]
    return getattr(importlib.import_module(module), name)


def build(cfg: ModelConfig) -> Any:
    """The (unbound) Flax module for `cfg.family`."""
    return model_class(cfg.family)(cfg)


def __getattr__(name: str) -> Any:  # `from lm.models import GPT` still works
    for family, (_, cls) in _CLASSES.items():
        if name == cls:
            return model_class(family)
    raise AttributeError(f"module 'lm.models' has no attribute {name!r}")


__all__ = ["BERT", "GPT", "T5", "ModelConfig", "build", "model_class", "model_config"]
