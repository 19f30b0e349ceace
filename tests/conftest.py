"""Fixtures and data locations shared by several test files.

Data: `$LM_DATA_DIR` when the environment sets it (CI: the full copies), else the excerpts
in tests/data, so the suite runs on a fresh clone. `full_data(...)` marks the tests that
need the whole datasets; they are skipped, naming the command that prepares them.
"""

import functools
import os
import pathlib
import tempfile

import pytest

FIXTURES = pathlib.Path(__file__).resolve().parent / "data"
os.environ.setdefault("LM_DATA_DIR", str(FIXTURES))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `python -m lm` subprocesses share one compilation cache per test session (xdist workers
# included), not the user's: tests never depend on what an earlier session compiled.
os.environ.setdefault("LM_COMPILE_CACHE", os.path.join(
    tempfile.gettempdir(),
    f"lm-tests-jax-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID') or os.getpid()}"))
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


@functools.cache
def shakespeare_lines() -> list[str]:
    """The non-blank lines of the first 100k characters of tiny Shakespeare."""
    from lm.data import sources, tokenizers

    text = sources.shakespeare_text()[:100_000]
    return list(tokenizers.lines([text]))


@pytest.fixture(scope="session")
def t5_tokenizer_dir(tmp_path_factory) -> str:
    """A T5-layout tokenizer directory: a 300-piece spiece.model (<pad> 0, </s> 1, <unk> 2)
    and the tokenizer.json + tokenizer_config.json transformers converts it to (which
    appends the 100 sentinels: 400 ids)."""
    import sentencepiece as spm
    import transformers

    directory = tmp_path_factory.mktemp("t5_tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(shakespeare_lines()), model_prefix=str(directory / "spiece"),
        vocab_size=300, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    transformers.T5Tokenizer.from_pretrained(directory).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory) -> str:
    """A GPT-2-layout tokenizer directory: a 400-piece byte-level BPE, then <|endoftext|>
    (id 400, the last, as 50256 in GPT-2), saved by transformers."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tokenizers
    import transformers

    directory = tmp_path_factory.mktemp("gpt2_tokenizer")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(shakespeare_lines(), vocab_size=400, show_progress=False)
    bpe.add_special_tokens(["<|endoftext|>"])
    end = "<|endoftext|>"
    transformers.GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=end,
                                   bos_token=end, unk_token=end).save_pretrained(directory)
    return str(directory)


# A 1-layer char GPT on tiny Shakespeare: `lm train` flags of the tests that need a run.
TINY_GPT = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
            "--config.model.num_heads=2", "--config.data.seq_len=16",
            "--config.train.batch_size=4", "--config.train.eval_steps=1", "--quiet"]


@pytest.fixture(scope="session")
def shakespeare_run(tmp_path_factory) -> pathlib.Path:
    """A finished 20-step run of the tiny char GPT (lr 1e-2: it has learned a little)."""
    from lm.__main__ import main

    workdir = tmp_path_factory.mktemp("shakespeare")
    main(["lm", "train", "--config",
          f"{pathlib.Path(__file__).resolve().parent.parent}/experiments/gpt_shakespeare_char.py:cpu",
          "--workdir", str(workdir), *TINY_GPT, "--config.train.steps=20",
          "--config.train.lr=1e-2"])
    return workdir


# ----------------------------------------------------------------------------- float32 tolerances

F32_EPS = 2.0**-23  # np.finfo(np.float32).eps, about 1.19e-7


def f32_tolerance(n: int, magnitude: float = 1.0) -> dict[str, float]:
    """assert_allclose's rtol and atol for a float32 result against another computation of the
    same value (float64, or float32 rounded in another order): up to n roundings of relative
    size eps can add up (a length-n sum errs by n·eps, Higham's γ_n), relative to the result
    (rtol) or, where the result cancels toward 0, to `magnitude`, the size of its terms (atol)."""
    return dict(rtol=n * F32_EPS, atol=n * F32_EPS * magnitude)


def model_roundings(cfg) -> int:
    """n for f32_tolerance of a model's outputs or gradients: each layer on the path (encoder
    and decoder) adds a length-d_model (projections, norms) and a length-d_ff (MLP) sum."""
    layers = cfg.num_layers + (cfg.decoder_layers if cfg.family == "t5" else 0)
    return layers * (cfg.d_model + cfg.d_ff)


def assert_trees_close(got, want, n: int, magnitudes=None) -> None:
    """Each leaf of `got` within f32_tolerance(n, m) of `want`'s; m is the leaf's largest
    |value| in `want`, or its entry in the tree `magnitudes` where given."""
    import jax
    import numpy as np

    assert jax.tree.structure(got) == jax.tree.structure(want)
    if magnitudes is None:
        magnitudes = jax.tree.map(lambda w: float(np.max(np.abs(w), initial=0.0)), want)
    leaves = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g, m in zip(leaves, jax.tree.leaves(got), jax.tree.leaves(magnitudes),
                               strict=True):
        np.testing.assert_allclose(g, w, **f32_tolerance(n, m),
                                   err_msg=jax.tree_util.keystr(path))


def assert_grads_close(got, want, n: int) -> None:
    """assert_trees_close for parameter gradients. An attention key bias adds one constant to
    a row of logits, so its gradient is 0 in exact arithmetic and rounding noise in float32:
    it takes the size of its key kernel's gradient, the terms it sums."""
    import jax
    import numpy as np

    def magnitude(path, w, params=want):
        keys = [getattr(k, "key", None) for k in path]
        if keys[-2:] == ["key", "bias"]:
            for k in keys[:-1]:
                params = params[k]
            w = params["kernel"]
        return float(np.max(np.abs(w), initial=0.0))

    assert_trees_close(got, want, n, jax.tree_util.tree_map_with_path(magnitude, want))
