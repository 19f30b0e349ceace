"""Tokenizers: sentencepiece (trained here), characters (nanoGPT style), HF WordPiece.

All share one interface: `encode(str) -> list[int]`, `decode(ids) -> str`, the ids of the
special symbols the objectives need (None where a vocabulary has no such symbol), and
`vocab_size` padded up to a multiple (the padding ids are never emitted).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from lm.errors import MissingFileError, UserError

# sentencepiece models trained here: <pad>=0, <eos>=1, <unk>=2 (as T5), then these.
BERT_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")


def sentinel(i: int) -> str:
    """The T5 sentinel symbol number i."""
    return f"<extra_id_{i}>"


class Tokenizer:
    """Ids of special symbols and the vocabulary layout; subclasses encode and decode."""

    pad_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    sentinel_ids: tuple[int, ...] = ()

    def __init__(self, base_vocab_size: int, special_ids: Iterable[int],
                 continues_word_V: np.ndarray, vocab_multiple: int = 1):
        self.base_vocab_size = base_vocab_size
        multiple = max(int(vocab_multiple), 1)
        self.vocab_size = -(-base_vocab_size // multiple) * multiple
        self.special_ids = np.asarray(sorted(set(special_ids)), np.int32)
        # Random replacement in MLM draws from these: real tokens only.
        self.normal_ids = np.setdiff1d(np.arange(base_vocab_size, dtype=np.int32),
                                       self.special_ids)
        self.continues_word_V = np.asarray(continues_word_V, bool)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def require(self, *names: str) -> None:
        """Raises if this vocabulary lacks a symbol an objective needs (e.g. 'mask_id')."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise UserError(f"{type(self).__name__} has no {', '.join(missing)}: this objective "
                             "needs a vocabulary with those symbols (a sentencepiece model "
                             "trained by `python -m lm tokenizer train`, or a BERT WordPiece)")


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, path: str, vocab_multiple: int = 1):
        import sentencepiece as spm

        if not os.path.exists(path):
            raise MissingFileError(f"no sentencepiece model at {path!r}: train one with "
                                    "`python -m lm tokenizer train --output PREFIX ...`")
        self.path = path
        self.sp = sp = spm.SentencePieceProcessor(model_file=path)
        n = sp.get_piece_size()
        ids = {p: sp.piece_to_id(p) for p in ("<pad>", "<eos>", "<unk>", *BERT_SYMBOLS)}
        found = {p: i for p, i in ids.items() if i != sp.unk_id() or p == "<unk>"}
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else found.get("<pad>")
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else found.get("<eos>")
        self.unk_id = sp.unk_id()
        self.cls_id, self.sep_id, self.mask_id = (found.get(p) for p in BERT_SYMBOLS)
        sentinels = []
        while (i := sp.piece_to_id(sentinel(len(sentinels)))) != sp.unk_id():
            sentinels.append(i)
        self.sentinel_ids = tuple(sentinels)
        special = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
        special += [i for i in (self.cls_id, self.sep_id, self.mask_id) if i is not None]
        special += sentinels
        special_set = set(special)
        continues = [i not in special_set and not sp.is_byte(i)
                     and not sp.id_to_piece(i).startswith("\u2581") for i in range(n)]
        super().__init__(n, special, np.array(continues), vocab_multiple)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])


class CharTokenizer(Tokenizer):
    """Characters, sorted, are ids 0..n-1 (nanoGPT's shakespeare_char); then <pad> <eos> <unk>."""

    def __init__(self, chars: str, vocab_multiple: int = 1):
        self.chars = "".join(sorted(set(chars)))
        n = len(self.chars)
        self.to_id = {c: i for i, c in enumerate(self.chars)}
        self.pad_id, self.eos_id, self.unk_id = n, n + 1, n + 2
        super().__init__(n + 3, [n, n + 1, n + 2], np.zeros(n + 3, bool), vocab_multiple)

    def encode(self, text: str) -> list[int]:
        return [self.to_id.get(c, self.unk_id) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] for i in ids if 0 <= i < n)


