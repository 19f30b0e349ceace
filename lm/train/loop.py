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

import contextlib
import functools
import gc
import pathlib
import shutil
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lm import data, models, profiling
from lm import metrics as task_metrics
from lm.data import pipeline, synthetic, tokenizers
from lm.errors import UserError
from lm.nn.config import ModelConfig
from lm.train import (
    checkpoint,
    decoding,
    mfu,
    objectives,
    optim,
    pretrained,
    sharding,
    step,
    topology,
    windows,
)
from lm.train.state import TrainState, init_state
from lm.train.writer import MetricsWriter, record_config


def iterator_factory(data_cfg: ml_collections.ConfigDict):
    """The function that makes this data config's batch iterators (lm.data.make_iterator's
    signature): synthetic batches, nanoGPT's random windows, or the input pipeline."""
    if data_cfg.source == "synthetic":
        return synthetic.make_iterator
    if data_cfg.objective == "random_windows":
        return windows.make_iterator
    return data.make_iterator


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
    with long_lived_objects_frozen():
        return _train(run, quiet=quiet)


@contextlib.contextmanager
def long_lived_objects_frozen():
    """Keep what exists now (modules, data records, the model) out of Python's cyclic GC
    while the run lasts; what it leaves behind is collectable again afterwards.

    A full collection walks every tracked object: ~240k once MiniLM finetuning has started,
    ~0.3 s of each new batch shape's 0.85 s of tracing, and 1.5 s of a 95 s run in all.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Run(NamedTuple):
    """What the start-up resolved and checked; everything the loop iterates with."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    model_cfg: ModelConfig
    model: Any
    objective: objectives.Objective
    mesh: Any
    rules: Any
    tokenizer: Any
    make_iter: Any  # (split, seed, batch_size, ...) -> iterator of host batches
    train_iter: Any
    state: TrainState
    state_shardings: Any
    ckpt: checkpoint.Checkpointer


def _start(config, workdir: pathlib.Path, allow_config_change: bool) -> Run:
    config = pretrained.resolve(config)
    t = config.train
    model_cfg = model_config(config.model)
    check_lengths(config.data, model_cfg)
    mesh, rules = topology.setup(config)  # fails fast on a bad mesh or batch; prints topology
    shard_index, shard_count = sharding.process_batch_shard(mesh)
    tokenizer = make_tokenizer(config.data, workdir, model_cfg.vocab_size)
    check_vocab(tokenizer.vocab_size, model_cfg.vocab_size)
    objective = objectives.get(config.data.objective, model_cfg)
    model = models.build(model_cfg)
    tx, _ = optim.make_optimizer(t)

    make_iter = functools.partial(
        iterator_factory(config.data), config.data, tokenizer,
        process_index=shard_index, process_count=shard_count)
    train_iter = make_iter(split=config.data.train_split, seed=t.seed,
                           batch_size=t.batch_size // shard_count)
    example = peek(train_iter)

    init_fn = lambda: init_state(objective, model, tx, jax.random.key(t.seed), example)
    state, state_shardings = sharding.init_sharded(init_fn, mesh, rules)
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
    return Run(config, workdir, model_cfg, model, objective, mesh, rules, tokenizer, make_iter,
               train_iter, state, state_shardings, ckpt)


def _train(run: Run, *, quiet: bool) -> dict[str, float]:
    config, t, state, ckpt = run.config, run.config.train, run.state, run.ckpt
    tx, schedule = optim.make_optimizer(t)
    batch_sharding = sharding.batch_sharding(run.mesh)
    train_step = step.jit_train_step(
        model=run.model, objective=run.objective, tx=tx, schedule=schedule,
        accum_steps=t.grad_accum_steps, parallel_micro_batches=t.parallel_micro_batches,
        dropout_seed=t.seed, state_shardings=run.state_shardings, batch_sharding=batch_sharding)
    # Eval results are replicated: every host can read them (and host metrics need them).
    eval_step = jax.jit(
        functools.partial(step.eval_step, model=run.model, objective=run.objective),
        in_shardings=(run.state_shardings.params, batch_sharding),
        out_shardings=NamedSharding(run.mesh, PartitionSpec()))
    _, shard_count = sharding.process_batch_shard(run.mesh)
    eval_rows = (t.eval_batch_size or t.batch_size) // shard_count
    decoder = decoding.make_decoder(run.model, run.tokenizer, config.data, run.mesh) \
        if run.objective.decodes else None
    evaluate = lambda params: run_eval(
        eval_step, params, eval_batches(run.make_iter, config.data.eval_split, t.eval_steps,
                                        seed=t.seed, batch_size=eval_rows),
        objective=run.objective, mesh=run.mesh,
        host_metrics=run.objective.host_metrics and run.objective.host_metrics(config.data),
        decoder=decoder, text_metrics=decoder and task_metrics.text_metrics(config.data.task))

    # Per batch length (length-bucketed batches change it from step to step) and number of
    # MLM prediction slots.
    flops_per_token = functools.cache(functools.partial(
        mfu.model_flops_per_token, run.model_cfg, jax.eval_shape(lambda: state.params)))
    peak = mfu.peak_flops(jax.devices()[0], run.model_cfg.dtype)

    start = int(jax.device_get(state.step))
    if start >= t.steps:
        log(f"the run finished at step {start} (train.steps={t.steps}): nothing to do")
        ckpt.close()
        return {"step": float(start), **best_metrics(ckpt, t.best_metric)}
    writer = MetricsWriter(run.workdir, total_steps=t.steps, initial_step=start,
                           resumed=start > 0, quiet=quiet, enabled=jax.process_index() == 0)
    preemption = checkpoint.install_signal_handlers()
    meter = Throughput()
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
    with sharding.use_mesh(run.mesh, run.rules):
        if t.eval_at_start and start == 0:
            writer.write(0, evaluate(state.params))
        # Batches are placed on the devices two steps ahead: transfers overlap the steps.
        batches = sharding.DevicePrefetch(run.train_iter, run.mesh, size=2)
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
            f"command to resume (exit status {checkpoint.PREEMPTED_EXIT})")
        result["preempted"] = 1.0
    return result


