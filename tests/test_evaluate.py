"""`lm eval`: split evaluation of a saved run, and sliding-window perplexity of a text."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from lm import models
from lm.__main__ import main
from lm.eval import perplexity as evaluate


def _tiny_gpt(max_len=16):
    cfg = models.model_config("gpt", "tiny", vocab_size=50, max_len=max_len, dropout_rate=0.0,
                              attention_dropout_rate=0.0, num_layers=1)
    model = models.build(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, max_len), jnp.int32))["params"]
    return model, params


def _nll_by_hand(model, params, ids):
    """float64 NLL of ids[1:] given the prefix, from one forward over `ids`."""
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(ids)[None])[0], np.float64)
    return -(scipy.special.log_softmax(logits[:-1], -1)[np.arange(len(ids) - 1), ids[1:]])


def test_one_window_is_the_mean_token_loss():
    model, params = _tiny_gpt()
    ids = np.random.default_rng(0).integers(1, 50, 13).astype(np.int32)
    nll, count = evaluate.text_nll(model, params, ids, window=16, stride=8)
    by_hand = _nll_by_hand(model, params, ids)
    assert count == 12 and nll == pytest.approx(by_hand.sum(), rel=1e-5)


def test_stride_equal_to_the_window_is_independent_chunks():
    model, params = _tiny_gpt()
    ids = np.random.default_rng(1).integers(1, 50, 40).astype(np.int32)
    nll, count = evaluate.text_nll(model, params, ids, window=16, stride=16)
    chunks = [ids[k:k + 16] for k in range(0, 40, 16)]
    expected = sum(_nll_by_hand(model, params, c).sum() for c in chunks)
    assert count == sum(len(c) - 1 for c in chunks)
    assert nll == pytest.approx(expected, rel=1e-5)


def test_sliding_windows_score_each_token_once_with_enough_context():
    for n, window, stride in [(100, 16, 4), (17, 16, 8), (16, 16, 5), (5, 16, 8)]:
        spans = evaluate.windows(n, window, stride)
        scored = [j for _, end, first in spans for j in range(first, end)]
        assert scored == list(range(1, n)), (n, window, stride)
        for k, (begin, end, first) in enumerate(spans):
            assert end - begin <= window
            if k:
                assert first - begin >= window - stride  # context of the first scored token




def test_eval_command_on_the_runs_split_and_on_a_text(shakespeare_run, tmp_path, capsys):
    main(["lm", "eval", "--workdir", str(shakespeare_run), "--split", "validation"])
    results = json.loads((shakespeare_run / "eval_validation.json").read_text())
    assert results["step"] == 20
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]), rel=1e-6)
    text = tmp_path / "sonnet.txt"
    text.write_text("Shall I compare thee to a summer's day?\nThou art more lovely.\n")
    main(["lm", "eval", "--workdir", str(shakespeare_run), "--text", str(text),
          "--stride", "8"])
    scores = json.loads((shakespeare_run / "eval_sonnet.json").read_text())
    chars = len(text.read_text())
    assert scores["tokens"] == chars - 1 and scores["words"] == 12
    assert scores["word_perplexity"] == pytest.approx(
        math.exp(scores["loss"] * scores["tokens"] / 12), rel=1e-9)
