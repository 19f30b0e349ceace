"""Tokenizers: sentencepiece (trained here, or T5's), characters (nanoGPT style), and any
Hugging Face tokenizer.json (GPT-2 BPE, BERT WordPiece, T5 unigram).

All share one interface: `encode(str) -> list[int]`, `decode(ids) -> str`, the ids of the
special symbols the objectives need (None where a vocabulary has no such symbol), and
`vocab_size` padded up to a multiple (the padding ids are never emitted).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

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
    """A sentencepiece model: trained here (special symbols inside the model), or T5's
    `spiece.model`, whose sentinels HF appends after the pieces: `<extra_id_N>` =
    pieces + extra_ids - 1 - N (t5-small: 32000 pieces + 100 sentinels = 32100 ids).

    extra_ids=None reads the count from the HF files beside the model (see _extra_ids); a
    model that holds its own sentinels gets none appended.
    """

    def __init__(self, path: str, vocab_multiple: int = 1, extra_ids: int | None = None):
        import sentencepiece as spm

        if not os.path.exists(path):
            raise MissingFileError(f"no sentencepiece model at {path!r}: train one with "
                                    "`python -m lm tokenizer train --output PREFIX ...`")
        self.path = path
        self.sp = sp = spm.SentencePieceProcessor(model_file=path)
        self.num_pieces = n = sp.get_piece_size()
        ids = {p: sp.piece_to_id(p) for p in ("<pad>", "<eos>", "<unk>", *BERT_SYMBOLS)}
        found = {p: i for p, i in ids.items() if i != sp.unk_id() or p == "<unk>"}
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else found.get("<pad>")
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else found.get("<eos>")
        self.unk_id = sp.unk_id()
        self.cls_id, self.sep_id, self.mask_id = (found.get(p) for p in BERT_SYMBOLS)
        sentinels = []
        while (i := sp.piece_to_id(sentinel(len(sentinels)))) != sp.unk_id():
            sentinels.append(i)
        extra = 0 if sentinels else _extra_ids(path) if extra_ids is None else extra_ids
        self.extra_ids = extra
        sentinels += [n + extra - 1 - k for k in range(extra)]
        self.sentinel_ids = tuple(sentinels)
        special = [i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)]
        special += [i for i in (self.cls_id, self.sep_id, self.mask_id) if i is not None]
        special += sentinels
        special_set = set(special)
        continues = [i not in special_set and not sp.is_byte(i)
                     and not sp.id_to_piece(i).startswith("\u2581") for i in range(n)]
        super().__init__(n + extra, special, np.array(continues + [False] * extra),
                         vocab_multiple)

    def encode(self, text: str) -> list[int]:
        if not self.extra_ids:
            return self.sp.encode(text)
        # Sentinels written in the text are one id each, the text between them pieces (as
        # HF's T5 tokenizer).
        parts = SENTINEL_RE.split(text)
        ids = []
        for k, part in enumerate(parts):
            if k % 2 and int(part) < self.extra_ids:
                ids.append(self.num_pieces + self.extra_ids - 1 - int(part))
            elif part:
                ids += self.sp.encode(sentinel(int(part)) if k % 2 else part)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Pieces decode as sentencepiece does; appended sentinels as `<extra_id_N>`; ids in
        the vocabulary padding (past base_vocab_size) are dropped."""
        out, run = [], []
        for i in map(int, ids):
            if 0 <= i < self.num_pieces:
                run.append(i)
            elif self.num_pieces <= i < self.base_vocab_size:
                out += [self.sp.decode(run), sentinel(self.num_pieces + self.extra_ids - 1 - i)]
                run = []
        return "".join(out) + self.sp.decode(run)


SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")


def _extra_ids(model_path: str) -> int:
    """How many sentinels an HF directory appends to its spiece.model: tokenizer_config.json's
    `extra_ids`, else HF's default of 100 for a T5 (config.json model_type 't5'), else 0."""
    directory = os.path.dirname(os.path.abspath(model_path))
    tok_config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    if "extra_ids" in tok_config:
        return int(tok_config["extra_ids"])
    model_type = _read_json(os.path.join(directory, "config.json")).get("model_type")
    return 100 if model_type == "t5" else 0


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


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


