"""Text in, text out: what the `sample` and `fill_mask` commands call.

    model, params, tokenizer = load_hf("gpt2_dir")      # GPT-2, T5 or BERT checkpoint dir
    sample_text(model, params, tokenizer, ["ROMEO:"], max_new_tokens=100, top_k=50)
    fill_mask(model, params, tokenizer, "The capital of France is [MASK].")
    classify(model, params, tokenizer, ["Great!"], labels=hf_labels("bert_classifier_dir"))

Errors in the arguments name the command-line flags (`--temperature`...) that carry them.
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from lm.data.tokenizers import Tokenizer, hf_tokenizer
from lm.errors import UserError
from lm.generation.generate import generate


def load_hf(directory: str | pathlib.Path, **model_overrides: Any
            ) -> tuple[nn.Module, dict, Tokenizer]:
    """`(model, params, tokenizer)` of a Hugging Face checkpoint directory (GPT-2, T5, BERT)
    or of one `python -m lm convert` wrote (lm's config.json + params.safetensors).

    `model_overrides` set ModelConfig fields the checkpoint does not fix (dtype...).
    """
    from lm import convert  # noqa: PLC0415  (reads safetensors only when used)

    read = convert.load_converted if convert.is_converted(directory) else convert.from_hf
    model, params = read(directory, **model_overrides)
    return model, params, hf_tokenizer(str(directory))


def hf_labels(directory: str | pathlib.Path) -> list[str]:
    """The class names of an HF classifier directory (its config.json's id2label, in id
    order; HF's LABEL_i when it has none), or of one `lm convert` wrote from it."""
    from lm import convert  # noqa: PLC0415

    hf = convert.hf_config(directory)
    id2label = {int(k): v for k, v in (hf.get("id2label") or {}).items()}
    n = len(id2label) or hf.get("num_labels", 2)
    return [id2label.get(i, f"LABEL_{i}") for i in range(n)]


def check_sampling(*, max_new_tokens: int, temperature: float | None, top_k: int,
                   top_p: float, num_samples: int = 1) -> None:
    """One clear error, naming the `sample` command's flag, for an argument out of range."""
    problems = {
        "--max_new_tokens": (max_new_tokens, max_new_tokens < 1, "must be >= 1"),
        "--temperature": (temperature, temperature is not None and temperature < 0,
                          "must be >= 0 (0 = greedy)"),
        "--top_k": (top_k, top_k < 0, "must be >= 0 (0 = off)"),
        "--top_p": (top_p, not 0 < top_p <= 1, "must be in (0, 1] (1 = off)"),
        "--num_samples": (num_samples, num_samples < 1, "must be >= 1"),
    }
    for flag, (value, bad, rule) in problems.items():
        if bad:
            raise UserError(f"{flag} {value}: {rule}")


def natural_temperature(model: nn.Module) -> float:
    """What `temperature=None` means: greedy (0) for an encoder-decoder (T5), as
    transformers' `generate` decodes by default; 1.0 (sampling) for a GPT."""
    return 0.0 if model.cfg.family == "t5" else 1.0


def sample_text(
    model: nn.Module,
    params: Any,
    tokenizer: Tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    temperature: float | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
) -> list[str]:
    """`num_samples` texts per prompt, prompt-major ([p0 s0, p0 s1, ..., p1 s0, ...]).

    GPT: the prompt followed by its continuation (an empty prompt starts from eos, as
    GPT-2's <|endoftext|>). T5: the decoder's text, the prompt being the encoder input.
    Each text stops at the tokenizer's end-of-sequence or after `max_new_tokens` tokens;
    temperature 0 is greedy, None the model's natural default (`natural_temperature`).
    All prompts and samples run as one batch.
    """
    check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, num_samples=num_samples)
    if temperature is None:
        temperature = natural_temperature(model)
    texts = [p for p in prompts for _ in range(num_samples)]
    encoded = [tokenizer.encode(text) for text in texts]
    ids = [_model_input(model, tokenizer, row) for row in encoded]
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                  top_p=top_p, eos_id=tokenizer.eos_id, pad_id=pad, rng=jax.random.key(seed))
    if model.cfg.family == "t5":
        encoder_BxS, encoder_mask = _padded(ids, pad, left=False)
        start_Bx1 = np.full((len(ids), 1), pad, np.int32)  # T5's decoder starts from pad
        new_BxN = generate(model, params, start_Bx1, encoder_tokens=encoder_BxS,
                           encoder_mask=encoder_mask, **kwargs)
        return [tokenizer.decode(_until(row, tokenizer.eos_id)) for row in np.asarray(new_BxN)]
    prompt_BxP, prompt_mask = _padded(ids, pad, left=True)
    new_BxN = generate(model, params, prompt_BxP, prompt_mask=prompt_mask, **kwargs)
    # Decoding prompt and continuation together keeps the spacing at their junction.
    return [tokenizer.decode(prompt + _until(row, tokenizer.eos_id))
            for prompt, row in zip(encoded, np.asarray(new_BxN), strict=True)]


