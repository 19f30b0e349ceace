"""The one run builder: everything a run is made of, built once from a config and a mesh.

    setup = build(config, workdir=workdir)           # lm train (trains the tokenizer if needed)
    setup = build(config, mesh=mesh, tokenizer=None)  # lm plan: shapes only, no data
    state, shardings = setup.init_state(example)     # born sharded, never whole on one device

Training (lm.train.loop), `lm plan`, `lm eval`, `lm predict`, sampling and studies all build
through here, so the model, objective, optimizer and shardings of a run are assembled in one
place. Every check that reads only the config and the devices runs here, before any data.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm import data, models
from lm.data import glue, pipeline, synthetic, tokenizers
from lm.errors import UserError
from lm.nn.config import ModelConfig
from lm.train import objectives, optim, pretrained, sharding, step, topology, windows
from lm.train.state import TrainState, init_state


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run's parts. `config` is resolved: a finetuning run's architecture is filled in."""

    config: ml_collections.ConfigDict
    model_cfg: ModelConfig
    model: nn.Module
    objective: objectives.Objective
    tokenizer: Any  # None when built without one (lm plan)
    mesh: Mesh
    rules: sharding.Rules
    tx: optax.GradientTransformation
    schedule: optax.Schedule

    @property
    def batch_sharding(self) -> NamedSharding:
        return sharding.batch_sharding(self.mesh)

    def make_iter(self, **kwargs) -> Any:
        """This process's share of batches: (split, seed, batch_size[, shuffle, num_epochs])."""
        index, count = sharding.process_batch_shard(self.mesh)
        return iterator_factory(self.config.data)(
            self.config.data, self.tokenizer, process_index=index, process_count=count,
            **kwargs)

    def host_rows(self, global_rows: int) -> int:
        """Rows of a global batch that this process loads."""
        return global_rows // sharding.process_batch_shard(self.mesh)[1]

    def _init_fn(self, example: dict[str, np.ndarray]):
        return lambda: init_state(self.objective, self.model, self.tx,
                                  jax.random.key(self.config.train.seed), example)

    def init_state(self, example: dict[str, np.ndarray]) -> tuple[TrainState, Any]:
        """(step-0 state for batches shaped like `example`, its shardings), born sharded."""
        return sharding.init_sharded(self._init_fn(example), self.mesh, self.rules)

    def abstract_state(self, example: dict[str, Any]) -> tuple[TrainState, Any]:
        """The state `init_state` would build, as ShapeDtypeStructs with their shardings."""
        return sharding.abstract_sharded(self._init_fn(example), self.mesh, self.rules)

    def train_step(self, state_shardings: Any, *, model: nn.Module | None = None,
                   accum_steps: int | None = None):
        """The jitted train step (state donated); `model`/`accum_steps` for lm plan's variants."""
        t = self.config.train
        return step.jit_train_step(
            model=model or self.model, objective=self.objective, tx=self.tx,
            schedule=self.schedule, accum_steps=accum_steps or t.grad_accum_steps,
            parallel_micro_batches=t.parallel_micro_batches, dropout_seed=t.seed,
            state_shardings=state_shardings, batch_sharding=self.batch_sharding)

    def eval_step(self, params_shardings: Any = None):
        """The jitted eval step; its results are replicated so every host can read them."""
        fn = functools.partial(step.eval_step, model=self.model, objective=self.objective)
        if params_shardings is None:
            return jax.jit(fn)
        return jax.jit(fn, in_shardings=(params_shardings, self.batch_sharding),
                       out_shardings=NamedSharding(self.mesh, PartitionSpec()))


def build(config: ml_collections.ConfigDict, *, mesh: Mesh | None = None,
          workdir: str | pathlib.Path | None = None, tokenizer: Any = True,
          model_cfg: ModelConfig | None = None, echo: bool = True) -> Setup:
    """The run of `config`. Without `mesh`, the config's own mesh over every device (checked
    against the batch; process 0 prints the topology with `echo`). `tokenizer`: True builds
    the data config's (training a sentencepiece model into `workdir` when it has no path),
    None builds none, anything else is used as it is. `model_cfg`: a saved run's (from its
    checkpoint; its recorded config is already resolved)."""
    if model_cfg is None:
        check_train(config.train)  # before resolve: it divides by the batch size
        config = pretrained.resolve(config)
        check_train(config.train)  # train.steps, once epochs have set it
        model_cfg = model_config_from(config.model)
        check_model(model_cfg)
    check_lengths(config.data, model_cfg)
    if mesh is None:
        mesh, rules = topology.setup(config, echo=echo)
    else:
        topology.check(config, mesh)
        rules = sharding.logical_rules(config.mesh)
    if tokenizer is True:
        tokenizer = make_tokenizer(config.data, workdir, model_cfg.vocab_size)
    if tokenizer is not None:
        check_vocab(tokenizer.vocab_size, model_cfg.vocab_size)
        check_label_words(config.data, tokenizer)
    tx, schedule = optim.make_optimizer(config.train)
    return Setup(config, model_cfg, models.build(model_cfg),
                 objectives.get(config.data.objective, model_cfg), tokenizer, mesh, rules, tx,
                 schedule)


def reader_mesh() -> Mesh:
    """The mesh of a command that reads a saved run (eval, predict): every device on `data`."""
    return sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


# ---------------------------------------------------------------- parts and checks


def iterator_factory(data_cfg: ml_collections.ConfigDict):
    """The function that makes this data config's batch iterators (lm.data.make_iterator's
    signature): synthetic batches, nanoGPT's random windows, or the input pipeline."""
    if data_cfg.source == "synthetic":
        return synthetic.make_iterator
    if data_cfg.objective == "random_windows":
        return windows.make_iterator
    return data.make_iterator


