"""The training loop: one readable function for every objective.

    build model, tokenizer, data → sharded init → resume → iterate (train step; read the
    previous step's metrics; eval; checkpoint) → final eval and checkpoint.

The host reads each step's metrics one step late, after dispatching the next step, so it
never waits on the device except at eval and checkpoint steps.
"""

import functools
import pathlib
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lm import data, finetune, models, profiling
from lm.data import sources, tokenizers
from lm.train import checkpoint, mfu, optim, sharding, step, tasks, windows
from lm.train.metrics import MetricsWriter
from lm.train.state import TrainState

# Objectives whose batches come from somewhere other than lm.data.make_iterator.
ITERATORS = {"random_windows": windows.make_iterator}


def train(config: ml_collections.ConfigDict, workdir: str, *, quiet: bool = False
          ) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final
    train and eval metrics, plus `best/<metric>` when `train.best_metric` is set."""
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: the tokenizer path may be set
    t = config.train
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_cfg = models.ModelConfig(**config.model)
    tokenizer = make_tokenizer(config.data, workdir, model_cfg.vocab_size)
    check_vocab(tokenizer.vocab_size, model_cfg.vocab_size)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    task = tasks.get_task(config.data.objective, model_cfg)
    model = models.build(model_cfg)
    tx, schedule = optim.make_optimizer(t)

    mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)
    shard_index, shard_count = sharding.process_batch_shard(mesh)
    make_iter = functools.partial(
        ITERATORS.get(config.data.objective) or data.make_iterator, config.data, tokenizer,
        process_index=shard_index, process_count=shard_count)
    train_iter = make_iter(split=config.data.train_split, seed=t.seed,
                           batch_size=local_rows(t.batch_size, shard_count, t.grad_accum_steps))
    example = peek(train_iter)

    def init_fn() -> TrainState:
        params = tasks.init_params(task, model, jax.random.key(t.seed), example)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    state, state_shardings = sharding.init_sharded(init_fn, mesh, rules)
    ckpt = checkpoint.Checkpointer(
        str(workdir), every=t.checkpoint_every, keep=t.keep_checkpoints,
        best_metric=t.best_metric or None, best_mode=t.best_mode, config=config.to_dict())
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(state)
        train_iter.set_state(data_state)
    elif config.init.checkpoint or config.init.hf_dir:  # finetuning: a fresh run only
        params = finetune.init_params(config, state.params)
        state = state.replace(params=jax.device_put(params, state_shardings.params))

    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(
        functools.partial(step.train_step, model=model, task=task, tx=tx, schedule=schedule,
                          accum_steps=t.grad_accum_steps, dropout_seed=t.seed),
        in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
        donate_argnums=0)
    # Eval results are replicated: every host can read them (and host metrics need them).
    eval_step = jax.jit(functools.partial(step.eval_step, model=model, task=task),
                        in_shardings=(state_shardings.params, batch_sharding),
                        out_shardings=NamedSharding(mesh, PartitionSpec()))

    eval_rows = local_rows(t.eval_batch_size or t.batch_size, shard_count)
    evaluate = lambda params: run_eval(
        eval_step, params, eval_batches(make_iter, config.data.eval_split, t.eval_steps,
                                        seed=t.seed, batch_size=eval_rows),
        task=task, mesh=mesh, host_metrics=task.host_metrics and task.host_metrics(config.data))

    # Per batch length: length-bucketed batches (finetuning) change it from step to step.
    flops_per_token = functools.cache(functools.partial(
        mfu.model_flops_per_token, model_cfg, jax.eval_shape(lambda: state.params)))
    peak = mfu.peak_flops(jax.devices()[0], model_cfg.dtype)

    start = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, total_steps=t.steps, initial_step=start, quiet=quiet,
                           enabled=jax.process_index() == 0)
    preemption = checkpoint.install_signal_handlers()
    meter = Throughput()
    profiler = profiling.StepProfiler(t.profile_steps, t.profile_dir or workdir / "profile",
                                      enabled=jax.process_index() == 0)
    last: dict[str, float] = {}
    best: dict[str, float] = {}
    pending = None  # (step, device metrics) not yet read by the host

    def read(pending, force_log: bool = False) -> None:
        """Fetch a finished step's metrics; stop on non-finite values; log every log_every."""
        s, device_metrics, length = pending
        values = {f"train/{k}": float(v) for k, v in jax.device_get(device_metrics).items()}
        check_finite(s, values, ckpt)
        tokens = t.batch_size * length  # padded positions included, as MFU counts them
        meter.tick(tokens, tokens * flops_per_token(length))
        if force_log or s % t.log_every == 0:
            rates = meter.rate()
            if rates:
                values["train/steps_per_s"] = rates.steps
                values["train/tokens_per_s"] = rates.tokens
                if peak:
                    values["train/mfu"] = rates.flops / (peak * jax.device_count())
            writer.write(s, values)
        last.update(values)

    with sharding.use_mesh(mesh, rules):
        if t.eval_at_start and start == 0:
            writer.write(0, evaluate(state.params))
        for s in range(start + 1, t.steps + 1):
            host_batch = next(train_iter)
            batch = sharding.host_batch_to_global(host_batch, mesh)
            profiler.before_step(s, state)
            state, metrics = train_step(state, batch)
            profiler.after_step(s, state, functools.partial(
                profiling.hlo_text, train_step, state, batch))
            if pending:
                read(pending)
            pending = (s, metrics, host_batch["inputs"].shape[-1])
            writer.advance(s)
            stop = preemption.should_stop(s) or s == t.steps
            is_eval = (t.eval_every and s % t.eval_every == 0) or s == t.steps
            if is_eval or stop or s % t.checkpoint_every == 0:
                read(pending, force_log=stop)  # never save a state whose loss was not checked
                pending = None
                eval_metrics = evaluate(state.params) if is_eval else None
                if eval_metrics:
                    writer.write(s, eval_metrics)
                    last.update(eval_metrics)
                    update_best(best, eval_metrics, t.best_metric, t.best_mode)
                ckpt.save(s, state, train_iter.get_state(), metrics=eval_metrics, force=stop)
                meter.reset()
            if stop:
                break
    profiler.close()
    ckpt.close()
    writer.close()
    return {"step": float(jax.device_get(state.step)), **last, **best}


