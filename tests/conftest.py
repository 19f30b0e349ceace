"""Fixtures and data locations shared by several test files.

Data: `$LM_DATA_DIR` when the environment sets it (CI: the full copies), else the excerpts
in tests/data, so the suite runs on a fresh clone. `full_data(...)` marks the tests that
need the whole datasets; they are skipped, naming the command that prepares them.
"""

import os
import pathlib

import pytest

FIXTURES = pathlib.Path(__file__).resolve().parent / "data"
os.environ.setdefault("LM_DATA_DIR", str(FIXTURES))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA_HOME = pathlib.Path(os.environ["LM_DATA_DIR"])
FULL_DATA = DATA_HOME.resolve() != FIXTURES


def full_data(name: str) -> pytest.MarkDecorator:
    """Skips a test that needs the whole of dataset `name` when only the excerpts are here."""
    return pytest.mark.skipif(
        not FULL_DATA, reason=f"needs the whole {name}: `python -m lm data prepare {name}` "
        "and LM_DATA_DIR pointing at the data home")


def tfds_prepared(name: str) -> pytest.MarkDecorator:
    """Skips a test that reads TFDS dataset `name` when it is not prepared."""
    from lm.data import home

    return pytest.mark.skipif(
        not home.tfds_prepared(name),
        reason=f"needs TFDS {name!r} prepared in $TFDS_DATA_DIR (or ~/tensorflow_datasets)")


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory) -> str:
    """A 512-piece vocabulary of WikiText-2 articles (seconds to train)."""
    from lm import data
    from lm.data import sources, tokenizers

    cfg = data.default_config()
    cfg.update(source="text", doc_separator="wikitext", files={"train": "wikitext-2/train.txt"})
    split = "train[:2%]" if FULL_DATA else "train"  # about a dozen articles either way
    prefix = tmp_path_factory.mktemp("spm") / "wt2_512"
    return tokenizers.train_sentencepiece(
        tokenizers.lines(sources.text_source(cfg, split)), str(prefix), vocab_size=512)
