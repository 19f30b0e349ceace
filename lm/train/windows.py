"""nanoGPT's sampling for char-level LM: random windows of T+1 tokens from one token stream.

nanoGPT does not pack documents into rows: every batch row starts at a uniformly random
offset of the concatenated split (`torch.randint(len(data) - block_size, ...)`). This is
that sampler, as data objective 'random_windows' with the input pipeline's interface
(`make_iterator(...)` → numpy causal batches, get_state/set_state). Global batch i is a pure
function of (seed, i) and each process keeps its rows, so the state is just i, the same on
every process and valid for any process count. With `num_epochs=1` (exact eval)
it yields consecutive non-overlapping windows covering the split once, the last batch
padded with rows of weight 0; otherwise it samples forever (`shuffle` has no effect).
"""

import functools
import json
from typing import Any

import ml_collections
import numpy as np

from lm.data import sources, specs
from lm.errors import UserError


@functools.lru_cache(maxsize=8)
def _token_stream(data_cfg_json: str, tokenizer: Any, split: str) -> np.ndarray:
    cfg = ml_collections.ConfigDict(json.loads(data_cfg_json))  # (a ConfigDict is unhashable)
    docs = sources.text_source(cfg, split)
    joiner = [tokenizer.eos_id] if cfg.causal.add_eos else []
    ids: list[int] = []
    for i in range(len(docs)):
        ids += (joiner if i else []) + tokenizer.encode(docs[i])
    return np.asarray(ids, np.int32)


class RandomWindows(specs.IndexedBatches):
    """Iterator of {inputs, targets, weights} batches; see the module docstring."""

    def __init__(self, tokens: np.ndarray, *, seq_len: int, batch_size: int, seed: int,
                 process_index: int, process_count: int, num_epochs: int | None):
        if len(tokens) <= seq_len:
            raise UserError(f"the split has {len(tokens)} tokens: too few for windows of "
                             f"seq_len+1={seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        if num_epochs not in (None, 1):
            raise UserError(f"num_epochs={num_epochs}: random windows sample forever (None) "
                             "or cover the split once (1)")
        self.once, self.index = num_epochs == 1, 0

    def _starts(self) -> np.ndarray:
        """Window offsets of this process's rows of batch `self.index`."""
        if not self.once:
            # The global batch's offsets, the same in every process, which keeps its rows:
            # batch i does not depend on the process count (a run resumes exactly on
            # another one). The 0 is where the process index used to be, so one-process
            # runs draw what they always drew.
            rng = np.random.default_rng([self.seed, 0, self.index])
            starts = rng.integers(0, len(self.tokens) - self.seq_len,
                                  size=self.batch_size * self.process_count)
            return starts.reshape(self.process_count, -1)[self.process_index]
        global_rows = np.arange(self.batch_size * self.process_count) + (
            self.index * self.batch_size * self.process_count)
        rows = global_rows.reshape(self.process_count, -1)[self.process_index]
        return rows * self.seq_len

    def __next__(self) -> dict[str, np.ndarray]:
        first_start = self.index * self.batch_size * self.process_count * self.seq_len
        if self.once and first_start + self.seq_len >= len(self.tokens):
            raise StopIteration  # decided on global rows: every process stops at the same batch
        starts = self._starts()
        real = starts + self.seq_len < len(self.tokens)  # a full window and its next token
        starts = np.where(real, starts, 0)
        idx = starts[:, None] + np.arange(self.seq_len + 1)
        window = self.tokens[idx]
        self.index += 1
        return dict(inputs=window[:, :-1], targets=window[:, 1:],
                    weights=np.repeat(real[:, None], self.seq_len, 1).astype(np.float32))


def make_iterator(data_cfg, tokenizer, *, split: str, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None) -> RandomWindows:
    """Same signature as lm.data.make_iterator, so the trainer takes either; `shuffle` is
    ignored."""
    tokens = _token_stream(data_cfg.to_json(), tokenizer, split)
    return RandomWindows(tokens, seq_len=data_cfg.seq_len, batch_size=batch_size, seed=seed,
                         process_index=process_index, process_count=process_count,
                         num_epochs=num_epochs)
