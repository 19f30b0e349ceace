"""Length-bucketed classification batches: lossless, complete, sharded, resumable."""

import numpy as np
import pytest

from lm import data
from lm.convert import minilm_dir
from lm.data import bucketing, classification, sources


def _config(bucketed: bool):
    cfg = data.default_config()
    cfg.objective, cfg.task, cfg.source, cfg.seq_len = "classification", "sst2", "glue", 64
    cfg.tokenizer.kind, cfg.tokenizer.path = "wordpiece", str(minilm_dir() / "tokenizer.json")
    cfg.tokenizer.vocab_multiple, cfg.length_buckets = 1, bucketed
    return cfg


@pytest.fixture(scope="module")
def tok():
    return data.make_tokenizer(_config(True))


def _rows(batches):
    """idx -> (inputs without padding, label) over every real row."""
    out = {}
    for b in batches:
        for i in np.flatnonzero(b["example_weights"] > 0):
            n = int(b["input_mask"][i].sum())
            out[int(b["idx"][i])] = (tuple(b["inputs"][i, :n]), int(b["labels"][i]))
    return out


def test_epoch_plan_covers_every_example_once_and_groups_lengths():
    lengths = np.random.default_rng(0).integers(1, 100, 1000)
    plan = bucketing.epoch_plan(lengths, 10, seed=0, epoch=0, shuffle=True)
    assert sorted(np.concatenate(plan)) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in plan])
    assert spread < 0.2 * np.ptp(lengths)  # random batches would spread over ~90% of it
    other = bucketing.epoch_plan(lengths, 10, seed=0, epoch=1, shuffle=True)
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other))


def test_bucketed_eval_is_the_whole_split_exactly_and_lossless(tok):
    kw = dict(split="validation", batch_size=32, seed=0, shuffle=False, num_epochs=1)
    bucketed = list(data.make_iterator(_config(True), tok, **kw))
    plain = list(data.make_iterator(_config(False), tok, **kw))
    assert {b["inputs"].shape[1] for b in bucketed} <= {8, 16, 32, 64}
    assert min(b["inputs"].shape[1] for b in bucketed) < 64  # something was cut
    dev_size = len(classification.records(_config(True), "validation"))  # 872 in SST-2
    assert sum(int(b["example_weights"].sum()) for b in bucketed) == dev_size
    assert _rows(bucketed) == _rows(plain)


def test_processes_share_each_batch_length_and_split_the_rows(tok):
    kw = dict(split="validation", batch_size=16, seed=0, shuffle=True, num_epochs=1)
    shards = [list(data.make_iterator(_config(True), tok, process_index=p, process_count=2,
                                      **kw)) for p in range(2)]
    assert [b["inputs"].shape for b in shards[0]] == [b["inputs"].shape for b in shards[1]]
    rows = [_rows(s) for s in shards]
    assert not rows[0].keys() & rows[1].keys()
    assert len(rows[0]) + len(rows[1]) == len(classification.records(_config(True), "validation"))


def test_bucketed_iterator_resumes_exactly(tok):
    kw = dict(split="validation", batch_size=8, seed=3, shuffle=True)
    it = data.make_iterator(_config(True), tok, **kw)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(10)]
    fresh = data.make_iterator(_config(True), tok, **kw)
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        assert all(np.array_equal(got[k], want[k]) for k in want)


class _Batched(list):
    """A source with a batched read, like TFDS's array_record data source."""

    def __init__(self, items):
        super().__init__(items)
        self.reads = []

    def __getitems__(self, indices):
        self.reads.append(list(indices))
        return [self[i] for i in indices]


def test_read_all_is_one_batched_read_of_the_mapped_items():
    source = _Batched(range(10))
    mapped = sources.Mapped(source, str)
    assert sources.read_all(mapped) == [mapped[i] for i in range(10)]
    assert source.reads == [list(range(10))]
    assert sources.read_all(sources.Slice(list("abcd"), 1, 3)) == ["b", "c"]  # no batched read


def test_buckets_are_powers_of_two_from_8_then_seq_len():
    assert bucketing.buckets_for(64) == (8, 16, 32, 64)
    assert bucketing.buckets_for(100) == (8, 16, 32, 64, 100)
    assert bucketing.buckets_for(8) == (8,)
