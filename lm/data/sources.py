"""Random-access data sources: TFDS (array_record, no TensorFlow), local text files, TSV.

Every source is a `Sequence`: `len(src)` and `src[i]` read one document (a `str`) or one
record (a `dict`) on demand, so the pipeline never holds a corpus in memory. Local text
files are indexed once by byte offsets (a few integers per document) and read with
`os.pread`, which keeps file pages out of the process's RSS.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import functools
import glob
import gzip
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lm.data import home
from lm.errors import MissingFileError, UserError

# ` = Title = ` starts a WikiText article; ` = = Section = = ` does not.
_WIKITEXT_TITLE = re.compile(rb"^ = [^=].* = $")
_NAMED_SEPARATORS = ("file", "line", "blank_line", "wikitext")
ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
_SPLIT_PART = re.compile(r"^(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?$")


# ----------------------------------------------------------------------------- splits


def parse_split(split: str) -> list[tuple[str, str | None, str | None]]:
    """'train[:10%]+validation' -> [('train', None, '10%'), ('validation', None, None)]."""
    parts = []
    for part in split.replace(" ", "").split("+"):
        m = _SPLIT_PART.match(part)
        if not m:
            raise UserError(
                f"bad split {split!r}: expected names joined by '+', each optionally sliced "
                "like 'train', 'train[:10%]', 'train[100:200]'")
        parts.append((m.group(1), m.group(2) or None, m.group(3) or None))
    return parts


def _bound(b: str | None, n: int, default: int) -> int:
    if b is None:
        return default
    k = round(n * int(b[:-1]) / 100) if b.endswith("%") else int(b)
    k = n + k if k < 0 else k
    return min(max(k, 0), n)


class Concat(Sequence):
    """Several random-access sequences read as one (for 'train+validation')."""

    def __init__(self, parts: Sequence[Sequence]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self.starts, i) - 1
        return self.parts[k][i - self.starts[k]]


@dataclasses.dataclass
class Slice(Sequence):
    parent: Sequence
    start: int
    stop: int

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.parent[self.start + i]


@dataclasses.dataclass
class Mapped(Sequence):
    """`fn` of each item of a random-access sequence, computed when the item is read."""

    items: Sequence
    fn: Callable[[Any], Any]  # module-level (or a partial of one): grain may pickle it

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.fn(self.items[i])


def read_all(items: Sequence) -> list:
    """Every item, in one batched read where the source has one: TFDS's array_record then
    reads many records per call, instead of one call (and one lookup) per record."""
    if isinstance(items, Mapped):
        return [items.fn(x) for x in read_all(items.items)]
    read = getattr(items, "__getitems__", None)
    return list(read(range(len(items))) if read else items)


def apply_split(split: str, by_name: dict[str, Sequence]) -> Sequence:
    """Resolves a split expression over named, already built sequences."""
    parts = []
    for name, lo, hi in parse_split(split):
        if name not in by_name:
            raise UserError(f"unknown split {name!r}: this source has {sorted(by_name)}")
        seq = by_name[name]
        n = len(seq)
        parts.append(Slice(seq, _bound(lo, n, 0), _bound(hi, n, n)))
    return parts[0] if len(parts) == 1 else Concat(parts)


# ------------------------------------------------------------------------------- TFDS


def shakespeare_text() -> str:
    """The tiny Shakespeare text shipped inside lm (karpathy/char-rnn's input.txt, public
    domain, 1,115,394 characters)."""
    with gzip.open(ASSETS / "tiny_shakespeare.txt.gz", "rt", encoding="utf-8") as f:
        return f.read()


def tiny_shakespeare() -> dict[str, list[dict]]:
    """`shakespeare_text()` split exactly as TFDS's `tiny_shakespeare` 1.0.0 builder splits it:
    90/5/5 by characters, one example each."""
    text = shakespeare_text()
    i = int(len(text) * 0.9)
    train, rest = text[:i], text[i:]
    j = int(len(rest) * 0.5)
    return {"train": [{"text": train}], "validation": [{"text": rest[:j]}],
            "test": [{"text": rest[j:]}]}


# TFDS datasets with a copy inside the package: read when TFDS has not prepared them.
EMBEDDED = {"tiny_shakespeare": tiny_shakespeare}


def tfds_records(name: str, split: str, data_dir: str | None = None) -> Sequence[dict]:
    """Random access to a prepared TFDS split (array_record) without TensorFlow, or to the
    embedded copy of a dataset lm ships (tiny Shakespeare) when TFDS has not prepared it."""
    if not home.tfds_prepared(name, data_dir):
        if name in EMBEDDED:
            return apply_split(split, EMBEDDED[name]())
        # tfds.data_source would try to download and build the dataset (which needs
        # TensorFlow and internet): fail early with instructions instead.
        where = home.tfds_data_dir(data_dir)
        raise MissingFileError(
            f"TFDS dataset {name!r} is not prepared in {where} (data.data_dir, else "
            f"$TFDS_DATA_DIR, else ~/tensorflow_datasets). Prepare it with TFDS on a machine "
            f"with internet (`pip install tensorflow; tfds build {name.split(':')[0]} "
            "--data_dir=DIR`) and point data.data_dir or $TFDS_DATA_DIR at DIR; for GLUE, "
            "`python -m lm data prepare glue/<task>` and data.source='glue' read the TSV files.")
    import tensorflow_datasets as tfds  # slow import: only when used

    try:
        return tfds.data_source(name, split=split, data_dir=home.tfds_data_dir(data_dir),
                                download=False)
    except ValueError as e:  # TFDS's split parser: an unknown name or bad slice syntax
        reason = "unknown split" if "Unknown split" in str(e) else "unparsable split"
        raise UserError(f"{reason} {split!r} of TFDS {name!r}: {str(e).split(' See ')[0]} "
                        "(slices look like train[:90%] or validation+test)") from None


def field(key: str, record: dict) -> str:
    """One text feature of a record, as `str` (see `Mapped`)."""
    if key not in record:
        raise UserError(f"records have no text feature {key!r}; they have {sorted(record)} "
                        "(set data.text_key)")
    return as_str(record[key])


def as_str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


# ------------------------------------------------------------------------- text files


def _line_kind(body: bytes, separator: str) -> str:
    """'title' (a document starts here), 'sep' (a separator line) or 'text'."""
    if separator == "wikitext" and _WIKITEXT_TITLE.match(body):
        return "title"
    if separator == "blank_line" and not body.strip():
        return "sep"
    if separator not in _NAMED_SEPARATORS and body == separator.encode():
        return "sep"
    return "text"


def _check_utf8(path: str, number: int, line: bytes) -> None:
    """Text files are UTF-8: anything else (latin-1, a binary file) is named, not replaced."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (line {number}, byte {e.start}: "
                        f"{line[e.start:e.start + 4]!r}): convert it, e.g. `iconv -f latin1 -t "
                        "utf-8`, or give another file") from None
    if b"\0" in line:
        raise UserError(f"{path} is a binary file, not text (a NUL byte on line {number}): "
                        "give a text file") from None


