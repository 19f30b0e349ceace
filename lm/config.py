"""The experiment contract: block defaults, experiment files, sweeps and command-line overrides.

An experiment file `experiments/<name>.py` defines `get_config(arg) -> ConfigDict` with the
blocks `model` (`ModelConfig` fields), `data` (`lm.data.config`), `train`, `mesh` and `init`
(defaults below), lists its `ARGS`, and may define `get_sweep(arg) -> Sweep`. A study file
defines `get_study(arg) -> Study` (and needs no `get_config`). Every command
loads it the same way and applies `--config.<dotted.key>=<value>` overrides with one typed
parser: an unknown key lists the valid keys near it, a value that does not parse as the
field's type names the key.

This module imports no jax (a typo in a flag fails in a fraction of a second), and
experiment files import only it (plus constants of `lm.data`, `lm.models`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import itertools
import pathlib
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import ml_collections

from lm.data.config import default_config as data_config
from lm.errors import MissingFileError, UserError
from lm.models.config import model_config

__all__ = ["ConfigError", "Reference", "Study", "Task", "Sweep", "Tokenizer", "Variant",
           "base_config", "chain", "data_config", "load", "load_study", "load_sweep",
           "model_config", "model_fields", "override", "parse_arg", "pick", "product", "zip_"]

ConfigDict = ml_collections.ConfigDict
Point = dict[str, Any]


class ConfigError(UserError):
    """An experiment file, arg or override that cannot be applied."""


# ---------------------------------------------------------------- block defaults


def default_train_config() -> ConfigDict:
    """Every `train` field with its default (one place; experiment files set a few)."""
    return ConfigDict(dict(
        steps=1000,  # optimizer steps (derived from `epochs` when that is > 0)
        # > 0: train this many passes over the train split; the trainer sets `steps` from the
        # split's size (classification), so fields derived from `steps` follow.
        epochs=0,
        steps_per_epoch=0,  # set by the trainer when epochs > 0; per-epoch cadences derive from it
        batch_size=32,  # global rows per optimizer step (all hosts, all micro-batches)
        grad_accum_steps=1,  # micro-batches per step, one after another (memory for one)
        # micro-batches per accumulation step computed side by side: the same gradient, and on
        # CPU faster for small models (XLA runs them one per core; lm/train/step.py)
        parallel_micro_batches=1,
        lr=1e-3,
        min_lr=0.0,  # lr reached at decay_steps
        schedule="cosine",  # 'cosine' | 'linear' | 'constant'
        warmup_steps=0,
        decay_steps=0,  # 0 = steps
        weight_decay=0.0,
        decay_embeddings=False,  # also decay embedding tables (nanoGPT does: all 2-D params)
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=1.0,  # global-norm clipping; 0 = off
        seed=0,  # params init, dropout and data order
        log_every=10,
        eval_every=100,  # 0 = only at the end
        eval_steps=-1,  # eval batches per evaluation; -1 = the whole split once
        eval_batch_size=0,  # 0 = batch_size
        eval_at_start=False,  # nanoGPT evaluates before the first step
        checkpoint_every=500,  # 0 = only at the end (and when stopped by SIGTERM)
        keep_checkpoints=2,
        best_metric="",  # e.g. 'eval/loss': also keep the best checkpoint by it
        best_mode="min",  # 'min' | 'max'
        # (start, stop): trace steps start..stop-1 with jax.profiler and print their top ops
        # (lm/profiling.py); () = off. The trace goes to profile_dir ('' = <workdir>/profile).
        profile_steps=(),
        profile_dir="",
    ))


def default_mesh_config() -> ConfigDict:
    """Device mesh shape (-1 = all remaining devices), or a named layout (lm/train/sharding.py
    PRESETS: 'dp', 'fsdp', 'tp', 'fsdp_tp') that sets data and fsdp, and tensor when it is 1."""
    return ConfigDict(dict(preset="", data=-1, fsdp=1, tensor=1))


def default_init_config() -> ConfigDict:
    """Where initial params come from when not random (finetuning). With either set, the
    model's architecture (and, when data.tokenizer.path is empty, the tokenizer) come from
    that source at start-up; config.model keeps only its free fields (dropout, dtype, heads...).
    """
    return ConfigDict(dict(
        checkpoint="",  # a workdir of this project: its latest params
        hf_dir="",  # a Hugging Face checkpoint directory, or 'minilm' (all-MiniLM-L6-v2)
    ))


def base_config() -> ConfigDict:
    """Top level with default `train`, `mesh`, `init`; `model` and `data` are set by the file."""
    return ConfigDict(dict(
        model={}, data=data_config(), train=default_train_config(), mesh=default_mesh_config(),
        init=default_init_config(),
    ))


def model_fields(family: str, size: str = "base", **overrides: Any) -> dict[str, Any]:
    """`config.model` for `family` at `size` (the size table), with field overrides."""
    return dataclasses.asdict(model_config(family, size, **overrides))


# ---------------------------------------------------------------- experiment args


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """Parse an experiment's `arg`, e.g. 'tiny,nsp=False' with defaults size='base', nsp=True.

    A bare value sets the first default (the size); `key=value` sets that key, typed like its
    default. Unknown keys are errors.
    """
    result = ConfigDict(defaults)
    first = next(iter(defaults), None)
    for part in filter(None, (arg or "").split(",")):
        key, sep, text = part.partition("=")
        key, text = (key.strip(), text.strip()) if sep else (first, part.strip())
        if key not in defaults:
            raise ConfigError(
                f"unknown experiment arg {key!r} in {arg!r}; valid: {sorted(defaults)}")
        result[key] = parse_value(text, defaults[key], name=f"experiment arg {key}")
    return result


def pick(table: dict[str, Any], name: str, what: str = "size") -> Any:
    """`table[name]`, or an error that lists the valid names."""
    if name not in table:
        raise ConfigError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


# ---------------------------------------------------------------- sweeps


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The points of a sweep (dotted-key overrides) and the eval metric that ranks them.

    The runner makes `metric` each point's `train.best_metric`, so a point's best checkpoint
    and its rank in the table are decided by the same number. With `seeds`, every point runs
    once per seed (`train.seed`) and the table ranks points by the mean over their seeds.
    """

    points: list[Point]
    metric: str = "eval/loss"
    mode: str = "min"  # 'min' | 'max'
    seeds: tuple[int, ...] = ()  # () = each point once, with its config's train.seed

    def __post_init__(self):
        if not self.points:
            raise ConfigError("a sweep needs at least one point")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"sweep mode={self.mode!r} must be 'min' or 'max'")
        object.__setattr__(self, "seeds", _seeds(self.seeds, "sweep seeds"))
        if self.seeds and any("train.seed" in point for point in self.points):
            raise ConfigError("sweep: a point sets train.seed and the sweep has seeds; use one")


