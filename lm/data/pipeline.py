"""The per-process input pipeline: source -> tokenize -> objective -> batch (grain).

Random access all the way down: a grain MapDataset over document (or record) indices is
cut into logical shards (lm/data/shards.py: the global batch does not depend on the number
of processes), shuffled and repeated; each index is read, tokenized and turned into
examples on the fly by a pure function of (document, seed), so memory does not grow with
the corpus. Packing and flattening keep small replayable checkpoints, so
`get_state()`/`set_state()` restore exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import grain
import numpy as np

from lm.data import bert, bucketing, classification, glue, packing, seq2seq, shards, sources, span
from lm.data.shards import shard_seed
from lm.data.tokenizers import Tokenizer
from lm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Context:
    cfg: object  # the data ConfigDict
    tok: Tokenizer
    items: Sequence  # documents (str) or task records (dict) of the whole split
    seed: int
    read: grain.ReadOptions


def _encode_doc(i: int, *, docs: Sequence[str], tok: Tokenizer, eos: int | None) -> np.ndarray:
    return packing.with_eos(tok.encode(docs[i]), eos)


def _token_docs(ids: grain.MapDataset, ctx: Context) -> grain.IterDataset:
    eos = ctx.tok.eos_id if ctx.cfg.causal.add_eos else None
    encode = functools.partial(_encode_doc, docs=ctx.items, tok=ctx.tok, eos=eos)
    return ids.map(encode).to_iter_dataset(ctx.read)


# ------------------------------------------------------------------------- objectives


def causal(ids: grain.MapDataset, ctx: Context) -> grain.IterDataset:
    """Rows of T + 1 tokens, stride T: inputs, targets shifted by one, segment ids."""
    T = ctx.cfg.seq_len
    make = functools.partial(packing.causal_example, pad_id=ctx.tok.pad_id,
                             segment_ids=ctx.cfg.causal.segment_ids)
    return packing.PackIterDataset(_token_docs(ids, ctx), row_len=T + 1, stride=T,
                                   make_row=make)


def _other_sentences(doc_id: int, rng: np.random.Generator, docs: Sequence[str]) -> list[str]:
    """Sentences of a random document other than doc_id (NSP's random next segment)."""
    j = int(rng.integers(len(docs) - 1))
    return bert.split_sentences(docs[j + (j >= doc_id)])


def bert_instances(doc_id: int, rng: np.random.Generator, *, ctx: Context,
                   nsp: bool) -> list[dict[str, np.ndarray]]:
    """All MLM (or MLM+NSP) examples of one document."""
    cfg, tok, docs = ctx.cfg, ctx.tok, ctx.items
    if nsp:
        segments = [s for s in map(tok.encode, bert.split_sentences(docs[doc_id])) if s]
        other = functools.partial(_other_sentences, doc_id, rng, docs)
        pairs = bert.nsp_pairs(segments, other, tok.encode, cfg.seq_len - 3, rng,
                               random_next_prob=cfg.nsp.random_next_prob,
                               short_seq_prob=cfg.nsp.short_seq_prob)
        return [{**bert.masked(bert.bert_example(a, b, tok, cfg.seq_len), rng, tok, cfg.mlm),
                 "nsp_labels": np.int32(label)} for a, b, label in pairs]
    tokens, n = tok.encode(docs[doc_id]), cfg.seq_len - 2  # [CLS] piece [SEP]
    return [bert.masked(bert.bert_example(tokens[k:k + n], None, tok, cfg.seq_len),
                        rng, tok, cfg.mlm) for k in range(0, len(tokens), n)]


class _Flatten(grain.experimental.FlatMapTransform):
    max_fan_out = 1 << 20

    def flat_map(self, element):
        return element


def _bert(ids: grain.MapDataset, ctx: Context, nsp: bool) -> grain.IterDataset:
    ctx.tok.require("cls_id", "sep_id", "mask_id", "pad_id")
    if nsp and len(ctx.items) < 2:
        raise UserError("NSP needs at least two documents (B comes from another one); "
                         f"this split has {len(ctx.items)}")
    make = functools.partial(bert_instances, ctx=ctx, nsp=nsp)
    per_doc = ids.random_map(make, seed=ctx.seed).to_iter_dataset(ctx.read)
    return grain.experimental.FlatMapIterDataset(per_doc, _Flatten())


def _row_tokens(row: packing.Row) -> np.ndarray:
    return row["tokens"][:row["length"]]


def span_corruption(ids: grain.MapDataset, ctx: Context) -> grain.IterDataset:
    """T5: rows of raw tokens sized so the corrupted inputs fill seq_len."""
    cfg, tok = ctx.cfg, ctx.tok
    tok.require("eos_id", "pad_id")
    raw_len, targets_len = span.lengths_for(cfg.seq_len, cfg.span.noise_density,
                                            cfg.span.mean_span_length)
    rows = packing.PackIterDataset(_token_docs(ids, ctx), row_len=raw_len, stride=raw_len,
                                   make_row=_row_tokens)
    corrupt = functools.partial(
        span.span_corruption, sentinel_ids=tok.sentinel_ids, eos_id=tok.eos_id,
        pad_id=tok.pad_id, inputs_len=cfg.seq_len, targets_len=targets_len,
        noise_density=cfg.span.noise_density, mean_span=cfg.span.mean_span_length)
    return rows.random_map(corrupt, seed=ctx.seed)


def classify(ids: grain.MapDataset, ctx: Context) -> grain.IterDataset:
    task = glue.get(ctx.cfg.task)
    make = functools.partial(_classify, records=ctx.items, tok=ctx.tok,
                             seq_len=ctx.cfg.seq_len, num_labels=task.num_labels)
    return ids.map(make).to_iter_dataset(ctx.read)


def _classify(i: int, *, records, **kwargs) -> dict[str, np.ndarray]:
    return classification.classification_example(records[i], **kwargs)


def text_to_text(ids: grain.MapDataset, ctx: Context) -> grain.IterDataset:
    ctx.tok.require("eos_id", "pad_id")
    make = functools.partial(_pair, records=ctx.items, tok=ctx.tok, seq_len=ctx.cfg.seq_len,
                             target_len=ctx.cfg.target_len)
    return ids.map(make).to_iter_dataset(ctx.read)


def _pair(i: int, *, records, **kwargs) -> dict[str, np.ndarray]:
    return seq2seq.seq2seq_example(records[i], **kwargs)


# objective -> (items of a split, examples from shuffled indices, rows per item can be >1)
OBJECTIVES: dict[str, tuple[Callable, Callable, bool]] = {
    "causal": (sources.text_source, causal, True),
    "mlm": (sources.text_source, functools.partial(_bert, nsp=False), True),
    "mlm_nsp": (sources.text_source, functools.partial(_bert, nsp=True), True),
    "span_corruption": (sources.text_source, span_corruption, True),
    "classification": (classification.records, classify, False),
    "seq2seq": (seq2seq.records, text_to_text, False),
}


def num_examples(cfg, split: str) -> int:
    """Examples in `split` for objectives that make one example per record (classification,
    seq2seq); packed and sampled objectives have no such count."""
    read_items, _, many_rows = OBJECTIVES.get(cfg.objective, (None, None, True))
    if many_rows:
        raise UserError(f"data.objective={cfg.objective!r} packs or samples its examples: it "
                        "has no example count (train.epochs needs one); set train.steps")
    return len(read_items(cfg, split))


def texts(cfg, split: str) -> Sequence[str]:
    """The text of `split` (what a tokenizer is trained on), for any objective."""
    if cfg.objective not in ("classification", "seq2seq"):
        return sources.text_source(cfg, split)
    items = OBJECTIVES[cfg.objective][0](cfg, split)
    keys = ("texts",) if cfg.objective == "classification" else ("source", "target")
    return sources.Mapped(items, functools.partial(_text_of, keys))


def _text_of(keys: tuple[str, ...], item: dict) -> str:
    parts = [item[k] for k in keys]
    return "\n".join(p for part in parts for p in ((part,) if isinstance(part, str) else part))


# --------------------------------------------------------------------------- iterator


def make_iterator(cfg, tokenizer: Tokenizer, *, split: str, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None) -> grain.DatasetIterator | shards.GlobalBatches:
    """Batches (dicts of numpy arrays) of `batch_size` rows: slice `process_index` of
    `process_count` equal slices of each global batch.

    The global batch is read from `cfg.shards` logical shards (lm/data/shards.py), so it does
    not depend on `process_count`. With num_epochs set the last batch is padded with all-zero
    rows (weights 0). The iterator's get_state()/set_state() are JSON-able.
    """
    if cfg.objective not in OBJECTIVES:
        raise UserError(f"unknown objective {cfg.objective!r}: one of {sorted(OBJECTIVES)}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if cfg.objective == "classification" and cfg.length_buckets:  # a global plan already
        return bucketing.make_iterator(
            cfg, tokenizer, split=split, batch_size=batch_size, seed=seed,
            process_index=process_index, process_count=process_count, shuffle=shuffle,
            num_epochs=num_epochs)
    items = OBJECTIVES[cfg.objective][0](cfg, split)
    num_shards = cfg.get("shards", 0)
    if len(items) < (num_shards or process_count):
        where = cfg.name or dict(cfg.files)
        raise UserError(f"split {split!r} of data source {cfg.source!r} ({where}) has"
                         f" {len(items)} documents: too few for {num_shards or process_count} "
                         "data shards (data.shards, 0 = one per process)")
    global_rows = batch_size * process_count

    def make_shard(shard: int, num_shards: int) -> grain.DatasetIterator:
        return _shard_iterator(cfg, tokenizer, items, shard=shard,
                               num_shards=num_shards, batch_size=global_rows // num_shards,
                               seed=shard_seed(seed, shard), shuffle=shuffle,
                               num_epochs=num_epochs)

    return shards.GlobalBatches(make_shard, global_rows=global_rows,
                                row_start=process_index * batch_size, rows=batch_size,
                                num_shards=num_shards, default_shards=process_count)


def _shard_iterator(cfg, tokenizer: Tokenizer, items: Sequence, *, shard: int,
                    num_shards: int, batch_size: int, seed: int, shuffle: bool,
                    num_epochs: int | None) -> grain.DatasetIterator:
    """Batches of one logical shard: documents shard, shard + num_shards, ..."""
    _, build, many_rows = OBJECTIVES[cfg.objective]
    ids = grain.MapDataset.range(len(items))[shard::num_shards]
    if shuffle:
        ids = ids.shuffle(seed)
    ids = ids.repeat(num_epochs)
    read = grain.ReadOptions(num_threads=max(cfg.num_threads, 1), prefetch_buffer_size=16)
    ds = build(ids, Context(cfg, tokenizer, items, seed, read))
    if shuffle and many_rows and cfg.shuffle_buffer > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.shuffle_buffer,
                                                         seed=seed)
    pad = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
    ds = ds.batch(batch_size, batch_fn=pad)
    if cfg.workers > 0 and num_epochs is None:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
    elif cfg.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch)
    return iter(ds)


def throughput(data_cfg, *, split: str, batch_size: int, batches: int, warmup: int = 5
               ) -> dict[str, float]:
    """Examples/s and (non-padding) tokens/s of this data config's batches, past `warmup`."""
    from lm.data.tokenizers import make_tokenizer

    tok = make_tokenizer(data_cfg)
    it = make_iterator(data_cfg, tok, split=split, batch_size=batch_size, seed=0)
    for _ in range(warmup):
        next(it)
    examples = tokens = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        mask = batch.get("input_mask", batch.get("weights"))
        examples += len(batch["inputs"])
        tokens += int(np.count_nonzero(mask))
    seconds = time.perf_counter() - start
    return {"examples_per_s": examples / seconds, "tokens_per_s": tokens / seconds,
            "seconds": seconds, "vocab_size": tok.vocab_size}
