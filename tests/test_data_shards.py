"""Global batches do not depend on the process count, and a data state saved by P processes
resumes exactly on Q (lm/data/shards.py).

Reference: the global batches of one process reading every shard, uninterrupted. Processes
are simulated by their (process_index, process_count) slices: the data pipeline is numpy.
"""

import json

import numpy as np
import pytest

from lm.data import make_iterator, make_tokenizer, shards
from lm.train import checkpoint, windows
from tests.test_data_objectives import small_sentencepiece
from tests.test_data_pipeline import assert_same, cfg_for

ROWS = 8  # global batch


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory) -> str:
    return small_sentencepiece(tmp_path_factory)


def _global(iterators, n):
    """n global batches: each process's rows, concatenated in process order."""
    out = []
    for _ in range(n):
        parts = [next(it) for it in iterators]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def _iterators(cfg, tok, count, seed=0, maker=make_iterator):
    return [maker(cfg, tok, split="train", batch_size=ROWS // count, seed=seed,
                  process_index=p, process_count=count) for p in range(count)]


def _saved(iterators):
    """The merged state, as a checkpoint of these processes restores it."""
    return checkpoint.merge_process_states([json.loads(json.dumps(it.get_state()))
                                            for it in iterators])


@pytest.mark.parametrize("objective", ["causal", "mlm_nsp", "span_corruption",
                                       "classification"])
def test_resume_on_another_process_count_continues_the_same_global_batches(sp_path, objective):
    cfg = cfg_for(sp_path, objective)
    cfg.shards = 2
    tok = make_tokenizer(cfg)
    expected = _global(_iterators(cfg, tok, 1), 6)  # one process reads both shards
    for before, after in [(2, 1), (1, 2), (2, 4)]:
        first = _iterators(cfg, tok, before)
        assert_same(_global(first, 3), expected[:3])
        state = _saved(first)
        resumed = _iterators(cfg, tok, after)
        for it in resumed:
            it.set_state(state)
        assert_same(_global(resumed, 3), expected[3:])


def test_default_shards_follow_the_first_run_and_a_changed_count_is_refused(sp_path):
    cfg = cfg_for(sp_path, "causal")  # data.shards = 0: one per process of the first run
    tok = make_tokenizer(cfg)
    two = _iterators(cfg, tok, 2)
    _global(two, 2)
    state = _saved(two)
    assert state["num_shards"] == 2 and sorted(state["shards"]) == ["0", "1"]
    expected = _global(two, 2)
    (one,) = _iterators(cfg, tok, 1)
    one.set_state(state)  # 0 = adopt the checkpoint's 2 shards
    assert_same(_global([one], 2), expected)
    cfg.shards = 4
    (four,) = _iterators(cfg, tok, 1)
    with pytest.raises(ValueError, match=r"--config.data.shards=2"):
        four.set_state(state)


def test_global_rows_must_split_into_the_shards(sp_path):
    cfg = cfg_for(sp_path, "causal")
    cfg.shards = 3
    with pytest.raises(ValueError, match=r"data.shards=3 must divide the global batch of 8"):
        _iterators(cfg, make_tokenizer(cfg), 1)


def test_shards_that_end_pad_with_zero_rows_and_every_row_comes_once(sp_path):
    cfg = cfg_for(sp_path, "classification")
    cfg.shards = 2
    tok = make_tokenizer(cfg)
    # 25 examples: shard 0 has 13 (4 batches of 4 rows), shard 1 has 12 (3 batches)
    batches = list(make_iterator(cfg, tok, split="validation[:25]", batch_size=8, seed=0,
                                 shuffle=False, num_epochs=1))
    assert len(batches) == 4
    weights = np.concatenate([b["example_weights"] for b in batches])
    idx = np.concatenate([b["idx"] for b in batches])[weights > 0]
    assert len(idx) == len(set(idx.tolist())) == 25
    last = batches[-1]
    assert last["example_weights"].tolist() == [1, 0, 0, 0] + [0] * 4  # shard 1 ended: zeros
    assert (last["inputs"][1:] == 0).all()


def test_random_windows_global_batch_does_not_depend_on_the_process_count(sp_path):
    cfg = cfg_for(sp_path, "causal")
    tok = make_tokenizer(cfg)
    one = _global(_iterators(cfg, tok, 1, maker=windows.make_iterator), 2)
    four = _iterators(cfg, tok, 4, maker=windows.make_iterator)
    assert_same(_global(four, 2), one)
    assert _saved(four) == {"index": 2}


def test_merge_process_states_refuses_per_process_positions():
    assert checkpoint.merge_process_states([{"index": 3}, {"index": 3}]) == {"index": 3}
    with pytest.raises(ValueError, match="differ"):
        checkpoint.merge_process_states([{"index": 3}, {"index": 4}])
    with pytest.raises(ValueError, match="different states of data shard 0"):
        checkpoint.merge_process_states([{"num_shards": 1, "shards": {"0": 1}},
                                         {"num_shards": 1, "shards": {"0": 2}}])


def test_shard_seeds_differ_but_shard_zero_keeps_the_run_seed():
    assert shards.shard_seed(7, 0) == 7
    assert len({shards.shard_seed(7, s) for s in range(8)}) == 8