def model_config_from(fields: ml_collections.ConfigDict) -> ModelConfig:
    """`ModelConfig(**config.model)`, with a bad field reported as a config error."""
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as e:  # an unknown field, a bad value
        raise UserError(f"config.model: {e}") from None


# train.<key>: (lowest valid value, what the key is) for the settings that are counts or rates.
_AT_LEAST = {
    "batch_size": (1, "rows per step"), "grad_accum_steps": (1, "micro-batches per step"),
    "parallel_micro_batches": (1, "micro-batches run side by side"),
    "log_every": (1, "steps between logged records"), "keep_checkpoints": (1, "checkpoints kept"),
    "warmup_steps": (0, "steps"), "eval_every": (0, "steps; 0 = only at the end"),
    "checkpoint_every": (0, "steps; 0 = only at the end"), "epochs": (0, "0 = use train.steps"),
    "eval_batch_size": (0, "rows; 0 = train.batch_size"), "decay_steps": (0, "0 = train.steps"),
    "lr": (0, "the peak learning rate"), "min_lr": (0, "the final learning rate"),
    "weight_decay": (0, "AdamW's decoupled decay"), "clip_norm": (0, "0 = no clipping"),
}


def check_train(t: ml_collections.ConfigDict) -> None:
    """Every train.* count and rate in its valid range, named in one line (the one place)."""
    if t.epochs == 0 and t.steps < 1:  # first: experiments derive warmup etc. from it
        raise UserError(f"train.steps={t.steps} is out of range: it must be >= 1 (optimizer "
                        "steps to train), or set train.epochs")
    for key, (low, what) in _AT_LEAST.items():
        if key in t and t[key] < low:
            raise UserError(f"train.{key}={t[key]} is out of range: it must be >= {low} ({what})")
    if t.eval_steps == 0 or t.eval_steps < -1:
        raise UserError(f"train.eval_steps={t.eval_steps} is out of range: it must be >= 1 "
                        "(batches per evaluation) or -1 (the whole split)")
    for key in ("b1", "b2"):
        if not 0 <= t[key] < 1:
            raise UserError(f"train.{key}={t[key]} is out of range: it must lie in [0, 1)")
    if t.eps <= 0:
        raise UserError(f"train.eps={t.eps} is out of range: it must be > 0")
    if t.best_mode not in ("min", "max"):
        raise UserError(f"train.best_mode={t.best_mode!r} must be 'min' or 'max'")


def check_model(model_cfg: ModelConfig) -> None:
    """The model's rates in range (a dropout rate of 1 or more zeroes every activation)."""
    for key in ("dropout_rate", "attention_dropout_rate"):
        value = getattr(model_cfg, key, 0.0)
        if not 0 <= value < 1:
            raise UserError(f"model.{key}={value} is out of range: it must lie in [0, 1)")


def check_lengths(data_cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> None:
    if model_cfg.position == "learned" and data_cfg.seq_len > model_cfg.max_len:
        raise UserError(
            f"data.seq_len={data_cfg.seq_len} is longer than the model's position table, "
            f"model.max_len={model_cfg.max_len}: lower data.seq_len or raise model.max_len")


def make_tokenizer(data_cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path | None,
                   vocab_size: int) -> data.Tokenizer:
    """The data config's tokenizer. A sentencepiece one without a path is trained on the train
    split into `workdir/tokenizer.model` with the model's vocab_size (once: a resumed run
    reuses it), and `data_cfg.tokenizer.path` is set to it, in place."""
    tok_cfg = data_cfg.tokenizer
    if data_cfg.source == "synthetic":
        return synthetic.NullTokenizer(vocab_size)
    if tok_cfg.kind == "sentencepiece" and not tok_cfg.path:
        if workdir is None:
            raise UserError("data.tokenizer.path is empty: give a sentencepiece model "
                            "(python -m lm tokenizer train) or train in a workdir")
        prefix = pathlib.Path(workdir) / "tokenizer"
        if jax.process_index() == 0 and not prefix.with_suffix(".model").exists():
            docs = pipeline.texts(data_cfg, data_cfg.train_split)
            tokenizers.train_sentencepiece(tokenizers.lines(docs), str(prefix),
                                           vocab_size=vocab_size)
        multihost_utils.sync_global_devices("tokenizer trained")
        tok_cfg.path = str(prefix.with_suffix(".model"))
    return data.make_tokenizer(data_cfg)


def check_label_words(data_cfg: ml_collections.ConfigDict, tokenizer: Any) -> None:
    """A text-to-text GLUE run (T5) writes its labels as words: each must survive the
    tokenizer (encode, then decode), or no prediction could ever name it."""
    if data_cfg.objective != "seq2seq" or not data_cfg.get("task"):
        return
    task = glue.get(data_cfg.task)
    words = task.words or ("0.0", "2.4", "5.0")  # STS-B: scores as seq2seq.glue_target writes
    decoded = {w: tokenizer.decode(tokenizer.encode(w)).strip() for w in words}
    lost = {w: d for w, d in decoded.items() if d != w}
    if lost:
        raise UserError(
            f"the tokenizer (data.tokenizer.path={data_cfg.tokenizer.path!r}) cannot write the "
            f"{task.name} label words {sorted(lost)} (they decode as {sorted(lost.values())}): "
            "use a tokenizer whose vocabulary holds them (e.g. one trained on this task)")


def check_vocab(tokenizer_vocab: int, model_vocab: int) -> None:
    if tokenizer_vocab > model_vocab:
        raise UserError(
            f"the tokenizer has {tokenizer_vocab} ids but model.vocab_size={model_vocab}: set "
            f"--config.model.vocab_size={tokenizer_vocab} (or larger) or use a smaller vocabulary")
