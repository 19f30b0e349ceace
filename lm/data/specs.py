"""The shapes and dtypes of a batch of each objective, without reading any data.

What `lm plan` compiles the train step for (a 1.5B-parameter plan should not need the
corpus or a 50k-piece tokenizer). tests/test_plan.py checks these against real batches.
"""

from __future__ import annotations

import numpy as np

from lm.data import bert, glue, span

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


class IndexedBatches:
    """An iterator whose batch i is a pure function of (seed, i), so its state is i alone
    (synthetic batches, random windows). A subclass's `__next__` makes batch `self.index`
    and advances it."""

    index: int = 0

    def __iter__(self):
        return self

    def get_state(self) -> dict[str, int]:
        return {"index": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


def batch_spec(cfg, rows: int) -> Spec:
    """{key: (shape, dtype)} of a batch of `rows` rows of `cfg.objective` (ints are int32:
    what JAX sees)."""
    T, i32, f32 = cfg.seq_len, np.dtype(np.int32), np.dtype(np.float32)
    objective = cfg.objective
    if objective in ("causal", "random_windows"):
        keys = ["inputs", "targets"]
        if objective == "causal" and cfg.causal.segment_ids:
            keys += ["segment_ids", "positions"]
        return {**{k: ((rows, T), i32) for k in keys}, "weights": ((rows, T), f32)}
    if objective in ("mlm", "mlm_nsp"):
        spec = {k: ((rows, T), i32) for k in ("inputs", "targets", "token_type_ids",
                                              "input_mask")}
        spec["weights"] = ((rows, T), f32)
        P = bert.prediction_slots(cfg.mlm, T)
        spec.update(mlm_positions=((rows, P), i32), mlm_weights=((rows, P), f32))
        if objective == "mlm_nsp":
            spec["nsp_labels"] = ((rows,), i32)
        return spec
    if objective == "span_corruption":
        _, L = span.lengths_for(T, cfg.span.noise_density, cfg.span.mean_span_length)
        return {"inputs": ((rows, T), i32), "input_mask": ((rows, T), i32),
                "decoder_inputs": ((rows, L), i32), "targets": ((rows, L), i32),
                "weights": ((rows, L), f32)}
    if objective == "classification":
        regression = glue.get(cfg.task).num_labels == 1
        return {**{k: ((rows, T), i32) for k in ("inputs", "token_type_ids", "input_mask")},
                "labels": ((rows,), f32 if regression else i32),
                "example_weights": ((rows,), f32), "idx": ((rows,), i32)}
    if objective == "seq2seq":
        return {"inputs": ((rows, T), i32), "input_mask": ((rows, T), i32),
                "decoder_inputs": ((rows, cfg.target_len), i32),
                "targets": ((rows, cfg.target_len), i32),
                "weights": ((rows, cfg.target_len), f32), "idx": ((rows,), i32)}
    raise ValueError(f"no batch spec for data.objective={objective!r}")
