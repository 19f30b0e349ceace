"""Perplexity of a causal LM on a text, with a sliding window (GPT-2's WikiText evaluation).

Windows of `window` tokens advance by `stride`, and each scores only the tokens no earlier
window scored, so every token after the first window has at least window − stride tokens of
context (stride = window: independent chunks). Perplexity per token and, where the text has
words, per word (exp of the total loss over the number of whitespace-separated words).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lm.errors import UserError


def windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored) of each window: token j is predicted from tokens
    [begin, j) and scored once, in the first window that reaches it (never token 0)."""
    if not 0 < stride <= window:
        raise UserError(f"--stride={stride} must be in (0, --window={window}]")
    out, scored_to = [], 1
    for begin in range(0, max(num_tokens - 1, 1), stride):
        end = min(begin + window, num_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == num_tokens:
            break
    return out


def text_nll(model, params, tokens: np.ndarray, *, window: int, stride: int,
             pad_id: int = 0) -> tuple[float, int]:
    """(total negative log-likelihood in nats, tokens scored) of a causal LM over `tokens`."""

    @jax.jit
    def token_nll(params, ids_1xW):  # nll of ids[t + 1] given ids[..t], for every t
        logits = model.apply({"params": params}, ids_1xW)[0].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits[:-1], axis=-1)
        return -jnp.take_along_axis(logp, ids_1xW[0, 1:, None], axis=-1)[:, 0]

    total, count = 0.0, 0
    for begin, end, first in windows(len(tokens), window, stride):
        ids = np.full(window, pad_id, np.int32)  # one shape: the last window is padded
        ids[:end - begin] = tokens[begin:end]
        nll = np.asarray(token_nll(params, jnp.asarray(ids)[None]), np.float64)
        total += float(nll[first - begin - 1:end - begin - 1].sum())  # targets first..end-1
        count += end - first
    return total, count


def evaluate_text(run, text: str, *, window: int | None = None, stride: int | None = None
                  ) -> dict[str, float]:
    """Token (and word) perplexity of a causal LM run on `text`."""
    if run.model_cfg.family != "gpt":
        raise UserError(f"--text scores causal language models; this run is a "
                        f"{run.model_cfg.family} model: evaluate it on a split instead")
    window = window or run.model_cfg.max_len
    if run.model_cfg.position == "learned" and window > run.model_cfg.max_len:
        raise UserError(f"--window={window} > the model's max_len={run.model_cfg.max_len}")
    stride = stride or window // 2
    tokens = np.asarray(run.tokenizer.encode(text), np.int32)
    if len(tokens) < 2:
        raise UserError("the text has fewer than two tokens: nothing to score")
    nll, count = text_nll(run.model, run.params, tokens, window=window, stride=stride,
                          pad_id=run.tokenizer.pad_id or 0)
    words = len(text.split())
    out = {"loss": nll / count, "perplexity": math.exp(nll / count), "tokens": float(count),
           "window": float(window), "stride": float(stride)}
    if words:
        out.update(word_perplexity=math.exp(nll / words), words=float(words))
    return out
