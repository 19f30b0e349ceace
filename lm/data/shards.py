"""Global batches read from logical data shards: the data order does not depend on the hosts.

A global batch of G rows is cut into S = `data.shards` equal slices; slice s of every batch
comes from logical shard s, an input pipeline of its own over documents s, s+S, s+2S, ...
(its own shuffle, packing and iterator state). A process that holds global rows
[a, a + n) runs the shards those rows come from and keeps its rows of their batches:

    G = 8 rows, S = 2 shards        shard 0 → rows 0-3, shard 1 → rows 4-7
    1 process                       runs shards 0 and 1, keeps all 8 rows
    2 processes                     process 0 runs shard 0, process 1 runs shard 1
    4 processes                     processes 0, 1 run shard 0 and keep rows 0-1 and 2-3

So batch i is the same for any number of processes, and the iterator state is the S shard
states: a checkpoint written by P processes resumes exactly on Q (each process saves the
states of its shards; `lm.train.checkpoint` merges them and each new process picks its
own). This holds for every objective, packed ones included: packing happens inside a
shard, never across processes. With Q > S, Q/S processes run the same shard and each
keeps part of its rows: the data work is repeated Q/S times, so set `data.shards` to the
largest process count a run may grow to. `data.shards = 0` means the process count of the
run that started (kept in its checkpoints), which is exactly the per-process data order
that earlier versions read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# (shard, num_shards) -> an iterator of that shard's batches (G / S rows each) with
# JSON-able get_state()/set_state().
MakeShard = Callable[[int, int], Iterator[dict[str, np.ndarray]]]


def shard_seed(seed: int, shard: int) -> int:
    """Shard 0 keeps `seed` (a one-shard run reads what it always read); the others get
    independent seeds, so no two shards share shuffles or masking draws."""
    if shard == 0:
        return seed
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


class GlobalBatches:
    """This process's rows [row_start, row_start + rows) of each global batch.

    `num_shards=0` = the `default_shards` until a state saved with another count is set.
    With `num_epochs` set (eval), a shard that ends gives all-zero rows (weight 0) until
    every shard this process runs has ended.
    """

    def __init__(self, make_shard: MakeShard, *, global_rows: int, row_start: int, rows: int,
                 num_shards: int, default_shards: int):
        self.make_shard, self.global_rows = make_shard, global_rows
        self.row_start, self.rows = row_start, rows
        self.auto = num_shards == 0
        self._use(num_shards or default_shards)

    def _use(self, num_shards: int) -> None:
        if num_shards < 1 or self.global_rows % num_shards:
            raise ValueError(
                f"data.shards={num_shards} must divide the global batch of {self.global_rows} "
                "rows (train.batch_size / eval_batch_size): each shard fills an equal slice")
        self.num_shards = num_shards
        per_shard = self.global_rows // num_shards
        first = self.row_start // per_shard
        last = (self.row_start + self.rows - 1) // per_shard
        # shard -> (first, end) of its rows that are this process's
        self.slices = {s: (max(self.row_start - s * per_shard, 0),
                           min(self.row_start + self.rows - s * per_shard, per_shard))
                       for s in range(first, last + 1)}
        self._iters: dict[int, Any] | None = None  # built on first use
        self._ended: set[int] = set()  # shards that ran out (num_epochs set)

    def _iterators(self) -> dict[int, Any]:
        if self._iters is None:
            self._iters = {s: self.make_shard(s, self.num_shards) for s in self.slices}
        return self._iters

    def __iter__(self) -> GlobalBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        live = {}
        for s in self.slices:
            if s in self._ended:
                continue
            try:
                live[s] = next(self._iterators()[s])
            except StopIteration:
                self._ended.add(s)
        if not live:
            raise StopIteration
        like = next(iter(live.values()))
        parts = []
        for s, (first, end) in self.slices.items():
            if s in live:
                parts.append({k: np.asarray(v)[first:end] for k, v in live[s].items()})
            else:  # ended (eval): zero rows, weight 0
                parts.append({k: np.zeros((end - first, *np.shape(v)[1:]), np.asarray(v).dtype)
                              for k, v in like.items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[str, Any]:
        return {"num_shards": self.num_shards,
                "shards": {str(s): it.get_state() for s, it in self._iterators().items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = int(state["num_shards"])
        if saved != self.num_shards:
            if not self.auto:
                raise ValueError(
                    f"the checkpoint's data was read in {saved} shards but data.shards="
                    f"{self.num_shards}: resume with --config.data.shards={saved} (or 0) to "
                    "continue its data order")
            self._use(saved)
        missing = [s for s in self.slices if str(s) not in state["shards"]]
        if missing:
            raise ValueError(f"the data state holds shards {sorted(state['shards'])} of "
                             f"{saved}, not {missing} that this process reads")
        for s, it in self._iterators().items():
            it.set_state(state["shards"][str(s)])
