"""Fixtures shared by several test files."""

import pytest

from lm import data


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> str:
    """A 512-piece vocabulary of 2% of WikiText-2 train (seconds to train)."""
    from lm.data import sources, tokenizers

    cfg = data.default_config()
    cfg.update(source="text", doc_separator="wikitext", files={"train": "wikitext-2/train.txt"})
    prefix = tmp_path_factory.mktemp("spm") / "wt2_512"
    return tokenizers.train_sentencepiece(
        tokenizers.lines(sources.text_source(cfg, "train[:2%]")), str(prefix), vocab_size=512)
