"""The training loop: one readable function for every objective.

    resolve the config → check it (lengths, vocabulary, batch vs devices) → data, sharded
    init → resume or initialise → record the run → iterate (train step; read the previous
    step's metrics; eval; checkpoint) → final eval and checkpoint.

Nothing is written to the workdir until every check has passed: a failed start leaves the
workdir as it found it (a new one is removed again). A resumed run must have the config it
recorded, unless `allow_config_change` (the change is then logged with its step).
The host reads each step's metrics one step late, after dispatching the next step, so it
never waits on the device except at eval and checkpoint steps.
"""

import functools
import pathlib
import shutil
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from lm import malloc
from lm.errors import UserError
from lm.eval import runner
from lm.train import checkpoint, mfu, pretrained, profiling, setup, sharding, signals
from lm.train.state import TrainState
from lm.train.writer import MetricsWriter, record_config


def log(*args) -> None:
    """Prints on the lead process only (every host runs the same loop)."""
    if jax.process_index() == 0:
        print(*args, flush=True)


def train(config: ml_collections.ConfigDict, workdir: str, *, quiet: bool = False,
          allow_config_change: bool = False) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final
    train and eval metrics, `best/<metric>` of the best checkpoint when `train.best_metric` is
    set, and `preempted` = 1.0 when SIGTERM/SIGINT stopped it early."""
    workdir = pathlib.Path(workdir).absolute()
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the workdir {workdir} ({e.strerror}): choose a "
                        "directory you can write to") from None
    try:
        run = _start(config, workdir, allow_config_change)
    except BaseException:
        if created and workdir.exists() and jax.process_index() == 0:
            shutil.rmtree(workdir)  # a failed start leaves nothing behind
        raise
    with malloc.long_lived_objects_frozen():
        return _train(run, quiet=quiet)


class Run(NamedTuple):
    """What the start-up built and checked; everything the loop iterates with."""

    setup: setup.Setup
    workdir: pathlib.Path
    train_iter: Any
    state: TrainState
    state_shardings: Any
    ckpt: checkpoint.Checkpointer


def _start(config, workdir: pathlib.Path, allow_config_change: bool) -> Run:
    parts = setup.build(config, workdir=workdir)  # fails fast on a bad config, mesh or batch
    config, t = parts.config, parts.config.train
    train_iter = parts.make_iter(split=config.data.train_split, seed=t.seed,
                                 batch_size=parts.host_rows(t.batch_size))
    state, state_shardings = parts.init_state(peek(train_iter))
    checkpointer = functools.partial(
        checkpoint.Checkpointer, str(workdir), every=t.checkpoint_every,
        keep=t.keep_checkpoints, best_metric=t.best_metric or None, best_mode=t.best_mode,
        config=config.to_dict())
    ckpt = checkpointer() if (workdir / "checkpoints").is_dir() else None
    if ckpt is not None and ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore_latest_intact(state, log=log)
        train_iter.set_state(data_state)
        log(f"resuming from step {int(jax.device_get(state.step))} in {workdir}")
    else:
        if config.init.checkpoint or config.init.hf_dir:  # finetuning: a fresh run only
            params = pretrained.init_params(config, state.params)
            state = state.replace(params=jax.device_put(params, state_shardings.params))
        log(f"fresh run in {workdir}")
    step_ = int(jax.device_get(state.step))
    if jax.process_index() == 0:
        record_config(workdir, config.to_dict(), step_, allow_change=allow_config_change)
    ckpt = ckpt or checkpointer()  # every check has passed: now it may create directories
    return Run(parts, workdir, train_iter, state, state_shardings, ckpt)


def _train(run: Run, *, quiet: bool) -> dict[str, float]:
    parts, state, ckpt = run.setup, run.state, run.ckpt
    config, t = parts.config, parts.config.train
    train_step = parts.train_step(run.state_shardings)
    evaluate = runner.evaluator(parts, parts.eval_step(run.state_shardings.params),
                                split=config.data.eval_split, steps=t.eval_steps,
                                batch_size=t.eval_batch_size or t.batch_size)
    # Per batch length (length-bucketed batches change it from step to step) and number of
    # MLM prediction slots.
    flops_per_token = functools.cache(functools.partial(
        mfu.model_flops_per_token, parts.model_cfg, jax.eval_shape(lambda: state.params)))
    peak = mfu.peak_flops(jax.devices()[0], parts.model_cfg.dtype)

    start = int(jax.device_get(state.step))
    if start >= t.steps:
        log(f"the run finished at step {start} (train.steps={t.steps}): nothing to do")
        ckpt.close()
        return {"step": float(start), **best_metrics(ckpt, t.best_metric)}
    writer = MetricsWriter(run.workdir, total_steps=t.steps, initial_step=start,
                           resumed=start > 0, quiet=quiet, enabled=jax.process_index() == 0)
    preemption = signals.install_signal_handlers()
    meter = mfu.Throughput()
    profiler = profiling.StepProfiler(t.profile_steps, t.profile_dir or run.workdir / "profile",
                                      enabled=jax.process_index() == 0)
    last: dict[str, float] = {}
    pending = None  # (step, device metrics, batch length) not yet read by the host

    def read(pending, force_log: bool = False) -> None:
        """Fetch a finished step's metrics; stop on non-finite values; log every log_every."""
        s, device_metrics, lengths = pending  # (seq_len, MLM slots or None)
        values = {f"train/{k}": float(v) for k, v in jax.device_get(device_metrics).items()}
        check_finite(s, values, ckpt)
        tokens = t.batch_size * lengths[0]  # padded positions included, as MFU counts them
        meter.tick(tokens, tokens * flops_per_token(*lengths))
        if force_log or s % t.log_every == 0:
            rates = meter.rate()
            if rates:
                values["train/steps_per_s"] = rates.steps
                values["train/tokens_per_s"] = rates.tokens
                values["train/tflops_per_s"] = rates.flops / 1e12  # model FLOPs, all devices
                if peak:
                    values["train/mfu"] = rates.flops / (peak * jax.device_count())
            writer.write(s, values)
        last.update(values)

    stopped_early = False
    with sharding.use_mesh(parts.mesh, parts.rules):
        if t.eval_at_start and start == 0:
            writer.write(0, evaluate(state.params))
        # Batches are placed on the devices two steps ahead: transfers overlap the steps.
        batches = sharding.DevicePrefetch(run.train_iter, parts.mesh, size=2)
        started = time.perf_counter()
        for s in range(start + 1, t.steps + 1):
            host_batch, batch = next(batches)
            profiler.before_step(s, state)
            state, metrics = train_step(state, batch)
            if s == start + 1:  # the first call traces and compiles: time it apart
                jax.block_until_ready(metrics)
                last["train/first_step_s"] = time.perf_counter() - started
            profiler.after_step(s, state, functools.partial(
                profiling.hlo_text, train_step, state, batch))
            if pending:
                read(pending)
            slots = host_batch.get("mlm_positions")
            pending = (s, metrics, (host_batch["inputs"].shape[-1],
                                    None if slots is None else slots.shape[-1]))
            writer.advance(s)
            stopped_early = preemption.should_stop(s) and s < t.steps
            stop = stopped_early or s == t.steps
            is_eval = (t.eval_every and s % t.eval_every == 0) or s == t.steps
            if is_eval or stop or (t.checkpoint_every and s % t.checkpoint_every == 0):
                read(pending, force_log=stop)  # never save a state whose loss was not checked
                pending = None
                eval_metrics = evaluate(state.params) if is_eval else None
                if eval_metrics:
                    writer.write(s, eval_metrics)
                    last.update(eval_metrics)
                ckpt.save(s, state, batches.get_state(), metrics=eval_metrics, force=stop)
                meter.reset()
            if stop:
                break
    profiler.close()
    ckpt.wait()
    writer.close()
    final_step = int(jax.device_get(state.step))
    result = {"step": float(final_step), **last, **best_metrics(ckpt, t.best_metric)}
    ckpt.close()
    if stopped_early:
        signal_name = getattr(preemption, "signal_name", None) or "preemption"
        log(f"{signal_name}: saved step {final_step} in {ckpt.directory}; rerun the same "
            f"command to resume (exit status {signals.PREEMPTED_EXIT})")
        result["preempted"] = 1.0
    return result


