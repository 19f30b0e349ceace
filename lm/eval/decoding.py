"""Evaluation by decoding: encoder-decoder objectives (seq2seq) also generate each eval
batch's targets greedily and score the text (GLUE labels, BLEU/ROUGE: lm.metrics)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lm.generation import generate


def _greedy(params, batch, *, model, length: int, start_id: int):
    B = batch["inputs"].shape[0]
    tokens_BxT = generate.generate(
        model, params, jnp.full((B, 1), start_id, jnp.int32), max_new_tokens=length,
        encoder_tokens=batch["inputs"], encoder_mask=batch["input_mask"])
    return tokens_BxT, batch["targets"], batch["weights"][:, 0]


@dataclasses.dataclass
class Decoder:
    """Greedy decoding of eval batches, jitted once; `texts` gives (predictions, targets)."""

    generate: Callable  # (params, global batch) -> replicated (tokens, targets, row weights)
    tokenizer: Any

    def text(self, ids) -> str:
        ids = list(np.asarray(ids))
        eos = self.tokenizer.eos_id
        return self.tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids)

    def texts(self, params, batch) -> tuple[list[str], list[str]]:
        tokens, targets, weights = jax.device_get(self.generate(params, batch))
        rows = np.flatnonzero(np.asarray(weights) > 0)  # eval padding rows have no target
        return [self.text(tokens[i]) for i in rows], [self.text(targets[i]) for i in rows]


def make_decoder(model, tokenizer, data_cfg, mesh) -> Decoder:
    fn = functools.partial(_greedy, model=model, length=data_cfg.target_len,
                           start_id=tokenizer.pad_id)  # T5 starts the decoder with <pad>
    return Decoder(jax.jit(fn, out_shardings=NamedSharding(mesh, PartitionSpec())), tokenizer)