def product(**axes: Sequence[Any]) -> list[Point]:
    """Every combination of the axes' values; the first axis varies slowest.

    Keys are dotted config paths: `product(**{"train.lr": [1e-4, 3e-4], "train.seed": [0]})`.
    """
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zip_(**axes: Sequence[Any]) -> list[Point]:
    """The i-th point takes the i-th value of every axis (all axes have the same length)."""
    lengths = {key: len(values) for key, values in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zip_ needs axes of equal length; got {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values)) for values in zip(*axes.values())]


def chain(*grids: Sequence[Point]) -> list[Point]:
    """The points of several grids, one after the other."""
    return [dict(point) for grid in grids for point in grid]


# ---------------------------------------------------------------- studies


def _seeds(seeds: Sequence[int], what: str) -> tuple[int, ...]:
    seeds = tuple(seeds)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"{what} must be integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{what} repeat a seed: {seeds!r}")
    return seeds


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _check_name(name: str, what: str) -> None:
    """Names become directory names (DIR/pretrain/<variant>-s<seed>)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{what} name {name!r}: use letters, digits and . _ + - only")


def _check_spec(spec: str, what: str) -> None:
    if not isinstance(spec, str) or not split_spec(spec)[0].endswith(".py"):
        raise ConfigError(f"{what}: config {spec!r} is not an experiment spec "
                          "'experiments/<file>.py[:<arg>]'")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A pretraining variant: an experiment file[:arg] plus dotted-key overrides.

    Variants may use different experiment files (BERT MLM+NSP vs a GPT for "LTR"); the study
    gives every one the same shared tokenizer and they should read the same data.
    """

    name: str
    config: str  # e.g. 'experiments/bert_mlm_nsp.py:tiny,nsp=False'
    overrides: Point = dataclasses.field(default_factory=dict)  # {'model.heads': ('mlm',)}

    def __post_init__(self):
        _check_name(self.name, "variant")
        _check_spec(self.config, f"variant {self.name}")
        object.__setattr__(self, "overrides", dict(self.overrides))


