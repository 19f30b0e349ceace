"""GPT sequence classification (BERT's Table 5 "LTR" row): lm's GPT classifier equals HF's
GPT2ForSequenceClassification, and finetune_glue starts from a GPT pretraining run."""

import math
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
import transformers

from lm.convert import from_hf
from lm.data import classification, tokenizers
from tests.test_convert import TOL, VOCAB, gpt2_config, max_diff, randomized, saved

PAD = 0
LENGTHS = (12, 7, 1, 10)  # real tokens per row; the rest is right padding


def padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, input_mask) of rows LENGTHS long padded to 12 with PAD (never a real token)."""
    mask_BxT = (np.arange(12)[None] < np.asarray(LENGTHS)[:, None]).astype(np.int32)
    real_BxT = np.random.default_rng(seed).integers(1, VOCAB, mask_BxT.shape)
    return np.where(mask_BxT, real_BxT, PAD).astype(np.int32), mask_BxT


@pytest.mark.parametrize("num_labels", [3, 1], ids=["classes", "regression"])
def test_gpt_classifier_matches_hf(tmp_path, num_labels):
    """Right-padded rows of varied lengths: HF scores each row's last non-pad token."""
    torch.manual_seed(0)
    hf = randomized(transformers.GPT2ForSequenceClassification(
        gpt2_config(num_labels=num_labels, pad_token_id=PAD)))
    x, mask = padded_batch()
    want = hf(torch.tensor(x, dtype=torch.long),
              attention_mask=torch.tensor(mask)).logits.detach().numpy()
    model, params = from_hf(saved(hf, tmp_path))
    assert model.cfg.num_labels == num_labels and "lm_head" not in params
    got = model.apply({"params": params}, x, input_mask=mask)["logits"]
    assert got.shape == (len(LENGTHS), num_labels)
    assert max_diff(f"GPT-2 {num_labels}-label logits", got, want) <= TOL
    # Without the mask every row is read at its last position: padded rows then differ.
    unmasked = model.apply({"params": params}, x)["logits"]
    assert np.abs(np.asarray(unmasked) - want)[1:].max() > 1e3 * TOL


def test_pair_without_bert_symbols_ends_each_text_with_eos():
    tok = tokenizers.CharTokenizer("abc")  # <pad> 3, <eos> 4, <unk> 5
    record = {"texts": ("ab", "cab"), "label": 1, "idx": 0}
    ex = classification.classification_example(record, tok, seq_len=9, num_labels=2)
    np.testing.assert_array_equal(ex["inputs"], [0, 1, 4, 2, 0, 1, 4, 3, 3])
    np.testing.assert_array_equal(ex["input_mask"], [1] * 7 + [0] * 2)
    short = classification.classification_example(record, tok, seq_len=5, num_labels=2)
    np.testing.assert_array_equal(short["inputs"], [0, 4, 2, 0, 4])  # longer text cut first


@pytest.mark.slow
def test_finetune_glue_from_a_gpt_run(shakespeare_run, tmp_path):
    """finetune_glue on RTE pairs from the tiny char GPT: a GPT classifier whose encoder is
    the run's, a finite loss, the task's metric, and `predict` over the dev set."""
    from lm import config as config_lib
    from lm.eval import predictions as predict
    from lm.train import saved
    from lm.train.loop import train

    config = config_lib.load(
        f"experiments/finetune_glue.py:rte,init={shakespeare_run},seq_len=64,epochs=1,"
        "train=train[:16],batch=8", {"train.log_every": "1"})
    result = train(config, str(tmp_path), quiet=True)
    assert math.isfinite(result["train/loss"]) and 0 <= result["eval/accuracy"] <= 1
    run = saved.load(tmp_path, "latest")
    assert (run.model_cfg.family, run.model_cfg.num_labels) == ("gpt", 2)
    assert run.params["classifier"].keys() == {"kernel"}  # bias-free, as HF's `score`
    assert (shakespeare_run / "chars.json").is_file()  # the run's vocabulary, not RTE's
    _, scores = predict.predict(str(tmp_path), "validation", step="latest")
    assert scores["accuracy"] == pytest.approx(result["eval/accuracy"], abs=1e-6)
