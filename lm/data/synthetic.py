"""Synthetic batches: random tokens in the shapes of any objective's batches, for benchmarks.

`data.source="synthetic"` needs no corpus, tokenizer or input pipeline (what a throughput
measurement on a bare accelerator machine wants, as MaxText's synthetic dataset): batch i
is a pure function of (seed, i), with every position real. The loss is meaningless;
the shapes, dtypes and FLOPs are the real ones (lm.data.specs).
"""

from __future__ import annotations

import numpy as np

from lm.data import specs
from lm.data.tokenizers import Tokenizer


class NullTokenizer(Tokenizer):
    """The vocabulary of a model trained on synthetic tokens: ids only, no text."""

    def __init__(self, vocab_size: int):
        self.pad_id, self.eos_id, self.unk_id = 0, 1, 2
        self.cls_id, self.sep_id, self.mask_id = 3, 4, 5
        super().__init__(vocab_size, range(6), np.zeros(vocab_size, bool))

    def encode(self, text: str) -> list[int]:
        raise ValueError("data.source='synthetic' has no text to encode")

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


class SyntheticBatches(specs.IndexedBatches):
    def __init__(self, cfg, vocab_size: int, *, batch_size: int, seed: int, num_epochs):
        self.spec = specs.batch_spec(cfg, batch_size)
        self.vocab_size, self.seed, self.index = vocab_size, seed, 0
        self.limit = 8 if num_epochs else None  # a whole "split": a few batches

    def __next__(self) -> dict[str, np.ndarray]:
        if self.limit is not None and self.index >= self.limit:
            raise StopIteration
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        batch = {}
        for key, (shape, dtype) in self.spec.items():
            if key in ("inputs", "targets", "decoder_inputs"):
                batch[key] = rng.integers(6, self.vocab_size, shape).astype(dtype)
            elif key in ("labels", "nsp_labels"):
                batch[key] = rng.integers(0, 2, shape).astype(dtype)
            elif key in ("segment_ids", "input_mask", "weights", "example_weights",
                         "mlm_weights"):  # every MLM slot real: the MLM loss is timed too
                batch[key] = np.ones(shape, dtype)
            elif key == "mlm_positions":  # distinct positions of each row, in order
                rows, slots = shape
                length = self.spec["inputs"][0][-1]
                picks = rng.permuted(np.tile(np.arange(length), (rows, 1)), axis=1)[:, :slots]
                batch[key] = np.sort(picks, axis=1).astype(dtype)
            else:  # positions, token types, idx
                batch[key] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy() \
                    if key == "positions" else np.zeros(shape, dtype)
        return batch


def make_iterator(cfg, tokenizer: Tokenizer, *, split: str, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, shuffle: bool = True,
                  num_epochs: int | None = None) -> SyntheticBatches:
    """lm.data.make_iterator's signature; each process draws its own rows."""
    del split, shuffle
    return SyntheticBatches(cfg, tokenizer.vocab_size, batch_size=batch_size,
                            seed=seed * 1000 + process_index, num_epochs=num_epochs)