def _model_input(model: nn.Module, tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    """GPT: the prompt, or eos alone for an empty one; T5: the encoder input, eos-terminated."""
    if model.cfg.family == "t5":  # T5 inputs end with </s>, as in training
        return ids + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
    if model.cfg.family != "gpt":
        raise UserError(f"sampling needs a GPT or a T5, not family {model.cfg.family!r}")
    if not ids:
        if tokenizer.eos_id is None:
            raise UserError("an empty prompt starts from end-of-sequence: this tokenizer "
                             "has none, so give a prompt")
        return [tokenizer.eos_id]
    return ids


def _padded(rows: list[list[int]], pad: int, *, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows padded to the longest (on the left for GPT prompts): (tokens, 1 = real) BxL."""
    length = max(map(len, rows))
    tokens = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for b, row in enumerate(rows):
        cols = slice(length - len(row), length) if left else slice(0, len(row))
        tokens[b, cols], mask[b, cols] = row, 1
    return tokens, mask


def _until(row: np.ndarray, eos_id: int | None) -> list[int]:
    """The tokens before the first end-of-sequence."""
    row = [int(i) for i in row]
    return row[: row.index(eos_id)] if eos_id in row else row


class Prediction(NamedTuple):
    token: str
    prob: float
    id: int


def fill_mask(model: nn.Module, params: Any, tokenizer: Tokenizer, text: str, top_k: int = 5
              ) -> list[list[Prediction]]:
    """The `top_k` most probable tokens for each mask symbol in `text` ([MASK] for BERT),
    from a BERT's MLM head: one list per mask, most probable first."""
    tokenizer.require("mask_id", "cls_id", "sep_id")
    if "mlm" not in model.cfg.heads:
        raise UserError(
            f"fill_mask needs a BERT with an MLM head; this model has heads={model.cfg.heads} "
            "(sentence-embedding checkpoints such as all-MiniLM-L6-v2 ship none): use a "
            "BertForMaskedLM / BertForPreTraining directory or a bert_mlm_nsp run")
    ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
    where = [k for k, i in enumerate(ids) if i == tokenizer.mask_id]
    if not where:
        raise UserError(f"no mask symbol (token id {tokenizer.mask_id}; [MASK] for BERT) in "
                        f"{text!r}")
    out = jax.jit(model.apply)({"params": params}, np.asarray([ids], np.int32))
    logits_MxV = np.asarray(out["mlm_logits"][0, np.asarray(where)], np.float64)
    probs_MxV = np.exp(logits_MxV - logits_MxV.max(-1, keepdims=True))
    probs_MxV /= probs_MxV.sum(-1, keepdims=True)
    best_MxK = np.argsort(-probs_MxV, axis=-1, kind="stable")[:, :top_k]
    return [[Prediction(tokenizer.decode([int(i)]), float(p[i]), int(i)) for i in best]
            for p, best in zip(probs_MxV, best_MxK, strict=True)]