# Special-symbol attributes and their HF names (tokenizer_config.json `eos_token`...).
SPECIAL_NAMES = ("pad", "eos", "unk", "cls", "sep", "mask")
# Symbols of well-known vocabularies, for a bare tokenizer.json with no config files.
KNOWN_SYMBOLS = {
    "pad": ("[PAD]", "<pad>"), "eos": ("</s>", "<|endoftext|>", "<eos>"),
    "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]",), "sep": ("[SEP]",), "mask": ("[MASK]", "<mask>"),
}


class HFTokenizer(Tokenizer):
    """Any Hugging Face `tokenizer.json` (GPT-2's byte-level BPE, BERT's WordPiece, T5's
    unigram) through the `tokenizers` library, with its ids as the checkpoint has them.

    Special ids come from the files beside it: tokenizer_config.json and
    special_tokens_map.json (`eos_token`...), then config.json (`eos_token_id`...), then
    well-known symbols ([CLS], </s>, <|endoftext|>...). A BERT has no eos: its [SEP] ends a
    text. `path`: the tokenizer.json or its directory.
    """

    def __init__(self, path: str, vocab_multiple: int = 1):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # idle threads spin
        import tokenizers

        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        self.path = path
        self.tok = tok = tokenizers.Tokenizer.from_file(path)
        tok.no_padding()
        tok.no_truncation()
        for name, i in _special_ids(os.path.dirname(path), tok).items():
            setattr(self, f"{name}_id", i)
        if self.eos_id is None:
            self.eos_id = self.sep_id  # BERT ends a text with [SEP]
        sentinels = []
        while (i := tok.token_to_id(sentinel(len(sentinels)))) is not None:
            sentinels.append(i)
        self.sentinel_ids = tuple(sentinels)
        n = tok.get_vocab_size(with_added_tokens=True)
        added = tok.get_added_tokens_decoder()
        special = {i for i, t in added.items() if t.special} | set(sentinels)
        special |= {getattr(self, f"{k}_id") for k in SPECIAL_NAMES} - {None}
        super().__init__(n, special, _continues_word(tok, n, special), vocab_multiple)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Special symbols are kept (sentinels, [MASK]) except padding; ids past the
        vocabulary (its padding rows) are dropped."""
        keep = [int(i) for i in ids if 0 <= i < self.base_vocab_size and i != self.pad_id]
        return self.tok.decode(keep, skip_special_tokens=False)


WordPieceTokenizer = HFTokenizer  # the name experiments and saved configs used for BERT's


def _special_ids(directory: str, tok) -> dict[str, int | None]:
    """{'eos': id or None, ...}: the symbol the tokenizer files name, else config.json's
    `eos_token_id`..., else a well-known symbol of the vocabulary."""
    named = {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins
        for key, value in _read_json(os.path.join(directory, file)).items():
            value = value.get("content") if isinstance(value, dict) else value
            if key.endswith("_token") and isinstance(value, str):
                named[key.removesuffix("_token")] = value
    model_config = _read_json(os.path.join(directory, "config.json"))
    out = {}
    for name in SPECIAL_NAMES:
        from_config = model_config.get(f"{name}_token_id")
        if isinstance(from_config, list):  # several eos ids: the first
            from_config = from_config[0] if from_config else None
        candidates = [tok.token_to_id(named[name])] if name in named else []
        candidates += [from_config] + [tok.token_to_id(t) for t in KNOWN_SYMBOLS[name]]
        out[name] = next((i for i in candidates if i is not None), None)
    return out


def _continues_word(tok, n: int, special: set[int]) -> np.ndarray:
    """Pieces that continue a word (whole-word masking): WordPiece's `##x`, and for
    byte-level BPE / unigram the pieces without the word-start mark (Ġ / ▁)."""
    spec = json.loads(tok.to_str())
    continues = np.zeros(n, bool)
    vocab = tok.get_vocab(with_added_tokens=True)
    if spec["model"]["type"] == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        ids = [i for t, i in vocab.items() if t.startswith(prefix)]
    else:
        mark = "\u0120" if "ByteLevel" in json.dumps(spec["pre_tokenizer"]) else "\u2581"
        ids = [i for t, i in vocab.items() if not t.startswith(mark)]
    continues[ids] = True
    continues[sorted(special)] = False
    return continues


def hf_tokenizer(directory: str, vocab_multiple: int = 1) -> Tokenizer:
    """The tokenizer of a Hugging Face checkpoint directory: its tokenizer.json, else T5's
    spiece.model (with HF's sentinels)."""
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        return HFTokenizer(directory, vocab_multiple)
    if os.path.isfile(os.path.join(directory, "spiece.model")):
        return SentencePieceTokenizer(os.path.join(directory, "spiece.model"), vocab_multiple)
    raise MissingFileError(f"no tokenizer.json or spiece.model in {directory!r} (a vocab.txt "
                           "or vocab.json + merges.txt only: re-save it with transformers' "
                           "`AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)")


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


def _read_chars(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        chars = json.load(f)["chars"]
    # save_chars writes one string; a list of one-character strings reads the same.
    if not (isinstance(chars, str) or isinstance(chars, list)
            and all(isinstance(c, str) for c in chars)):
        raise ValueError('"chars" is neither a string nor a list of strings')
    return chars


def _from_file(path: str, what: str, load) -> Tokenizer:
    """`load()`, with a missing or unreadable file named in one line (data.tokenizer.path)."""
    if not os.path.exists(os.path.expanduser(path)):
        raise MissingFileError(f"data.tokenizer.path={path!r}: no such file (a {what})")
    try:
        return load()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (any failure to read it: the file is not one)
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        if isinstance(e, KeyError):
            reason = f"no key {e}"
        raise UserError(f"data.tokenizer.path={path!r} is not a {what}: {reason}") from None


def make_tokenizer(data_cfg) -> Tokenizer:
    """The tokenizer data_cfg.tokenizer describes: kind 'sentencepiece' (a .model; T5's
    spiece.model gets its sentinels), 'char', or 'hf' (a Hugging Face tokenizer.json or its
    directory; 'wordpiece' is the old name)."""
    cfg = data_cfg.tokenizer
    kind, multiple = cfg.kind, cfg.vocab_multiple
    if kind == "sentencepiece":
        if not cfg.path:
            raise UserError("data.tokenizer.path is empty: point it at a sentencepiece .model "
                             "(train one with `python -m lm tokenizer train ...`)")
        return _from_file(cfg.path, "sentencepiece model (.model)",
                          lambda: SentencePieceTokenizer(cfg.path, multiple))
    if kind in ("hf", "wordpiece"):
        if not cfg.path:
            raise UserError(f"data.tokenizer.path is empty: kind={kind!r} needs a Hugging Face "
                             "tokenizer.json (or the checkpoint directory holding it)")
        return _from_file(cfg.path, "Hugging Face tokenizer.json (or its directory)",
                          lambda: HFTokenizer(cfg.path, multiple))
    if kind == "char":
        if cfg.path:
            return _from_file(cfg.path, 'char vocabulary (JSON {"chars": [...]})',
                              lambda: CharTokenizer(_read_chars(cfg.path), multiple))
        from lm.data.sources import text_source  # the vocabulary is the text's characters

        return CharTokenizer(chars_of(text_source(data_cfg, cfg.vocab_split)), multiple)
    raise UserError(f"data.tokenizer.kind={kind!r}: expected 'sentencepiece', 'char' or 'hf' "
                     "(alias 'wordpiece')")


def train_vocabulary(data_cfg, output: str, *, split: str = "train",
                     kind: str = "sentencepiece", **sentencepiece: Any) -> str:
    """Trains a vocabulary on `split` of a data config: a sentencepiece model (OUTPUT.model,
    `train_sentencepiece`'s keywords) or a char vocabulary (OUTPUT.json); returns its path."""
    from lm.data import sources

    docs = sources.text_source(data_cfg, split)
    if kind == "char":
        save_chars(docs, output + ".json")
        return output + ".json"
    return train_sentencepiece(lines(docs), output, **sentencepiece)