def _doc_spans(path: str, separator: str) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the non-blank documents of one file, streaming its lines."""
    if separator == "file":
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                _check_utf8(path, number, line)
        return [(0, os.path.getsize(path))]
    spans, start, pos, has_text = [], 0, 0, False

    def close(end: int) -> None:
        if has_text:
            spans.append((start, end))

    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            body = line.rstrip(b"\r\n")
            _check_utf8(path, number, body)
            kind = _line_kind(body, separator)
            if kind == "title":  # the title line belongs to its article
                close(pos)
                start, has_text = pos, False
            if kind == "sep":
                close(pos)
                start, has_text = pos + len(line), False
            else:
                has_text = has_text or bool(body.strip())
            pos += len(line)
            if separator == "line":
                close(pos - len(line) + len(body))
                start, has_text = pos, False
    close(pos)
    return spans


class TextFiles(Sequence):
    """Documents of local text files (a glob): one per file, or split by a separator.

    separator: 'file' (a document per file), 'blank_line', 'line', 'wikitext' (articles
    start at ` = Title = ` lines), or any other string: a line equal to it ends a document.
    """

    def __init__(self, pattern: str, separator: str = "file"):
        self.files = sorted(glob.glob(os.path.expanduser(pattern)))
        if not self.files:
            raise MissingFileError(f"no files match {pattern!r} (relative paths are looked up "
                                   "in the working directory, then in $LM_DATA_DIR)")
        file_ids, starts, ends = [], [], []
        for k, path in enumerate(self.files):
            for s, e in _doc_spans(path, separator):
                file_ids.append(k), starts.append(s), ends.append(e)
        self.file_ids = np.asarray(file_ids, np.int32)
        self.starts = np.asarray(starts, np.int64)
        self.ends = np.asarray(ends, np.int64)
        if not (self.ends - self.starts).any():
            raise UserError(f"{pattern!r}: {self.files[:5]} hold no text (empty files, or no "
                            f"document by data.doc_separator={separator!r})")
        self._fds: dict[int, int] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.starts)

    def _fd(self, k: int) -> int:
        if self._pid != os.getpid():  # file descriptors do not survive a worker's fork
            self._fds, self._pid = {}, os.getpid()
        if k not in self._fds:
            self._fds[k] = os.open(self.files[k], os.O_RDONLY)
        return self._fds[k]

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start, end = int(self.starts[i]), int(self.ends[i])
        data = os.pread(self._fd(int(self.file_ids[i])), end - start, start)
        return data.decode("utf-8", errors="replace")

    def __getstate__(self):  # picklable for worker processes: reopen files there
        return {**self.__dict__, "_fds": {}, "_pid": None}


# ---------------------------------------------------------------------- derived views


class CharRange(Sequence):
    """One document: the characters [lo, hi) (fractions) of the concatenated documents.

    nanoGPT's shakespeare_char trains on the first 90% of the characters and validates on
    the rest; this reads the whole text into memory, so use it for small corpora only.
    """

    def __init__(self, docs: Sequence[str], lo: float, hi: float):
        text = "".join(docs[i] for i in range(len(docs)))
        n = len(text)
        self.text = text[int(n * lo):int(n * hi)]

    def __len__(self) -> int:
        return 1 if self.text else 0

    def __getitem__(self, i: int) -> str:
        if i != 0 or not self.text:
            raise IndexError(i)
        return self.text


class Chunked(Sequence):
    """Documents cut into pieces of at most `chunk_chars` characters.

    A corpus of a few huge documents (tiny_shakespeare is one) then shuffles at a finer
    grain. Building the index reads every document once to learn its length.
    """

    def __init__(self, docs: Sequence[str], chunk_chars: int):
        if chunk_chars <= 0:
            raise UserError(f"chunk_chars must be positive, got {chunk_chars}")
        self.docs, self.chunk = docs, chunk_chars
        counts = [-(-len(docs[i]) // chunk_chars) for i in range(len(docs))]
        self.starts = np.cumsum([0] + counts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        d = int(np.searchsorted(self.starts, i, side="right")) - 1
        k = i - int(self.starts[d])
        return self.docs[d][k * self.chunk:(k + 1) * self.chunk]


# -------------------------------------------------------------------------------- TSV


def read_tsv(path: str, header: bool = True) -> list[dict[str, str]]:
    """GLUE-style TSV rows as dicts (CSV quoting off: sentences hold stray quotes).

    Without a header the keys are the column numbers as strings ('0', '1', ...).
    A UTF-8 BOM (MRPC) is dropped. Small files only: GLUE tasks fit in memory.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r]
    if not header:
        return [{str(k): v for k, v in enumerate(r)} for r in rows]
    names, body = rows[0], rows[1:]
    return [dict(zip(names, r)) for r in body]