@dataclasses.dataclass(frozen=True)
class Task:
    """A downstream experiment, finetuned from every pretraining run; `metric` (an eval
    metric, e.g. 'eval/accuracy') is each run's `train.best_metric` and the table's score."""

    name: str
    config: str  # e.g. 'experiments/finetune_glue.py:sst2'
    metric: str
    mode: str = "max"  # 'max' | 'min': which way is better
    overrides: Point = dataclasses.field(default_factory=dict)  # e.g. {'train.epochs': 2}
    # The score of a constant prediction (majority class; 0 for a correlation), in the
    # metric's units: shown under the variants, so a cell that learned nothing is seen as such.
    floor: float | None = None

    def __post_init__(self):
        _check_name(self.name, "task")
        _check_spec(self.config, f"task {self.name}")
        if not self.metric.startswith("eval/"):
            raise ConfigError(f"task {self.name}: metric {self.metric!r} must be an eval "
                              "metric, e.g. 'eval/accuracy'")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"task {self.name}: mode={self.mode!r} must be 'min' or 'max'")
        object.__setattr__(self, "overrides", dict(self.overrides))


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """The study's one vocabulary, trained once (`python -m lm tokenizer train`) on the data
    block of `config` (default: the baseline variant's experiment) with `overrides` (data.*
    keys); every pretraining run then reads it (`data.tokenizer.kind/path`)."""

    vocab_size: int = 8192
    model_type: str = "unigram"  # 'unigram' | 'bpe'
    kind: str = "sentencepiece"  # 'sentencepiece' | 'char'
    config: str = ""  # '' = the baseline variant's experiment
    overrides: Point = dataclasses.field(default_factory=dict)  # {'data.<key>': value}

    def __post_init__(self):
        if self.kind not in ("sentencepiece", "char"):
            raise ConfigError(f"study tokenizer kind={self.kind!r}: 'sentencepiece' or 'char'")
        if self.model_type not in ("unigram", "bpe"):
            raise ConfigError(f"study tokenizer model_type={self.model_type!r}: "
                              "'unigram' or 'bpe'")
        if self.config:
            _check_spec(self.config, "study tokenizer")
        bad = sorted(k for k in self.overrides if not k.startswith("data."))
        if bad:
            raise ConfigError(f"study tokenizer overrides: {bad[0]!r} is not a data.* key")
        object.__setattr__(self, "overrides", dict(self.overrides))


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published table in its printed units (GLUE: ×100): paper row -> task -> value, the
    paper's baseline row, and which paper row each of our variants stands for."""

    citation: str
    baseline: str
    rows: dict[str, dict[str, float]]
    row_of: dict[str, str] = dataclasses.field(default_factory=dict)  # variant -> paper row

    def __post_init__(self):
        if self.baseline not in self.rows:
            raise ConfigError(f"reference baseline {self.baseline!r} is not one of its rows "
                              f"{sorted(self.rows)}")


