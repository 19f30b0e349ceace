"""Experiment configs: defaults, loading `experiments/<file>.py[:<arg>]`, command-line overrides.

An experiment file defines `get_config(arg: str | None) -> ConfigDict` with the top-level
fields `model`, `data`, `train`, `mesh`, `init`. Overrides are dotted keys
(`train.lr=3e-4`): an unknown key is an error listing the valid keys near it, and a value is
parsed to the type of the field it replaces (an error names the key when it does not parse).
"""

import ast
import copy
import difflib
import importlib.util
import pathlib
from types import ModuleType
from typing import Any

import ml_collections


def default_train_config() -> ml_collections.ConfigDict:
    """Every `train` field with its default (one place; experiment files set a few)."""
    return ml_collections.ConfigDict(dict(
        steps=1000,
        batch_size=32,  # global rows per optimizer step (all hosts, all micro-batches)
        grad_accum_steps=1,  # micro-batches per step; batch_size must be a multiple
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
        train_split="train",
        eval_split="validation",
        checkpoint_every=500,
        keep_checkpoints=2,
        best_metric="",  # e.g. 'eval/loss': also keep the best checkpoint by it
        best_mode="min",  # 'min' | 'max'
        # (start, stop): trace steps start..stop-1 with jax.profiler and print their top ops
        # (lm/profiling.py); () = off. The trace goes to profile_dir ('' = <workdir>/profile).
        profile_steps=(),
        profile_dir="",
    ))


def default_mesh_config() -> ml_collections.ConfigDict:
    """Device mesh shape (-1 = all remaining devices)."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def default_init_config() -> ml_collections.ConfigDict:
    """Where initial params come from when not random (finetuning)."""
    return ml_collections.ConfigDict(dict(
        checkpoint="",  # a workdir of this project: its latest params
        hf_dir="",  # a Hugging Face checkpoint directory (lm.convert.from_hf)
    ))


def base_config() -> ml_collections.ConfigDict:
    """Top level with default `train`, `mesh`, `init`; `model` and `data` are set by the file."""
    return ml_collections.ConfigDict(dict(
        model={}, data={}, train=default_train_config(), mesh=default_mesh_config(),
        init=default_init_config(),
    ))


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse an experiment's `arg`, e.g. 'tiny,nsp=False' with defaults size='base', nsp=True.

    A bare value sets the first default (the size); `key=value` sets that key, typed like its
    default. Unknown keys are errors.
    """
    result = ml_collections.ConfigDict(defaults)
    first = next(iter(defaults), None)
    for part in filter(None, (arg or "").split(",")):
        key, sep, text = part.partition("=")
        key, text = (key.strip(), text.strip()) if sep else (first, part.strip())
        if key not in defaults:
            raise ValueError(
                f"unknown experiment arg {key!r} in {arg!r}; valid: {sorted(defaults)}")
        result[key] = parse_value(text, defaults[key], name=f"experiment arg {key}")
    return result


def pick(table: dict[str, Any], name: str, what: str = "size") -> Any:
    """`table[name]`, or an error that lists the valid names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def load_module(path: str | pathlib.Path) -> ModuleType:
    """Import an experiment file by path (experiments/ is not a package)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg)")
    return module


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py[:arg]` → the file's `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    return load_module(path).get_config(arg or None)


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


_KINDS = {bool: "true or false", int: "an integer", float: "a number", tuple: "a tuple",
          list: "a list"}


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
            value = ast.literal_eval(text) if text.startswith(("(", "[")) else tuple(
                _literal_or_str(t) for t in text.split(",") if t)
            return kind(value if isinstance(value, (tuple, list)) else (value,))
        return _literal_or_str(text)  # None (or any other) field: a Python literal, else text
    except (ValueError, SyntaxError):
        raise ValueError(
            f"{name}={text!r}: expected {_KINDS.get(kind, kind.__name__)} like the current "
            f"value {current!r}"
        ) from None


def _literal_or_str(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted leaf key of `config`."""
    keys = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict) and len(v):
            keys.extend(flat_keys(v, f"{prefix}{k}."))
        else:
            keys.append(f"{prefix}{k}")
    return keys


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set dotted `key` from command-line `text`, in place (typed like the current value)."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if node is None:
            break
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(_unknown_key_message(config, key))
    node[leaf] = parse_value(text, node[leaf], name=f"--config.{key}")


def _unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str:
    valid = flat_keys(config)
    near = difflib.get_close_matches(key, valid, n=5, cutoff=0.6)
    section = [k for k in valid if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
    hint = near or section[:20] or sorted({k.split(".")[0] for k in valid})
    return f"unknown config key {key!r}; did you mean one of: {', '.join(hint)}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]
                    ) -> ml_collections.ConfigDict:
    """Apply `{dotted key: text}` to a copy of `config`.

    A deep copy keeps the FieldReferences an experiment may derive fields with (e.g. steps =
    epochs × steps per epoch), so they follow the overridden values.
    """
    config = copy.deepcopy(config)
    for key, text in overrides.items():
        override(config, key, text)
    return config
