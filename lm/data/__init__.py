"""Input pipeline: sources (TFDS, local text, TSV), tokenizers, objectives, batches."""

from lm.data.config import default_config
from lm.data.pipeline import make_iterator
from lm.data.tokenizers import Tokenizer, make_tokenizer

__all__ = ["default_config", "make_iterator", "make_tokenizer", "Tokenizer"]