def best_metrics(ckpt: checkpoint.Checkpointer, metric: str) -> dict[str, float]:
    """`best/<metric>` and `best/step` of the best checkpoint (orbax decides which it is)."""
    step_ = ckpt.best_step() if metric else None
    value = ckpt.metrics(step_).get(metric) if step_ is not None else None
    return {} if value is None else {f"best/{metric}": value, "best/step": float(step_)}


# ---------------------------------------------------------------- helpers


def peek(iterator) -> dict[str, np.ndarray]:
    """The next batch, without consuming it (shapes for init)."""
    saved = iterator.get_state()
    batch = next(iterator)
    iterator.set_state(saved)
    return batch


def check_finite(s: int, values: dict[str, float], ckpt: checkpoint.Checkpointer) -> None:
    """Stops the run when the loss or the gradient norm is NaN/Inf (an overflowing perplexity
    of a finite loss is not a failure)."""
    watched = {k: values[k] for k in ("train/loss", "train/grad_norm") if k in values}
    if all(np.isfinite(v) for v in watched.values()):
        return
    ckpt.wait()  # let a save that is in flight finish: it holds the last good state
    shown = {k: v for k, v in values.items() if k in watched or k == "train/perplexity"}
    good = ckpt.latest_step()
    where = (f"The last good checkpoint is step {good} in {ckpt.directory}: lower train.lr or "
             "raise train.warmup_steps, then rerun to resume from it" if good is not None else
             "No checkpoint was saved before it: lower train.lr or raise train.warmup_steps "
             "and start again")
    raise FloatingPointError(f"non-finite training metrics at step {s}: {shown}. {where}")
