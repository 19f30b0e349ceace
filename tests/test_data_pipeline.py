"""The grain pipeline: determinism, resume, host sharding, eval padding, memory, sources."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lm.data import classification, config, make_iterator, make_tokenizer, sources
from tests.conftest import FULL_DATA, full_data, tfds_prepared
from tests.test_data_objectives import small_sentencepiece, wikitext_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def sp_path(tmp_path_factory):
    return small_sentencepiece(tmp_path_factory)


def lm_cfg(sp_path, objective, **overrides):
    cfg = wikitext_cfg(objective=objective, seq_len=64, shuffle_buffer=16, num_threads=2,
                       **overrides)
    cfg.tokenizer.kind, cfg.tokenizer.path = "sentencepiece", sp_path
    return cfg


def glue_cfg(sp_path, task="sst2", source="glue"):
    cfg = lm_cfg(sp_path, "classification", task=task, source=source)
    cfg.data_dir, cfg.files = "", {}
    return cfg


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


OBJECTIVES = ["causal", "mlm_nsp", "span_corruption", "classification"]


def cfg_for(sp_path, objective):
    return glue_cfg(sp_path) if objective == "classification" else lm_cfg(sp_path, objective)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_same_seed_same_batches_other_seed_other_batches(sp_path, objective):
    cfg = cfg_for(sp_path, objective)
    tok = make_tokenizer(cfg)
    run = lambda seed: take(make_iterator(cfg, tok, split="train", batch_size=4, seed=seed), 3)
    first = run(0)
    assert_same(first, run(0))
    assert not np.array_equal(first[0]["inputs"], run(1)[0]["inputs"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_resume_gives_the_uninterrupted_batches(sp_path, objective):
    cfg = cfg_for(sp_path, objective)
    tok = make_tokenizer(cfg)
    it = make_iterator(cfg, tok, split="train", batch_size=4, seed=3)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # as saved in a checkpoint
    expected = take(it, 20)
    fresh = make_iterator(cfg, tok, split="train", batch_size=4, seed=3)
    fresh.set_state(state)
    assert_same(take(fresh, 20), expected)


def test_glue_shards_are_disjoint_and_cover_the_split_and_eval_pads(sp_path):
    cfg = glue_cfg(sp_path)
    tok = make_tokenizer(cfg)
    seen = []
    for p in range(3):
        batches = list(make_iterator(cfg, tok, split="validation", batch_size=64, seed=0,
                                     process_index=p, process_count=3, shuffle=False,
                                     num_epochs=1))
        real = np.concatenate([b["example_weights"] for b in batches]) > 0
        idx = np.concatenate([b["idx"] for b in batches])[real]
        last = batches[-1]
        assert (last["inputs"][last["example_weights"] == 0] == 0).all()  # zero rows
        seen.append(set(idx.tolist()))
        assert len(idx) == len(seen[-1])
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    everything = classification.records(cfg, "validation")
    assert set.union(*seen) == {int(everything[i]["idx"]) for i in range(len(everything))}


def test_causal_shards_cover_the_same_tokens(sp_path):
    cfg = lm_cfg(sp_path, "causal", eval_split="validation[:12]")
    tok = make_tokenizer(cfg)

    def tokens(p, count):
        batches = make_iterator(cfg, tok, split=cfg.eval_split, batch_size=8, seed=0,
                                process_index=p, process_count=count, shuffle=False,
                                num_epochs=1)
        return np.concatenate([b["targets"][b["weights"] > 0] for b in batches])

    whole = tokens(0, 1)
    parts = [tokens(p, 3) for p in range(3)]
    # each shard loses only its stream's first <eos> as a target
    np.testing.assert_array_equal(np.bincount(np.concatenate(parts), minlength=tok.vocab_size)
                                  + [2 if i == tok.eos_id else 0 for i in range(tok.vocab_size)],
                                  np.bincount(whole, minlength=tok.vocab_size))


def test_char_split_matches_nanogpt(tmp_path):
    text = sources.shakespeare_text()
    (tmp_path / "input.txt").write_text(text)
    raw = config.default_config()
    raw.source, raw.files, raw.char_split = "text", {"train": str(tmp_path / "input.txt")}, 0.9
    n = int(len(text) * 0.9)  # nanoGPT: train = data[:n], val = data[n:]
    assert sources.text_source(raw, "train")[0] == text[:n]
    assert sources.text_source(raw, "validation")[0] == text[n:]
    shipped = config.default_config()  # tiny_shakespeare: TFDS if prepared, else the copy in lm
    assert sources.text_source(shipped, "train")[0] == text[:n]
    val = sources.text_source(shipped, "validation+test")
    assert val[0] + val[1] == text[n:]


@tfds_prepared("tiny_shakespeare")
def test_shipped_shakespeare_has_tfds_splits():
    """The copy inside lm and TFDS's prepared tiny_shakespeare hold the same three splits."""
    import tensorflow_datasets as tfds

    from lm.data import home

    shipped = sources.tiny_shakespeare()
    prepared = tfds.data_source("tiny_shakespeare", data_dir=home.tfds_data_dir())
    for split in ("train", "validation", "test"):
        assert len(prepared[split]) == 1
        assert prepared[split][0]["text"].decode() == shipped[split][0]["text"], split


