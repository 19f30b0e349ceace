"""BERT pretraining examples: MLM masking and NSP pairs, pure functions of (document, rng).

NSP follows google-research/bert create_pretraining_data.py (create_instances_from_document),
but runs per document on the fly, so no corpus' worth of instances is ever held in memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from lm.data.tokenizers import Tokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Lines, then sentences within a line (after . ! ? and whitespace)."""
    return [s for line in text.splitlines() for s in _SENTENCE_END.split(line.strip()) if s]


# -------------------------------------------------------------------------------- MLM


def _word_groups(tokens_T: np.ndarray, candidate_T: np.ndarray, continues_V: np.ndarray,
                 whole_word: bool) -> list[np.ndarray]:
    """Positions to choose together: single candidates, or the pieces of each word."""
    positions = np.flatnonzero(candidate_T)
    if not whole_word or len(positions) == 0:
        return [positions[i:i + 1] for i in range(len(positions))]
    # A candidate starts a new word unless it continues the previous candidate's word.
    continues = continues_V[tokens_T[positions]]
    continues[1:] &= np.diff(positions) == 1
    continues[0] = False
    return np.split(positions, np.flatnonzero(~continues)[1:])


def mask_tokens(tokens_T: np.ndarray, rng: np.random.Generator, tok: Tokenizer, *,
                rate: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1,
                whole_word: bool = False, max_predictions: int = 0) -> dict[str, np.ndarray]:
    """BERT masking: choose round(rate * candidates) non-special tokens (in random order,
    whole words together if asked); 80% -> [MASK], 10% -> random token, 10% kept.

    Returns inputs, targets (original ids where chosen, 0 elsewhere), weights.
    """
    tokens_T = np.asarray(tokens_T, np.int32)
    candidate_T = ~np.isin(tokens_T, tok.special_ids)
    groups = _word_groups(tokens_T, candidate_T, tok.continues_word_V, whole_word)
    num = int(round(candidate_T.sum() * rate))
    num = max(num, 1) if groups else 0
    if max_predictions > 0:
        num = min(num, max_predictions)
    chosen, count = [], 0
    for g in rng.permutation(len(groups)):
        if count + len(groups[g]) > num:
            continue  # as BERT: skip a word that would overshoot
        chosen.append(groups[g])
        count += len(groups[g])
        if count == num:
            break
    chosen_N = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    u_N = rng.random(len(chosen_N))
    random_N = rng.choice(tok.normal_ids, size=len(chosen_N))
    new_N = np.where(u_N < mask_prob, tok.mask_id,
                     np.where(u_N < mask_prob + random_prob, random_N, tokens_T[chosen_N]))
    inputs_T, targets_T = tokens_T.copy(), np.zeros_like(tokens_T)
    inputs_T[chosen_N] = new_N
    targets_T[chosen_N] = tokens_T[chosen_N]
    weights_T = np.zeros(len(tokens_T), np.float32)
    weights_T[chosen_N] = 1.0
    return {"inputs": inputs_T, "targets": targets_T, "weights": weights_T}


# -------------------------------------------------------------------------------- NSP


def truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> None:
    """Trims the longer of a, b (front or back at random) until they fit, in place."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def nsp_pairs(segments: Sequence[list[int]], other_segments: Callable[[], Sequence[str]],
              encode: Callable[[str], list[int]], max_tokens: int, rng: np.random.Generator,
              *, random_next_prob: float = 0.5, short_seq_prob: float = 0.1,
              ) -> list[tuple[list[int], list[int], int]]:
    """(A, B, label) pairs from one document's token segments; label 1 = B is random.

    `other_segments()` returns the sentences of a random *other* document; A + B fit in
    `max_tokens` (the sequence length less [CLS] and two [SEP]).
    """
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    pairs, chunk, length, i = [], [], 0, 0
    while i < len(segments):
        chunk.append(segments[i])
        length += len(segments[i])
        if i == len(segments) - 1 or length >= target:
            is_random = rng.random() < random_next_prob
            if len(chunk) == 1 and not is_random:
                # BERT makes every one-segment chunk a random pair, which skews the labels
                # (55% random on 2-40 sentence documents); give it a true next instead.
                chunk, used = _two_segments(chunk[0], segments, i, rng)
                i += used
                is_random = len(chunk) == 1
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            if is_random:
                b = _random_segment(other_segments(), encode, target - len(a), rng)
                i -= len(chunk) - a_end  # as BERT: reuse the segments B did not take
                label = 1
            else:
                b, label = [t for s in chunk[a_end:] for t in s], 0
            truncate_pair(a, b, max_tokens, rng)
            if a and b:
                pairs.append((a, b, label))
            chunk, length = [], 0
        i += 1
    return pairs


def _two_segments(segment: list[int], segments: Sequence[list[int]], i: int,
                  rng: np.random.Generator) -> tuple[list[list[int]], int]:
    """A true next for the lone segment i: the next segment (used: 1), else its own tail."""
    if i + 1 < len(segments):
        return [segment, segments[i + 1]], 1
    if len(segment) >= 2:
        cut = int(rng.integers(1, len(segment)))
        return [segment[:cut], segment[cut:]], 0
    return [segment], 0


def _random_segment(sentences: Sequence[str], encode: Callable[[str], list[int]],
                    target: int, rng: np.random.Generator) -> list[int]:
    """Tokens of consecutive sentences from a random start, up to `target` tokens."""
    b: list[int] = []
    if not sentences:
        return b
    for s in sentences[int(rng.integers(len(sentences))):]:
        b.extend(encode(s))  # only the sentences used are tokenized
        if len(b) >= target:
            break
    return b


def bert_example(a: list[int], b: list[int] | None, tok: Tokenizer,
                 seq_len: int) -> dict[str, np.ndarray]:
    """`[CLS] A [SEP] B [SEP]` (or `[CLS] A [SEP]`) padded to seq_len, with token types."""
    tokens = [tok.cls_id, *a, tok.sep_id]
    types = [0] * len(tokens)
    if b is not None:
        tokens += [*b, tok.sep_id]
        types += [1] * (len(b) + 1)
    if len(tokens) > seq_len:
        raise ValueError(f"example of {len(tokens)} tokens exceeds seq_len={seq_len}")
    pad = seq_len - len(tokens)
    return {
        "inputs": np.asarray(tokens + [tok.pad_id] * pad, np.int32),
        "token_type_ids": np.asarray(types + [0] * pad, np.int32),
        "input_mask": np.asarray([1] * len(tokens) + [0] * pad, np.int32),
    }


def prediction_slots(mlm_cfg, seq_len: int) -> int:
    """The most tokens MLM chooses in a sequence of `seq_len` (mask_tokens chooses at most
    round(rate * candidates), capped by max_predictions): the width P of `mlm_positions`."""
    slots = max(1, math.ceil(mlm_cfg.rate * seq_len))
    return min(slots, mlm_cfg.max_predictions) if mlm_cfg.max_predictions > 0 else slots


def masked(example: dict[str, np.ndarray], rng: np.random.Generator, tok: Tokenizer,
           mlm_cfg) -> dict[str, np.ndarray]:
    """An example with MLM applied to its real tokens (padding is special, never chosen).

    Besides the per-token targets and weights it lists the chosen positions, as BERT's
    `masked_lm_positions` / `masked_lm_weights` do: `mlm_positions` (P,), padded with 0, and
    `mlm_weights` (P,), 1 for a chosen position. The model then scores the vocabulary at
    those P positions only, not at all T (for BERT at 128 tokens, 20 instead of 128).
    """
    out = mask_tokens(example["inputs"], rng, tok, rate=mlm_cfg.rate,
                      mask_prob=mlm_cfg.mask_prob, random_prob=mlm_cfg.random_prob,
                      whole_word=mlm_cfg.whole_word, max_predictions=mlm_cfg.max_predictions)
    chosen = np.flatnonzero(out["weights"])
    slots = prediction_slots(mlm_cfg, len(out["weights"]))
    assert len(chosen) <= slots, (len(chosen), slots)  # mask_tokens chooses at most that
    positions_P, weights_P = np.zeros(slots, np.int32), np.zeros(slots, np.float32)
    positions_P[:len(chosen)], weights_P[:len(chosen)] = chosen, 1.0
    return {**example, **out, "mlm_positions": positions_P, "mlm_weights": weights_P}
