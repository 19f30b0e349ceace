"""The eval runner: a run's evaluation over a split, the same for the training loop and for
`lm eval` on a saved run.

Metric sums are exact over every non-padding row; then the objective's host metrics (GLUE
F1, MCC, correlations: lm.eval.metrics) and, for objectives that decode, the scores of
greedily decoded text (lm.eval.decoding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from lm.data import glue
from lm.errors import UserError
from lm.eval import decoding
from lm.eval import metrics as task_metrics
from lm.train import objectives, sharding, step


def evaluator(setup, eval_step, *, split: str, steps: int, batch_size: int
              ) -> Callable[[Any], dict[str, float]]:
    """`params -> {eval/<metric>: value}` on `split`: `steps` batches of `batch_size` global
    rows (the same batches each time), or the whole split once (steps = -1)."""
    data_cfg, objective = setup.config.data, setup.objective
    decoder = decoding.make_decoder(setup.model, setup.tokenizer, data_cfg, setup.mesh) \
        if objective.decodes else None

    def evaluate(params) -> dict[str, float]:
        batches = eval_batches(setup.make_iter, split, steps, seed=setup.config.train.seed,
                               batch_size=setup.host_rows(batch_size))
        return run_eval(
            eval_step, params, batches, objective=objective, mesh=setup.mesh,
            host_metrics=objective.host_metrics and objective.host_metrics(data_cfg),
            decoder=decoder, text_metrics=decoder and task_metrics.text_metrics(data_cfg.task))

    return evaluate


def check_split(setup, key: str, split: str, batch_size: int) -> dict | None:
    """Reads the first batch of `split` (config key `key`, e.g. the eval split at start-up):
    an unknown, unparsable or empty split fails here, before the run writes anything."""
    try:
        iterator = setup.make_iter(split=split, batch_size=batch_size,
                                   seed=setup.config.train.seed + 1, shuffle=False, num_epochs=1)
        first = next(iter(iterator), None)
    except UserError as e:
        raise UserError(f"{key}={split!r}: {e}") from None
    # With several hosts one host's share may be empty; the whole-split eval copes with that.
    if first is None and jax.process_count() == 1:
        raise UserError(f"{key}={split!r} holds no examples (a batch needs {batch_size} rows):"
                        " choose another split or a smaller batch")
    return first


def metric_names(setup, params, batch: dict) -> set[str]:
    """The `eval/<metric>` names this run's evaluations report (traced, not run), so that
    train.best_metric is checked at start-up. `batch`: an eval batch (shapes only)."""
    objective, data_cfg = setup.objective, setup.config.data

    def summary(params, batch):
        sums, _ = step.eval_step(params, batch, model=setup.model, objective=objective)
        return objectives.summarize(objective, sums)

    names = set(jax.eval_shape(summary, params, batch))
    accumulator = objective.host_metrics and objective.host_metrics(data_cfg)
    if accumulator is not None:
        names |= set(accumulator.spec.metrics)
    if objective.decodes:
        task = data_cfg.task
        names |= {*(glue.get(task).metrics if task else ("bleu", "rouge1", "rouge2", "rougeL")),
                  "exact_match"}
    return {f"eval/{name}" for name in names}


def run_eval(eval_step, params, batches, *, objective: objectives.Objective, mesh,
             host_metrics=None, decoder=None, text_metrics=None) -> dict[str, float]:
    """`eval/<metric>` over `batches`: exact sums over every (non-padding) row, the
    objective's host metrics (GLUE F1, ...) when it has them, and the scores of greedily
    decoded text when it decodes."""
    sums = None
    for batch in batches:
        global_batch = sharding.host_batch_to_global(batch, mesh)
        out, host_out = eval_step(params, global_batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if host_metrics:
            host_metrics.add(*jax.device_get(host_out))
        if decoder:
            text_metrics.add(*decoder.texts(params, global_batch))
    if sums is None:
        raise UserError("the eval split yielded no batches: check data.eval_split")
    results = objectives.summarize(objective, jax.device_get(sums))
    results.update(host_metrics.compute() if host_metrics else {})
    results.update(text_metrics.compute() if text_metrics else {})
    return {f"eval/{k}": float(v) for k, v in results.items()}


def eval_batches(make_iter, split: str, num_steps: int, *, seed: int, batch_size: int
                 ) -> Iterator[dict]:
    """`num_steps` batches of random rows (the same each eval), or the whole split once (-1)."""
    whole = num_steps < 0
    iterator = make_iter(split=split, batch_size=batch_size, seed=seed + 1, shuffle=not whole,
                         num_epochs=1 if whole else None)
    if whole:  # hosts' shares of a split end at different batches
        yield from sharding.until_every_host_is_done(iterator)
        return
    for i, batch in enumerate(iterator):
        if i >= num_steps:
            return
        yield batch


def evaluate_split(setup, params, split: str, batch_size: int | None = None
                   ) -> dict[str, float]:
    """The trainer's eval of `params` on the whole of `split` (metric names without 'eval/')."""
    t = setup.config.train
    evaluate = evaluator(setup, setup.eval_step(), split=split, steps=-1,
                         batch_size=batch_size or t.eval_batch_size or t.batch_size)
    return {k.removeprefix("eval/"): v for k, v in evaluate(params).items()}
