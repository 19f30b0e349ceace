"""Models: configs, the size table, and `build(cfg)` (family -> module class)."""

import flax.linen as nn

from lm.models.bert import BERT
from lm.models.config import ModelConfig, model_config
from lm.models.gpt import GPT
from lm.models.t5 import T5

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "bert": BERT, "t5": T5}


def build(cfg: ModelConfig) -> nn.Module:
    """The (unbound) Flax module for `cfg.family`."""
    return MODELS[cfg.family](cfg)


__all__ = ["BERT", "GPT", "MODELS", "T5", "ModelConfig", "build", "model_config"]
