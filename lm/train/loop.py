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
import os
import pathlib
import shutil
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lm import malloc
from lm.errors import Interrupted, UserError
from lm.eval import runner
from lm.train import checkpoint, mfu, pretrained, profiling, setup, sharding, signals
from lm.train import workdir as workdir_lib
from lm.train.state import TrainState
from lm.train.writer import MetricsWriter, record_config


def log(*args) -> None:
    """Prints on the lead process only (every host runs the same loop)."""
    if jax.process_index() == 0:
        print(*args, flush=True)


def train(config: ml_collections.ConfigDict, workdir: str, *, quiet: bool = False,
          allow_config_change: bool = False, restart: bool = False) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final
    train and eval metrics, `best/<metric>` of the best checkpoint when `train.best_metric` is
    set, and `preempted` = 1.0 when SIGTERM/SIGINT stopped it early. `restart` starts over:
    what a previous run recorded is moved to `workdir/previous/<time>/` (see move_previous_run);
    without it, a workdir whose checkpoints were all set aside as damaged is refused."""
    workdir = pathlib.Path(workdir).absolute()
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the workdir {workdir} ({e.strerror}): choose a "
                        "directory you can write to") from None
    lead = jax.process_index() == 0
    try:
        # Until the loop's own handlers, SIGINT/SIGTERM raise: nothing to save yet. One run
        # per workdir, the lock held until this returns or the process dies (kill -9 too).
        with signals.raise_during_startup(), workdir_lib.lock(workdir, lead=lead):
            try:
                with workdir_lib.writing(workdir, "starting the run"):
                    run = _start(config, workdir, allow_config_change, restart)
            except BaseException as e:
                if created and workdir.exists() and lead:
                    shutil.rmtree(workdir, ignore_errors=True)  # a failed start leaves nothing
                if isinstance(e, (KeyboardInterrupt, Interrupted)):
                    raise _interrupted(e, workdir, created) from None
                raise
            with malloc.long_lived_objects_frozen(), workdir_lib.quiet_write_errors(), \
                    workdir_lib.writing(workdir, f"training in {workdir}", settle=run.ckpt.wait):
                return _train(run, quiet=quiet)
    except KeyboardInterrupt as e:  # Ctrl-C between the start and the loop's handlers
        raise _interrupted(e, workdir, False) from None


def _interrupted(e: BaseException, workdir: pathlib.Path, removed: bool) -> Interrupted:
    """Ctrl-C or SIGTERM before the first step, as one line and exit status 130 / 143."""
    status = getattr(e, "exit_status", 130)
    what = str(e) if isinstance(e, Interrupted) else "SIGINT during start-up"
    done = (f"removed the new workdir {workdir}" if removed else
            f"{workdir_lib.resume_note(workdir)}; rerun the same command to go on")
    return Interrupted(f"{what}: {done}", status)


class Run(NamedTuple):
    """What the start-up built and checked; everything the loop iterates with."""

    setup: setup.Setup
    workdir: pathlib.Path
    train_iter: Any
    state: TrainState
    state_shardings: Any
    ckpt: checkpoint.Checkpointer
    evaluate: Any  # params -> {eval/<metric>: value}


def _start(config, workdir: pathlib.Path, allow_config_change: bool, restart: bool = False
           ) -> Run:
    if not restart and records_without_checkpoint(workdir):
        restart = True  # an attempt that never saved a checkpoint: its records move aside
    parts = setup.build(config, workdir=workdir)  # fails fast on a bad config, mesh or batch
    config, t = parts.config, parts.config.train
    # Every split resolves (and yields a batch) before anything is written.
    try:
        train_iter = parts.make_iter(split=config.data.train_split, seed=t.seed,
                                     batch_size=parts.host_rows(t.batch_size))
        example = peek(train_iter)
    except (UserError, StopIteration) as e:
        raise UserError(f"data.train_split={config.data.train_split!r}: "
                        f"{e or 'holds no examples'}") from None
    eval_rows = parts.host_rows(t.eval_batch_size or t.batch_size)
    eval_example = runner.check_split(parts, "data.eval_split", config.data.eval_split,
                                      eval_rows)
    state, state_shardings = parts.init_state(example)
    if t.best_metric and t.best_metric not in (reported := runner.metric_names(
            parts, state.params, eval_example or example)):
        raise UserError(f"train.best_metric={t.best_metric!r} is not a metric this run "
                        f"reports: choose one of {sorted(reported)}")
    evaluate = runner.evaluator(parts, parts.eval_step(state_shardings.params),
                                split=config.data.eval_split, steps=t.eval_steps,
                                batch_size=t.eval_batch_size or t.batch_size)
    checkpointer = functools.partial(
        checkpoint.Checkpointer, str(workdir), every=t.checkpoint_every,
        keep=t.keep_checkpoints, best_metric=t.best_metric or None, best_mode=t.best_mode,
        config=config.to_dict())
    ckpt = checkpointer() if (workdir / "checkpoints").is_dir() and not restart else None
    if ckpt is not None and ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore_latest_intact(state, log=log)
        train_iter.set_state(data_state)
        log(f"resuming from step {int(jax.device_get(state.step))} in {workdir}")
    else:
        if config.init.checkpoint or config.init.hf_dir:  # finetuning: a fresh run only
            params = pretrained.init_params(config, state.params)
            state = state.replace(params=jax.device_put(params, state_shardings.params))
        moved = move_previous_run(workdir) if restart else None
        log(f"fresh run in {workdir}" + (f" (what the previous attempt recorded: {moved})"
                                         if moved else ""))
    step_ = int(jax.device_get(state.step))
    if jax.process_index() == 0:
        _record_config(workdir, config.to_dict(), step_, allow_config_change)
    with workdir_lib.writing(workdir, f"creating {workdir / 'checkpoints'}"):
        ckpt = ckpt or checkpointer()  # every check has passed: now it may create directories
    return Run(parts, workdir, train_iter, state, state_shardings, ckpt, evaluate)


# What a run records in its workdir; `--restart` moves these aside. A tokenizer trained in
# the workdir (tokenizer.model) is an input, not a record: it stays, and the restart uses it.
RUN_RECORDS = ("config.json", "config_changes.jsonl", "metrics.jsonl", "tensorboard",
               "checkpoints", "checkpoints_damaged", "profile")


def records_without_checkpoint(workdir: pathlib.Path) -> bool:
    """Whether `workdir` holds the records of an attempt that never saved a checkpoint (a
    kill or a full disk before the first save): a rerun starts over, moving them aside. A run
    whose checkpoints were all set aside as damaged is refused instead: starting it over
    silently, beside its records, would hide that it once got further."""
    metrics, checkpoints = workdir / "metrics.jsonl", workdir / "checkpoints"
    steps = [p for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []
    if steps or not metrics.exists() or not metrics.stat().st_size:
        return False
    damaged = workdir / "checkpoints_damaged"
    if damaged.is_dir() and any(damaged.iterdir()):
        raise UserError(f"{workdir} holds the records of a run ({metrics}) but its checkpoints "
                        f"were set aside as damaged in {damaged}: rerun with --restart to start "
                        f"over (the old records move to {workdir / 'previous'}/), or use another "
                        "--workdir")
    return True


def move_previous_run(workdir: pathlib.Path) -> pathlib.Path | None:
    """Moves what a previous run recorded (RUN_RECORDS) into `workdir/previous/<time>/`
    (never deleted); the new directory, or None when there was nothing to move."""
    present = [workdir / name for name in RUN_RECORDS if (workdir / name).exists()]
    target = workdir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    if present and jax.process_index() == 0:
        target.mkdir(parents=True, exist_ok=True)
        for path in present:
            path.rename(target / path.name)
        log(f"--restart: moved the previous run's {', '.join(p.name for p in present)} to "
            f"{target}")
    multihost_utils.sync_global_devices("previous run moved aside")
    return target if present else None


def _record_config(workdir: pathlib.Path, resolved: dict, step_: int, allow_change: bool
                   ) -> None:
    """record_config; a write it cannot finish (a full disk) leaves the files as they were."""
    changes = workdir / "config_changes.jsonl"
    size = changes.stat().st_size if changes.exists() else None
    try:
        with workdir_lib.writing(workdir, f"recording the config in {workdir}"):
            record_config(workdir, resolved, step_, allow_change=allow_change)
    except UserError:
        workdir.joinpath("config.tmp").unlink(missing_ok=True)
        if size is None:
            changes.unlink(missing_ok=True)
        elif changes.exists():
            os.truncate(changes, size)
        raise


def _train(run: Run, *, quiet: bool) -> dict[str, float]:
    parts, state, ckpt = run.setup, run.state, run.ckpt
    t = parts.config.train
    preemption = signals.install_signal_handlers()  # from here SIGTERM/SIGINT save and stop
    train_step = parts.train_step(run.state_shardings)
    evaluate = run.evaluate
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
    records = run.workdir / "metrics.jsonl"
    with workdir_lib.writing(run.workdir, f"opening the records {records}", settle=ckpt.wait):
        writer = MetricsWriter(run.workdir, total_steps=t.steps, initial_step=start,
                               resumed=start > 0, quiet=quiet, enabled=jax.process_index() == 0)

    def record(s: int, values: dict[str, float]) -> None:
        """writer.write; a full disk is one line naming the file and the step."""
        with workdir_lib.writing(run.workdir, f"writing the records of step {s} to {records}",
                                 settle=ckpt.wait):
            writer.write(s, values)
    meter = mfu.Throughput()
    profiler = profiling.StepProfiler(t.profile_steps, t.profile_dir or run.workdir / "profile",
                                      enabled=jax.process_index() == 0)
    last: dict[str, float] = {}
    pending = None  # (step, device metrics, batch length, done) not yet read by the host

    def read(pending, force_log: bool = False) -> None:
        """Fetch a finished step's metrics; stop on non-finite values; log every log_every."""
        s, device_metrics, lengths, done = pending  # (seq_len, MLM slots or None)
        values = {f"train/{k}": float(v) for k, v in jax.device_get(device_metrics).items()}
        done = done or time.perf_counter()  # when the step was seen finished: now, or earlier
        check_finite(s, values, ckpt)
        tokens = t.batch_size * lengths[0]  # padded positions included, as MFU counts them
        meter.tick(tokens, tokens * flops_per_token(*lengths), done=done)
        if force_log or s % t.log_every == 0:
            rates = meter.rate()
            if rates:
                values["train/steps_per_s"] = rates.steps
                values["train/tokens_per_s"] = rates.tokens
                values["train/tflops_per_s"] = rates.flops / 1e12  # model FLOPs, all devices
                if peak:
                    values["train/mfu"] = rates.flops / (peak * jax.device_count())
            record(s, values)
        last.update(values)

    stopped_early = False
    with sharding.use_mesh(parts.mesh, parts.rules):
        if t.eval_at_start and start == 0:
            record(0, evaluate(state.params))
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
            # A step that ran inside its call (CPU) finished now, not when the host reads it.
            done = time.perf_counter() if jax.tree.leaves(metrics)[0].is_ready() else None
            pending = (s, metrics, (host_batch["inputs"].shape[-1],
                                    None if slots is None else slots.shape[-1]), done)
            writer.advance(s)
            stopped_early = preemption.should_stop(s) and s < t.steps
            stop = stopped_early or s == t.steps
            is_eval = (t.eval_every and s % t.eval_every == 0) or s == t.steps
            if is_eval or stop or (t.checkpoint_every and s % t.checkpoint_every == 0):
                read(pending, force_log=stop)  # never save a state whose loss was not checked
                pending = None
                eval_metrics = evaluate(state.params) if is_eval else None
                if eval_metrics:
                    record(s, eval_metrics)
                    last.update(eval_metrics)
                try:
                    ckpt.save(s, state, batches.get_state(), metrics=eval_metrics, force=stop)
                except checkpoint.NonFiniteState as e:  # finite metrics, poisoned state
                    raise FloatingPointError(f"{e}. {last_good(ckpt, None)}") from None
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
    shown = {k: v for k, v in values.items() if k in watched or k == "train/perplexity"}
    # Step s computed them from the state of step s - 1: a checkpoint of it is poisoned.
    raise FloatingPointError(f"non-finite training metrics at step {s}: {shown}. "
                             f"{last_good(ckpt, s - 1)}")


def last_good(ckpt: checkpoint.Checkpointer, first_bad: int | None) -> str:
    """Where to resume after a NaN stop: the newest checkpoint before `first_bad` (a state
    holding NaN/Inf is never saved; a finite one that the next step turned into NaN is no
    good either). Checkpoints from `first_bad` on are set aside, so a rerun resumes there."""
    ckpt.wait()  # let a save that is in flight finish: it holds the last good state
    good, moved = ckpt.latest_step(), []
    while good is not None and first_bad is not None and good >= first_bad:
        moved.append(f"step {good} to {ckpt.set_aside(good)}")
        good = ckpt.latest_step()
    aside = f"Moved the checkpoint of {', '.join(moved)}: the next step from it is NaN. " \
        if moved else ""
    if good is None:
        return (aside + "No checkpoint was saved before it: lower train.lr or raise "
                "train.warmup_steps and start again (--restart)")
    return (aside + f"The last good checkpoint is step {good} in {ckpt.directory}: lower "
            "train.lr or raise train.warmup_steps, then rerun to resume from it")