# ------------------------------------------------------------------------------ entry


def local_files(cfg, name: str) -> str:
    """The glob of split `name` (data.files); relative globs that match nothing from the
    working directory are looked up in the data home ($LM_DATA_DIR)."""
    files = {k: v for k, v in dict(cfg.files).items() if v}
    if name not in files:
        raise UserError(f"no files for split {name!r}: set data.files.{name}=GLOB "
                        f"(data.files has {sorted(files) or 'nothing'})")
    resolved = home.resolve(files[name])
    if not glob.glob(os.path.expanduser(resolved)):
        raise MissingFileError(_missing_files(name, files[name], resolved))
    return resolved


def _missing_files(split: str, pattern: str, resolved: str) -> str:
    """What to do when data.files.<split> matches nothing: the `lm data prepare` command
    that puts the files there, where the dataset is one it knows."""
    from lm.data import prepare  # noqa: PLC0415  (only on this error)

    where = (f"looked up in the working directory, then in the data home {home.data_home()} "
             f"(${home.DATA_ENV}, default ~/.cache/lm)")
    message = f"no files match data.files.{split}={pattern!r} ({resolved}; {where})"
    dataset = None if os.path.isabs(os.path.expanduser(pattern)) else prepare.dataset_of(pattern)
    if dataset:
        return (f"{message}: run `python -m lm data prepare {dataset}` to put them there, or "
                f"point ${home.DATA_ENV} at a directory that holds them")
    return (f"{message}: set data.files.{split} to your files, or put them under "
            f"${home.DATA_ENV}")


def text_source(cfg, split: str) -> Sequence[str]:
    """The documents (str) of `split` for data config `cfg` (source 'tfds' or 'text')."""
    if cfg.char_split:
        whole = _text_source(cfg, "train")
        f = float(cfg.char_split)
        named = {"train": CharRange(whole, 0.0, f), "validation": CharRange(whole, f, 1.0)}
        named["test"] = named["validation"]
        docs = apply_split(split, named)
    else:
        docs = _text_source(cfg, split)
    return Chunked(docs, cfg.chunk_chars) if cfg.chunk_chars > 0 else docs


def _text_source(cfg, split: str) -> Sequence[str]:
    if cfg.source == "tfds":
        return Mapped(tfds_records(cfg.name, split, cfg.data_dir),
                      functools.partial(field, cfg.text_key))
    if cfg.source == "text":
        named = {name: TextFiles(local_files(cfg, name), cfg.doc_separator)
                 for name in {p[0] for p in parse_split(split)}}
        return apply_split(split, named)
    raise UserError(f"data.source={cfg.source!r} has no text documents: use 'tfds' or 'text' "
                     "(TSV files are read by the classification objective)")