def best_metrics(ckpt: checkpoint.Checkpointer, metric: str) -> dict[str, float]:
    """`best/<metric>` and `best/step` of the best checkpoint (orbax decides which it is)."""
    step_ = ckpt.best_step() if metric else None
    value = ckpt.metrics(step_).get(metric) if step_ is not None else None
    return {} if value is None else {f"best/{metric}": value, "best/step": float(step_)}


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


# ---------------------------------------------------------------- start-up checks


def model_config(fields: ml_collections.ConfigDict) -> ModelConfig:
    """`ModelConfig(**config.model)`, with a bad field reported as a config error."""
    try:
        return ModelConfig(**fields)
    except TypeError as e:  # an unknown field
        raise UserError(f"config.model: {e}") from None
    except ValueError as e:
        raise UserError(f"config.model: {e}") from None


def check_lengths(data_cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> None:
    if model_cfg.position == "learned" and data_cfg.seq_len > model_cfg.max_len:
        raise UserError(
            f"data.seq_len={data_cfg.seq_len} is longer than the model's position table, "
            f"model.max_len={model_cfg.max_len}: lower data.seq_len or raise model.max_len")


def make_tokenizer(data_cfg: ml_collections.ConfigDict, workdir: pathlib.Path, vocab_size: int
                   ) -> "data.Tokenizer":
    """The data config's tokenizer. A sentencepiece one without a path is trained on the train
    split into `workdir/tokenizer.model` with the model's vocab_size (once: a resumed run
    reuses it), and `data_cfg.tokenizer.path` is set to it, in place."""
    tok_cfg = data_cfg.tokenizer
    if data_cfg.source == "synthetic":
        return synthetic.NullTokenizer(vocab_size)
    if tok_cfg.kind == "sentencepiece" and not tok_cfg.path:
        prefix = workdir / "tokenizer"
        if jax.process_index() == 0 and not prefix.with_suffix(".model").exists():
            docs = pipeline.texts(data_cfg, data_cfg.train_split)
            tokenizers.train_sentencepiece(tokenizers.lines(docs), str(prefix),
                                           vocab_size=vocab_size)
        multihost_utils.sync_global_devices("tokenizer trained")
        tok_cfg.path = str(prefix.with_suffix(".model"))
    return data.make_tokenizer(data_cfg)


def check_vocab(tokenizer_vocab: int, model_vocab: int) -> None:
    if tokenizer_vocab > model_vocab:
        raise UserError(
            f"the tokenizer has {tokenizer_vocab} ids but model.vocab_size={model_vocab}: set "
            f"--config.model.vocab_size={tokenizer_vocab} (or larger) or use a smaller vocabulary")


# ---------------------------------------------------------------- helpers


def peek(iterator) -> dict[str, np.ndarray]:
    """The next batch, without consuming it (shapes for init)."""
    saved = iterator.get_state()
    batch = next(iterator)
    iterator.set_state(saved)
    return batch


def eval_batches(make_iter, split: str, num_steps: int, *, seed: int, batch_size: int):
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


class Rates(NamedTuple):
    steps: float
    tokens: float
    flops: float


class Throughput:
    """Steps, tokens and FLOPs per second between host reads; a window starts at the first
    read after a pause (compile, eval, checkpoint), so those pauses never count."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._start, self._count, self._tokens, self._flops = None, 0, 0, 0.0

    def tick(self, tokens: int = 0, flops: float = 0.0) -> None:
        """A step was read: the first one only starts the clock (its time is not measured)."""
        if self._start is None:
            self._start = time.perf_counter()
        else:
            self._count, self._tokens, self._flops = (
                self._count + 1, self._tokens + tokens, self._flops + flops)

    def rate(self) -> Rates | None:
        """Rates since the window started (None if too few steps), and start a new one."""
        if not self._count:
            return None
        now = time.perf_counter()
        seconds = max(now - self._start, 1e-9)
        rates = Rates(self._count / seconds, self._tokens / seconds, self._flops / seconds)
        self.reset()
        self._start = now
        return rates