@dataclasses.dataclass(frozen=True)
class Study:
    """Pretraining variants × pretrain_seeds, each finetuned on every task × finetune_seeds.

    `python -m lm study` (lm/runs/study.py) runs it as a graph of ordinary `lm train` runs:
    the shared tokenizer, then every pretraining run (`train.seed` = the pretraining seed),
    then every finetuning run (`init.checkpoint` = its pretraining run, `train.seed` = the
    finetuning seed, `train.best_metric` = the task's metric). The table compares each
    variant with `baseline` (default: the first variant), beside `reference` when given.
    Lists may be given for the tuples; `variants` and `tasks` keep their order in the table.
    """

    variants: tuple[Variant, ...]
    tasks: tuple[Task, ...]
    tokenizer: Tokenizer | None = None  # None: each experiment's own (e.g. a fixed file)
    baseline: str = ""  # a variant name; '' = the first
    pretrain_seeds: tuple[int, ...] = (0,)
    finetune_seeds: tuple[int, ...] = (0,)
    reference: Reference | None = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("variants", tuple(self.variants))
        set_("tasks", tuple(self.tasks))
        for field, kind in (("variants", Variant), ("tasks", Task)):
            values = getattr(self, field)
            if not values:
                raise ConfigError(f"study {field}: give at least one")
            if not all(isinstance(v, kind) for v in values):
                raise ConfigError(f"study {field} must be lm.config.{kind.__name__}s")
            names = [v.name for v in values]
            if len(set(names)) != len(names):
                raise ConfigError(f"study {field}: repeated names {names}")
        if self.tokenizer is not None and not isinstance(self.tokenizer, Tokenizer):
            raise ConfigError("study tokenizer must be an lm.config.Tokenizer or None")
        set_("baseline", self.baseline or self.variants[0].name)
        if self.baseline not in self.variant_names:
            raise ConfigError(f"study baseline {self.baseline!r} is not one of the variants "
                              f"{list(self.variant_names)}")
        for field in ("pretrain_seeds", "finetune_seeds"):
            set_(field, _seeds(getattr(self, field), f"study {field}"))
            if not getattr(self, field):
                raise ConfigError(f"study {field}: give at least one seed")
        if self.reference is not None and not isinstance(self.reference, Reference):
            raise ConfigError("study reference must be an lm.config.Reference or None")

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    def report_dict(self) -> dict[str, Any]:
        """Plain data for `lm.runs.report.Study.from_dict` (the table's layout)."""
        return dict(variants=list(self.variant_names), baseline=self.baseline,
                    tasks=[dict(name=t.name, metric=t.metric, mode=t.mode, floor=t.floor)
                           for t in self.tasks],
                    pretrain_seeds=list(self.pretrain_seeds),
                    finetune_seeds=list(self.finetune_seeds),
                    reference=None if self.reference is None
                    else dataclasses.asdict(self.reference))


# ---------------------------------------------------------------- loading


def split_spec(spec: str) -> tuple[str, str | None]:
    """`experiments/x.py:arg` -> (`experiments/x.py`, `arg`)."""
    path, _, arg = spec.partition(":")
    return path, (arg or None)


def load_module(path: str | pathlib.Path, needs: str | None = "get_config") -> ModuleType:
    """Import an experiment file by path (experiments/ is not a package); it must define the
    function `needs` (a study file defines get_study and need not define get_config; None:
    any experiment or study file)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise MissingFileError(f"experiment file {str(path)!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg} (a syntax error in the "
                          "experiment file)") from e
    except Exception as e:  # noqa: BLE001  (the file's own bug: named in one line)
        raise ConfigError(f"importing the experiment file {path} failed: {type(e).__name__}: "
                          f"{e}") from e
    if needs and not hasattr(module, needs):
        raise ConfigError(f"{path} defines no {needs}(arg)")
    return module


def load(spec: str, overrides: dict[str, str] | None = None) -> ConfigDict:
    """`path/to/file.py[:arg]` → its `get_config(arg)` with `{dotted key: text}` applied.

    The overrides go into the freshly built ConfigDict in place, so the fields an experiment
    derives with FieldReferences (warmup = steps // 20, ...) follow the overridden values.
    """
    path, arg = split_spec(spec)
    config = load_module(path).get_config(arg)
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"{path}: get_config({arg!r}) returned a {type(config).__name__}, "
                          "not an ml_collections.ConfigDict (start from lm.config.base_config())")
    for key, text in (overrides or {}).items():
        override(config, key, text)
    return config


def load_data(spec: str | None, overrides: dict[str, str] | None = None) -> ConfigDict:
    """The data block of an experiment file (or of lm.data.config's defaults without one),
    with `{data.<key>: text}` overrides applied (`lm tokenizer`, `lm data bench`)."""
    overrides = overrides or {}
    other = sorted(k for k in overrides if not k.startswith("data."))
    if other:
        raise ConfigError(f"this command reads only the data block: --config.{other[0]} is "
                          "not a data key (use --config.data.<key>=<value>)")
    if spec:
        return load(spec, overrides).data
    config = ConfigDict({"data": data_config()})
    for key, text in overrides.items():
        override(config, key, text)
    return config.data


def load_sweep(spec: str) -> Sweep:
    """The `Sweep` of the experiment file's `get_sweep(arg)`."""
    path, arg = split_spec(spec)
    module = load_module(path)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"{path} defines no get_sweep(arg); it cannot be swept")
    sweep = module.get_sweep(arg)
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"{path}: get_sweep must return lm.config.Sweep(points, metric, mode)"
                          f", got {type(sweep).__name__}")
    return sweep


