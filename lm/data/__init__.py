"""Input pipeline: sources (TFDS, local text, TSV), tokenizers, objectives, batches.

`lm.data.config` and `lm.data.glue` (what experiment files read) import neither grain nor
jax; the pipeline and tokenizers are imported on first use.
"""

import importlib
from typing import Any

from lm.data.config import default_config

_LAZY = {"make_iterator": "lm.data.pipeline", "make_tokenizer": "lm.data.tokenizers",
         "Tokenizer": "lm.data.tokenizers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lm.data' has no attribute {name!r}")


__all__ = ["Tokenizer", "default_config", "make_iterator", "make_tokenizer"]
