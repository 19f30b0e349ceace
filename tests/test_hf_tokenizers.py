"""Tokenizers of published checkpoints give the ids of transformers' own tokenizers.

The GPT-2 and T5 vocabularies are trained on tiny Shakespeare in their checkpoints' layouts
(conftest.py; the HF hub is unreachable); the BERT one is the real MiniLM WordPiece.
"""

import os
import shutil

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its idle threads spin: NOTES.md

import ml_collections
import numpy as np
import pytest
import transformers

from lm.convert import minilm_dir
from lm.data import span, tokenizers
from tests.conftest import shakespeare_lines

SAMPLES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "First Citizen:\nWe are accounted poor citizens, the patricians good.",
    "  Ünïcödé text, digits 1234 and  double  spaces\tand tabs. ",
]


def t5_reference(t5_tokenizer_dir):
    return transformers.T5Tokenizer.from_pretrained(t5_tokenizer_dir)


def test_t5_spiece_matches_transformers_with_sentinels(t5_tokenizer_dir):
    ref = t5_reference(t5_tokenizer_dir)
    tok = tokenizers.SentencePieceTokenizer(os.path.join(t5_tokenizer_dir, "spiece.model"), 128)
    assert tok.base_vocab_size == len(ref) == 400 and tok.vocab_size == 512
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (ref.pad_token_id, ref.eos_token_id,
                                                    ref.unk_token_id) == (0, 1, 2)
    # <extra_id_N> = vocab - 1 - N, as transformers numbers them.
    assert len(tok.sentinel_ids) == 100
    want = ref.convert_tokens_to_ids([tokenizers.sentinel(i) for i in range(100)])
    assert list(tok.sentinel_ids) == want == [399 - i for i in range(100)]
    texts = SAMPLES + ["The <extra_id_0> walks in <extra_id_1> park.<extra_id_2>"]
    for text in texts:
        assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text


def test_t5_decode_of_sentinels_and_padding_ids(t5_tokenizer_dir):
    tok = tokenizers.SentencePieceTokenizer(os.path.join(t5_tokenizer_dir, "spiece.model"), 128)
    ids = tok.encode("good sir") + [tok.sentinel_ids[0], tok.eos_id, 450] + tok.encode("ay")
    # 450 is a vocabulary padding row (400..511): dropped, not OUT_OF_RANGE.
    assert tok.decode(ids) == "good sir<extra_id_0>ay"
    assert tok.decode(tok.encode(SAMPLES[0])) == SAMPLES[0]


def test_bare_spiece_model_takes_extra_ids(t5_tokenizer_dir, tmp_path):
    bare = shutil.copy(os.path.join(t5_tokenizer_dir, "spiece.model"), tmp_path / "spiece.model")
    assert tokenizers.SentencePieceTokenizer(str(bare)).sentinel_ids == ()
    tok = tokenizers.SentencePieceTokenizer(str(bare), extra_ids=10)
    assert tok.sentinel_ids[0] == 309 and tok.base_vocab_size == 310


def test_t5_span_corruption_finds_the_sentinels(t5_tokenizer_dir):
    ref = t5_reference(t5_tokenizer_dir)
    tok = tokenizers.SentencePieceTokenizer(os.path.join(t5_tokenizer_dir, "spiece.model"))
    tokens = np.array(tok.encode(" ".join(shakespeare_lines()[:10]))[:100])
    ex = span.span_corruption(tokens, np.random.default_rng(0), sentinel_ids=tok.sentinel_ids,
                              eos_id=tok.eos_id, pad_id=tok.pad_id, inputs_len=128,
                              targets_len=64)
    used = [int(i) for i in ex["inputs"] if i in tok.sentinel_ids]
    assert len(used) >= 2
    assert ref.convert_ids_to_tokens(used) == [tokenizers.sentinel(k) for k in range(len(used))]
    assert "<extra_id_1>" in tok.decode(ex["targets"])


def test_t5_tokenizer_json_matches_transformers(t5_tokenizer_dir):
    ref = t5_reference(t5_tokenizer_dir)
    tok = tokenizers.hf_tokenizer(t5_tokenizer_dir)  # prefers tokenizer.json
    assert isinstance(tok, tokenizers.HFTokenizer)
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.sentinel_ids[:3] == (399, 398, 397) and len(tok.sentinel_ids) == 100
    for text in SAMPLES:
        assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text


def test_gpt2_bpe_matches_transformers(gpt2_tokenizer_dir):
    ref = transformers.AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    tok = tokenizers.make_tokenizer(ml_collections.ConfigDict(dict(
        tokenizer=dict(kind="hf", path=gpt2_tokenizer_dir, vocab_multiple=128))))
    assert tok.eos_id == ref.eos_token_id == ref.convert_tokens_to_ids("<|endoftext|>") == 400
    assert tok.pad_id is None and tok.base_vocab_size == 401 and tok.vocab_size == 512
    for text in SAMPLES + ["end of a document<|endoftext|>and the next"]:
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(ids) == text  # byte-level BPE round-trips exactly
    # Word-start pieces carry GPT-2's space mark Ġ; the others continue a word.
    assert not tok.continues_word_V[tok.encode(" citizens")[0]]
    assert tok.continues_word_V[tok.encode(" citizens")[-1]]


@pytest.mark.parametrize("kind", ["hf", "wordpiece"])  # 'wordpiece': saved configs use it
def test_bert_wordpiece_matches_transformers(kind):
    ref = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    tok = tokenizers.make_tokenizer(ml_collections.ConfigDict(dict(
        tokenizer=dict(kind=kind, path=str(minilm_dir()), vocab_multiple=1))))
    for text in SAMPLES:
        assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id, tok.unk_id) == (
        ref.cls_token_id, ref.sep_token_id, ref.pad_token_id, ref.mask_token_id,
        ref.unk_token_id)
    assert tok.eos_id == tok.sep_id  # a BERT text ends with [SEP]
    assert tok.encode("a [MASK] b")[1] == tok.mask_id


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or spiece.model"):
        tokenizers.hf_tokenizer(str(tmp_path))