def load_study(spec: str) -> Study:
    """The `Study` of the experiment file's `get_study(arg)`."""
    path, arg = split_spec(spec)
    study = load_module(path, needs="get_study").get_study(arg)
    if not isinstance(study, Study):
        raise ConfigError(f"{path}: get_study must return lm.config.Study(variants, tasks, ...)"
                          f", got {type(study).__name__}")
    return study


def study_configs(study: Study) -> dict[str, ConfigDict]:
    """`variant/<name>` and `task/<name>` -> its experiment's config with its overrides (what
    every pretraining / finetuning run of the study starts from, before the graph's flags)."""
    parts = [(f"variant/{v.name}", v) for v in study.variants]
    parts += [(f"task/{t.name}", t) for t in study.tasks]
    return {key: load(part.config, {k: flag_value(v) for k, v in part.overrides.items()})
            for key, part in parts}


def to_dict(config: ConfigDict) -> dict[str, Any]:
    """A plain dict with every FieldReference resolved."""
    return config.to_dict()


# ---------------------------------------------------------------- overrides


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
_KINDS = {bool: "true or false", int: "an integer", float: "a number", tuple: "a tuple",
          list: "a list", str: "text"}


def parse_value(text: str, current: Any, *, name: str) -> Any:
    """Parse command-line `text` to the type of the field's `current` value; `name` (e.g.
    '--config.train.lr') is what an error message calls the field."""
    kind = type(current)
    try:
        if kind is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if kind in (int, float):
            value = ast.literal_eval(text)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            if kind is int and value != int(value):
                raise ValueError
            return kind(value)
        if kind is str:
            return text
        if kind in (tuple, list):
            return kind(_sequence(text))
        if isinstance(current, (dict, ConfigDict)):
            raise ValueError
        return _literal_or_str(text)  # None (or any other) field: a Python literal, else text
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"{name}={text!r}: expected {_KINDS.get(kind, kind.__name__)} like the current "
            f"value {current!r}"
        ) from None


def _sequence(text: str) -> list[Any]:
    """'(mlm,nsp)', '[1, 2]', 'mlm,nsp', '()' or 'mlm' -> a list of literals or strings."""
    text = text.strip()
    try:
        value = ast.literal_eval(text)
        if isinstance(value, (tuple, list)):
            return list(value)
    except (ValueError, SyntaxError):
        pass
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    return [_literal_or_str(t.strip()) for t in text.split(",") if t.strip()]


def _literal_or_str(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted leaf key of `config`."""
    keys = []
    for k, v in config.items():
        if isinstance(v, ConfigDict) and len(v):
            keys.extend(flat_keys(v, f"{prefix}{k}."))
        else:
            keys.append(f"{prefix}{k}")
    return keys


def override(config: ConfigDict, key: str, text: str) -> None:
    """Set dotted `key` from command-line `text`, in place (typed like the current value)."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ConfigDict) else None
        if node is None:
            break
    if not isinstance(node, ConfigDict) or leaf not in node:
        raise ConfigError(_unknown_key_message(config, key))
    if isinstance(node[leaf], ConfigDict) and len(node[leaf]):
        raise ConfigError(f"--config.{key} is a block, not a value: set one of its keys, e.g. "
                          f"--config.{key}.{next(iter(node[leaf]))}=...")
    node[leaf] = parse_value(text, node[leaf], name=f"--config.{key}")


def _unknown_key_message(config: ConfigDict, key: str) -> str:
    valid = flat_keys(config)
    near = difflib.get_close_matches(key, valid, n=5, cutoff=0.6)
    section = [k for k in valid if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
    hint = near or section[:20] or sorted({k.split(".")[0] for k in valid})
    return f"unknown config key {key!r}; did you mean one of: {', '.join(hint)}"


def flag_value(value: Any) -> str:
    """The command-line text that `parse_value` reads back as `value`."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") \
            + ")"
    return repr(value) if isinstance(value, float) else str(value)


def as_flags(point: Point) -> list[str]:
    """`{"train.lr": 5e-05}` -> `["--config.train.lr=5e-05"]`."""
    return [f"--config.{key}={flag_value(value)}" for key, value in point.items()]


def split_overrides(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(other args, {dotted key: text}): `--config.<key>=<value>` or `--config.<key> <value>`."""
    rest, overrides, i = [], {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            rest.append(arg)
            i += 1
            continue
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
            value, i = args[i + 1], i + 1
        overrides[key] = value
        i += 1
    return rest, overrides
