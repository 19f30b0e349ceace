"""Text-to-text (T5) finetuning: GLUE as text, pairs files, decoded-text metrics, a tiny run."""

import json
import pathlib

import numpy as np
import pytest
import sklearn.metrics

from lm import config as config_lib
from lm.data import glue, seq2seq, tokenizers
from lm.eval import metrics

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_glue_as_text_follows_the_t5_paper():
    rte, stsb = glue.get("rte"), glue.get("stsb")
    assert seq2seq.glue_source(rte, ("A man sleeps.", "Nobody sleeps.")) == (
        "rte sentence1: A man sleeps. sentence2: Nobody sleeps.")
    assert seq2seq.glue_target(glue.get("sst2"), 1) == "positive"
    assert seq2seq.glue_target(rte, 1) == "not_entailment"
    assert seq2seq.glue_target(stsb, 3.77) == "3.8" and seq2seq.glue_target(stsb, 2.1) == "2.0"
    assert seq2seq.label_of(rte, " not_entailment ") == 1 and seq2seq.label_of(rte, "yes") == -1
    assert seq2seq.label_of(stsb, "3.8") == 3.8 and seq2seq.label_of(stsb, "three") == -1


class _Words(tokenizers.Tokenizer):
    """Whitespace words over a fixed list (ids 3..), <pad>=0, <eos>=1, <unk>=2."""

    def __init__(self, words):
        self.words = list(words)
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
        super().__init__(len(self.words) + 3, [0, 1, 2], np.zeros(len(self.words) + 3, bool))

    def encode(self, text):
        return [self.words.index(w) + 3 if w in self.words else 2 for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i - 3] for i in ids if i >= 3)


def test_example_layout_truncates_and_shifts_the_decoder_inputs():
    tok = _Words("a b c d e f".split())
    ex = seq2seq.seq2seq_example({"source": "a b c d e f", "target": "d e f", "idx": 7}, tok,
                                 seq_len=4, target_len=3)
    np.testing.assert_array_equal(ex["inputs"], [3, 4, 5, 1])  # cut to fit <eos>
    np.testing.assert_array_equal(ex["targets"], [6, 7, 1])
    np.testing.assert_array_equal(ex["decoder_inputs"], [0, 6, 7])  # <pad> starts, shifted
    np.testing.assert_array_equal(ex["weights"], [1, 1, 1])
    short = seq2seq.seq2seq_example({"source": "a", "target": "b", "idx": 0}, tok, 4, 3)
    np.testing.assert_array_equal(short["input_mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(short["weights"], [1, 1, 0])


@pytest.mark.parametrize("kind", ["jsonl", "tsv", "tsv without header"])
def test_pairs_files(kind, tmp_path):
    pairs = [("hello world", "bonjour le monde"), ("good\tnight", "bonne nuit")][:1 + (
        kind == "jsonl")]
    path = tmp_path / ("p.jsonl" if kind == "jsonl" else "p.tsv")
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"en": s, "fr": t}) + "\n" for s, t in pairs))
    else:
        header = "" if "without" in kind else "en\tfr\n"
        path.write_text(header + "".join(f"{s}\t{t}\n" for s, t in pairs))
    cfg = config_lib.data_config()
    cfg.update(objective="seq2seq", source="pairs", files={"train": str(path)},
               pairs={"source_key": "en", "target_key": "fr"})
    records = seq2seq.records(cfg, "train")
    assert [(r["source"], r["target"]) for r in records] == pairs


def test_decoded_glue_labels_are_scored_like_the_classifier():
    rng = np.random.default_rng(0)
    task = glue.get("mrpc")
    labels = rng.integers(0, 2, 50)
    preds = np.where(rng.random(50) < 0.8, labels, 1 - labels)
    texts = [task.words[p] for p in preds]
    texts[3] = "maybe"  # no label word: wrong
    acc = metrics.text_metrics("mrpc")
    acc.add(texts, [task.words[y] for y in labels])
    scored = preds.copy()
    scored[3] = 1 - labels[3]
    got = acc.compute()
    assert got["f1"] == pytest.approx(sklearn.metrics.f1_score(labels, scored))
    assert got["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, scored))
    assert got["exact_match"] == got["accuracy"]


def test_free_text_metrics():
    import sacrebleu

    targets = ["the cat sat on the mat", "a dog barked loudly at night"]
    perfect = metrics.text_metrics("")
    perfect.add(list(targets), targets)
    assert perfect.compute() == {"bleu": pytest.approx(100.0), "rouge1": 1.0, "rouge2": 1.0,
                                 "rougeL": 1.0, "exact_match": 1.0}
    partial = metrics.text_metrics("")
    predictions = ["the cat sat on a mat", "dogs bark"]
    partial.add(predictions, targets)
    got = partial.compute()
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [targets]).score)
    # ROUGE-1 F1 by hand: 5 of 6 unigrams shared (the, cat, sat, on, mat; stemmed 'the' x2
    # counts once per occurrence) for the first; 'dogs'/'bark' stem to the target's words.
    assert 0 < got["rouge1"] < 1 and got["exact_match"] == 0.0


@pytest.mark.slow
def test_tiny_t5_finetunes_on_glue_text_and_decodes_the_dev_set(tmp_path):
    from lm.train.loop import train

    config = config_lib.load(
        f"{REPO}/experiments/finetune_t5.py:sst2,init=random,train=train[:64],epochs=1",
        {"train.batch_size": "8", "data.eval_split": "validation[:16]", "data.seq_len": "32",
         "model.vocab_size": "512", "train.log_every": "1"})
    result = train(config, str(tmp_path), quiet=True)
    assert result["step"] == 8  # 64 examples / 8 per batch, one epoch
    assert {"eval/loss", "eval/accuracy", "eval/exact_match"} <= set(result)
    assert 0.0 <= result["eval/accuracy"] <= 1.0
    assert result["best/step"] == 8
