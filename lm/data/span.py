"""T5 span corruption, a numpy port of t5.data.preprocessors (random_spans_noise_mask,
noise_span_to_unique_sentinel, random_spans_helper)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lm.errors import UserError


def lengths_for(inputs_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(raw tokens per example, targets length) so that the corrupted inputs (with their
    sentinels and <eos>) fit `inputs_len`, as t5's random_spans_helper."""

    def corrupted(tokens: int) -> tuple[int, int]:
        noise = int(round(tokens * noise_density))
        spans = int(round(noise / mean_span))
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_len - 1
    while corrupted(tokens + 1)[0] <= inputs_len:
        tokens += 1
    return tokens, corrupted(tokens)[1]


def _random_segmentation(num_items: int, num_segments: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Lengths of `num_segments` non-empty segments that partition num_items, at random."""
    first_N = np.zeros(num_items, bool)
    first_N[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
    segment_N = np.cumsum(first_N)
    return np.bincount(segment_N, minlength=num_segments)


def random_spans_noise_mask(length: int, noise_density: float, mean_span: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Boolean noise mask: ~density * length noise tokens in spans of mean length
    `mean_span`; spans alternate with non-noise and the mask starts with non-noise."""
    orig_length, length = length, max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_span)), 1)
    noise_S = _random_segmentation(num_noise, num_spans, rng)
    nonnoise_S = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_S, noise_S], axis=1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    start_L = np.zeros(length, np.int32)
    start_L[starts] = 1
    return (np.cumsum(start_L) % 2 == 1)[:orig_length]


def sentinel_spans(tokens_L: np.ndarray, drop_L: np.ndarray,
                   sentinel_ids: Sequence[int]) -> np.ndarray:
    """Each run of dropped tokens replaced by the next sentinel (t5's
    noise_span_to_unique_sentinel; pass ~noise for the targets side)."""
    prev_L = np.concatenate([[False], drop_L[:-1]])
    first_L = drop_L & ~prev_L
    span_L = np.cumsum(first_L) - 1
    if first_L.sum() > len(sentinel_ids):
        raise UserError(f"{first_L.sum()} noise spans but the vocabulary has only "
                         f"{len(sentinel_ids)} sentinels: train the tokenizer with more")
    out = np.where(first_L, np.asarray(sentinel_ids)[np.maximum(span_L, 0)], tokens_L)
    return out[~(drop_L & prev_L)].astype(np.int32)


def span_corruption(tokens_L: np.ndarray, rng: np.random.Generator, *, sentinel_ids,
                    eos_id: int, pad_id: int, inputs_len: int, targets_len: int,
                    noise_density: float = 0.15, mean_span: float = 3.0,
                    ) -> dict[str, np.ndarray]:
    """inputs (kept tokens, a sentinel per span, <eos>) and targets (sentinel + the span's
    tokens, per span, <eos>), padded; decoder_inputs = targets shifted right (pad starts)."""
    tokens_L = np.asarray(tokens_L, np.int32)
    noise_L = random_spans_noise_mask(len(tokens_L), noise_density, mean_span, rng)
    inputs = np.append(sentinel_spans(tokens_L, noise_L, sentinel_ids), eos_id)
    targets = np.append(sentinel_spans(tokens_L, ~noise_L, sentinel_ids), eos_id)
    if len(inputs) > inputs_len or len(targets) > targets_len:
        raise ValueError(f"corrupted lengths {len(inputs)}/{len(targets)} exceed "
                         f"{inputs_len}/{targets_len}")
    return encoder_decoder_example(inputs, targets, pad_id=pad_id, inputs_len=inputs_len,
                                   targets_len=targets_len)


def encoder_decoder_example(inputs: np.ndarray, targets: np.ndarray, *, pad_id: int,
                            inputs_len: int, targets_len: int) -> dict[str, np.ndarray]:
    """An encoder-decoder example from token ids that fit: padded inputs and targets, and
    decoder_inputs = targets shifted right (T5 starts the decoder with the pad id)."""
    inputs, targets = np.asarray(inputs, np.int32), np.asarray(targets, np.int32)
    decoder_inputs = np.concatenate([[pad_id], targets[:-1]]).astype(np.int32)
    return {
        "inputs": _pad(inputs, inputs_len, pad_id),
        "input_mask": _pad(np.ones_like(inputs), inputs_len, 0),
        "decoder_inputs": _pad(decoder_inputs, targets_len, pad_id),
        "targets": _pad(targets, targets_len, pad_id),
        "weights": _pad(np.ones(len(targets), np.float32), targets_len, 0),
    }


def _pad(x: np.ndarray, n: int, value) -> np.ndarray:
    return np.concatenate([x, np.full(n - len(x), value, x.dtype)])
