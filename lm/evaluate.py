"""`python -m lm eval`: a run's checkpoint on a split of its data, or on a text file.

    python -m lm eval --workdir DIR [--split validation] [--step best|latest|N]
    python -m lm eval --workdir DIR --text FILE [--window N] [--stride N]

(`--config.<key>=<value>` overrides the run's recorded config, as in `lm train`.)

On a split: the trainer's own evaluation over the whole split once (loss, perplexity, token
accuracy, MLM/NSP accuracy, a finetuning task's metrics, decoded-text metrics for seq2seq),
written to DIR/eval_<split>.json. On a text file (causal LMs): perplexity with a sliding
window, GPT-2's WikiText evaluation: windows of `window` tokens advance by `stride`, and each
scores only the tokens no earlier window scored, so every token after the first window has at
least window − stride tokens of context (stride = window: independent chunks). It reports
perplexity per token and, where the text has words, per word (exp of the total loss over the
number of whitespace-separated words), written to DIR/eval_<file name>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import pathlib
from typing import Any

import numpy as np

from lm import config as config_lib
from lm.errors import UserError


def evaluate_split(run, split: str, batch_size: int | None = None) -> dict[str, float]:
    """The trainer's eval of a saved run on the whole of `split` (one process)."""
    import jax

    from lm import metrics as task_metrics
    from lm.train import decoding, loop, objectives, sharding, step

    cfg = run.config
    objective = objectives.get(cfg.data.objective, run.model_cfg)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    make_iter = functools.partial(loop.iterator_factory(cfg.data), cfg.data, run.tokenizer)
    eval_step = jax.jit(functools.partial(step.eval_step, model=run.model, objective=objective))
    rows = batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    decoder = decoding.make_decoder(run.model, run.tokenizer, cfg.data, mesh) \
        if objective.decodes else None
    results = loop.run_eval(
        eval_step, run.params, loop.eval_batches(make_iter, split, -1, seed=cfg.train.seed,
                                                 batch_size=rows),
        objective=objective, mesh=mesh,
        host_metrics=objective.host_metrics and objective.host_metrics(cfg.data),
        decoder=decoder, text_metrics=decoder and task_metrics.text_metrics(cfg.data.task))
    return {k.removeprefix("eval/"): v for k, v in results.items()}


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
    import jax
    import jax.numpy as jnp

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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lm eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run of `python -m lm train`")
    parser.add_argument("--split", default=None, help="default: the run's data.eval_split")
    parser.add_argument("--step", default="best", help="'best', 'latest' or a step number")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--text", default=None, help="a text file (causal LMs): perplexity")
    parser.add_argument("--window", type=int, default=None, help="default: model.max_len")
    parser.add_argument("--stride", type=int, default=None, help="default: window // 2")
    args, overrides = config_lib.parse_command_line(parser, argv[1:])
    from lm.train import saved

    run = saved.load(args.workdir, int(args.step) if args.step.isdigit() else args.step,
                     overrides)
    if args.text:
        path = pathlib.Path(args.text)
        if not path.is_file():
            raise UserError(f"--text {path}: no such file")
        results: dict[str, Any] = evaluate_text(run, path.read_text(encoding="utf-8"),
                                                window=args.window, stride=args.stride)
        name = path.stem
    else:
        name = args.split or run.config.data.eval_split
        results = evaluate_split(run, name, args.batch_size)
    results = {"step": run.step, **results}
    out = run.workdir / f"eval_{name.replace('/', '_')}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"step {run.step} on {name}: " + " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()
        if k != "step") + f"\nwrote {out}")