def test_wikitext_articles_and_split_slices():
    docs = sources.text_source(wikitext_cfg(), "validation")
    if FULL_DATA:
        assert len(docs) == 60  # WikiText-2 validation has 60 articles
    assert all(docs[i].startswith(" = ") and docs[i].split("\n")[0].count("=") == 2
               for i in range(len(docs)))
    assert len(sources.text_source(wikitext_cfg(), "validation[:10%]")) == round(len(docs) / 10)
    assert len(sources.text_source(wikitext_cfg(), "validation[-5:]+validation[:5]")) == 10


def test_glue_tsv_quirks(sp_path):
    cola = classification.records(glue_cfg(sp_path, "cola", "tsv"), "validation")
    assert cola[0]["texts"] == ("The sailors rode the breeze clear of the rocks.",)
    mrpc = classification.records(glue_cfg(sp_path, "mrpc", "tsv"), "train")
    assert mrpc[0]["label"] == 1 and mrpc[0]["texts"][0].startswith("Amrozi accused")  # BOM
    stsb = classification.records(glue_cfg(sp_path, "stsb", "tsv"), "validation")
    assert stsb[0]["label"] == 5.0
    if FULL_DATA:
        assert (len(cola), len(mrpc)) == (1043, 3668)


@tfds_prepared("glue/rte")
def test_glue_tsv_and_tfds_hold_the_same_examples(sp_path):
    rte_tsv = classification.records(glue_cfg(sp_path, "rte", "tsv"), "validation")
    rte_tfds = classification.records(glue_cfg(sp_path, "rte", "tfds"), "validation")
    by_idx = {r["idx"]: r for r in rte_tfds}
    assert all(by_idx[r["idx"]] == r for r in rte_tsv)
    assert len(rte_tsv) == len(rte_tfds) or not FULL_DATA


def test_clear_errors_and_tiny_sources(sp_path, tmp_path):
    cfg = lm_cfg(sp_path, "causal")
    tok = make_tokenizer(cfg)
    cfg.source, cfg.name = "tfds", "wikipedia/20230601.en"
    with pytest.raises(FileNotFoundError, match="tfds build"):
        make_iterator(cfg, tok, split="train", batch_size=2, seed=0)
    cfg.source, cfg.files = "text", {"train": str(tmp_path / "*.txt")}
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.* hold no text"):
        make_iterator(cfg, tok, split="train", batch_size=2, seed=0)
    (tmp_path / "tiny.txt").write_text("To be.")
    rows = take(make_iterator(cfg, tok, split="train", batch_size=2, seed=0), 3)
    assert all(r["weights"].all() for r in rows)  # a tiny corpus repeats to fill rows
    cfg.objective = "nope"
    with pytest.raises(ValueError, match="unknown objective"):
        make_iterator(cfg, tok, split="train", batch_size=2, seed=0)
    long_cfg = glue_cfg(sp_path)
    long_cfg.seq_len = 8  # texts longer than seq_len are truncated, never overflow
    b = next(make_iterator(long_cfg, tok, split="train", batch_size=4, seed=0))
    assert b["inputs"].shape == (4, 8) and (b["inputs"][:, -1] == tok.sep_id).all()


MEMORY_SCRIPT = """
import os, resource, sys, tempfile
from lm.data import make_iterator, make_tokenizer
from tests.test_data_objectives import WIKITEXT, wikitext_cfg
copies, sp_path = int(sys.argv[1]), sys.argv[2]
d = tempfile.mkdtemp()
for k in range(copies):  # the corpus repeated: links to one file
    os.symlink(WIKITEXT, os.path.join(d, f"part{k:02d}.txt"))
cfg = wikitext_cfg(objective="mlm_nsp", seq_len=128, num_threads=1, shuffle_buffer=256)
cfg.files = {"train": os.path.join(d, "*.txt")}
cfg.tokenizer.kind, cfg.tokenizer.path = "sentencepiece", sp_path
it = make_iterator(cfg, make_tokenizer(cfg), split="train", batch_size=32, seed=0)
for _ in range(40):
    next(it)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
@full_data("wikitext-2")
def test_memory_flat_as_the_corpus_grows(sp_path):
    def peak_kb(copies):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(copies), sp_path],
                             capture_output=True, text=True, check=True,
                             cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return int(out.stdout.split()[-1])

    one, twenty = peak_kb(1), peak_kb(20)
    assert twenty <= 1.10 * one, (one, twenty)