def run_eval(eval_step, params, batches, *, task: tasks.Task, mesh, host_metrics=None
             ) -> dict[str, float]:
    """`eval/<metric>` over `batches`: exact sums over every (non-padding) row, and the task's
    host metrics (GLUE F1, ...) when it has them."""
    sums = None
    for batch in batches:
        out, host_out = eval_step(params, sharding.host_batch_to_global(batch, mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if host_metrics:
            host_metrics.add(*jax.device_get(host_out))
    if sums is None:
        raise ValueError("the eval split yielded no batches: check data.eval_split")
    results = tasks.summarize(task, jax.device_get(sums))
    results.update(host_metrics.compute() if host_metrics else {})
    return {f"eval/{k}": float(v) for k, v in results.items()}


def make_tokenizer(data_cfg: ml_collections.ConfigDict, workdir: pathlib.Path, vocab_size: int
                   ) -> data.Tokenizer:
    """The data config's tokenizer. A sentencepiece one without a path is trained on the train
    split into `workdir/tokenizer.model` with the model's vocab_size (once: a resumed run
    reuses it), and `data_cfg.tokenizer.path` is set to it, in place."""
    tok_cfg = data_cfg.tokenizer
    if tok_cfg.kind == "sentencepiece" and not tok_cfg.path:
        prefix = workdir / "tokenizer"
        if jax.process_index() == 0 and not prefix.with_suffix(".model").exists():
            docs = sources.text_source(data_cfg, data_cfg.train_split)
            tokenizers.train_sentencepiece(tokenizers.lines(docs), str(prefix),
                                           vocab_size=vocab_size)
        multihost_utils.sync_global_devices("tokenizer trained")
        tok_cfg.path = str(prefix.with_suffix(".model"))
    return data.make_tokenizer(data_cfg)


def check_vocab(tokenizer_vocab: int, model_vocab: int) -> None:
    if tokenizer_vocab > model_vocab:
        raise ValueError(
            f"the tokenizer has {tokenizer_vocab} ids but model.vocab_size={model_vocab}: set "
            f"--config.model.vocab_size={tokenizer_vocab} (or larger) or use a smaller vocabulary")


def local_rows(global_rows: int, shard_count: int, multiple: int = 1) -> int:
    """This process's rows of a global batch; each process's micro-batches must be equal."""
    if global_rows % (shard_count * multiple):
        raise ValueError(
            f"batch_size={global_rows} must be a multiple of {shard_count} batch shards × "
            f"{multiple} micro-batches (grad_accum_steps)")
    return global_rows // shard_count


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
    for i, batch in enumerate(iterator):
        if not whole and i >= num_steps:
            return
        yield batch


def check_finite(s: int, values: dict[str, float], ckpt: checkpoint.Checkpointer) -> None:
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
        ckpt.wait()  # let a save that is in flight finish: it holds the last good state
        raise FloatingPointError(
            f"non-finite training metrics at step {s}: {bad}. The last good checkpoint is "
            f"step {ckpt.latest_step()} in {ckpt.directory} (lower train.lr or raise "
            "train.warmup_steps, then rerun to resume from it)")


def update_best(best: dict, metrics: dict, name: str, mode: str) -> None:
    if not name or name not in metrics:
        return
    key, value = f"best/{name}", metrics[name]
    if key not in best or (value < best[key] if mode == "min" else value > best[key]):
        best[key] = value


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