class WordPieceTokenizer(Tokenizer):
    """An imported Hugging Face BERT's WordPiece (its tokenizer.json), ids as it was trained."""

    def __init__(self, path: str, vocab_multiple: int = 1):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # idle threads spin
        import tokenizers

        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        self.tok = tok = tokenizers.Tokenizer.from_file(path)
        tok.no_padding()
        tok.no_truncation()
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
        self.eos_id = self.sep_id  # BERT ends a text with [SEP]
        n = tok.get_vocab_size(with_added_tokens=True)
        special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
        vocab = tok.get_vocab(with_added_tokens=True)
        continues = np.zeros(n, bool)
        continues[[i for t, i in vocab.items() if t.startswith("##")]] = True
        super().__init__(n, special, continues, vocab_multiple)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])


# ------------------------------------------------------------------------------ train


def train_sentencepiece(sentences: Iterable[str], prefix: str, *, vocab_size: int,
                        model_type: str = "unigram", character_coverage: float = 0.9995,
                        byte_fallback: bool = True, num_sentinels: int = 100,
                        max_sentences: int = 2_000_000, num_threads: int = 2) -> str:
    """Trains a sentencepiece model on `sentences` (one per line); returns PREFIX.model.

    The model holds <pad>=0, <eos>=1, <unk>=2, [CLS], [SEP], [MASK] and the T5 sentinels.
    Normalisation is off (identity) so that decode(encode(text)) == text.
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise UserError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_prefix=prefix, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            user_defined_symbols=[*BERT_SYMBOLS, *(sentinel(i) for i in range(num_sentinels))],
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            max_sentence_length=1 << 15, num_threads=num_threads, minloglevel=2)
    except RuntimeError as e:
        if "Vocabulary size too high" not in str(e):
            raise
        # A unigram model on a small corpus cannot reach vocab sizes near its word count
        # (WikiText-2: at most ~17.9k); BPE can.
        raise UserError(f"{e}: this corpus is too small for {vocab_size} {model_type} pieces;"
                         " use a smaller vocab_size or model_type='bpe'") from None
    return prefix + ".model"


def lines(docs: Sequence[str]) -> Iterable[str]:
    """The non-blank lines of every document: sentencepiece trains on lines."""
    for i in range(len(docs)):
        for line in docs[i].splitlines():
            if line.strip():
                yield line


def chars_of(docs: Sequence[str]) -> str:
    """Every character the documents use (a char vocabulary)."""
    chars = set()
    for i in range(len(docs)):
        chars.update(docs[i])
    return "".join(chars)


def save_chars(docs: Sequence[str], path: str) -> CharTokenizer:
    tok = CharTokenizer(chars_of(docs))
    with open(path, "w") as f:
        json.dump({"chars": tok.chars}, f, ensure_ascii=False)
    return tok


# ------------------------------------------------------------------------------- load


def make_tokenizer(data_cfg) -> Tokenizer:
    """The tokenizer data_cfg.tokenizer describes (kind 'sentencepiece' | 'char' | 'wordpiece')."""
    cfg = data_cfg.tokenizer
    kind, multiple = cfg.kind, cfg.vocab_multiple
    if kind == "sentencepiece":
        if not cfg.path:
            raise UserError("data.tokenizer.path is empty: point it at a sentencepiece .model "
                             "(train one with `python -m lm tokenizer train ...`)")
        return SentencePieceTokenizer(cfg.path, multiple)
    if kind == "wordpiece":
        if not cfg.path:
            raise UserError("data.tokenizer.path is empty: point it at a BERT tokenizer.json")
        return WordPieceTokenizer(cfg.path, multiple)
    if kind == "char":
        if cfg.path:
            with open(cfg.path) as f:
                return CharTokenizer(json.load(f)["chars"], multiple)
        from lm.data.sources import text_source  # the vocabulary is the text's characters

        return CharTokenizer(chars_of(text_source(data_cfg, cfg.vocab_split)), multiple)
    raise UserError(f"data.tokenizer.kind={kind!r}: expected 'sentencepiece', 'char' or "
                     "'wordpiece'")
