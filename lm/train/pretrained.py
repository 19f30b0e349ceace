"""Starting from a pretrained model: a run of this project or a Hugging Face directory.

The trainer calls these at start-up, before anything is written to the workdir:

- `resolve(config)`: with `init.checkpoint` (a workdir of this project) or `init.hf_dir` (a
  Hugging Face directory, or 'minilm'), the model's architecture comes from that source and
  `config.model` keeps only its free fields (dropout, dtype, heads, num_labels...); when
  `data.tokenizer.path` is empty the tokenizer is the source's too (a run's char vocabulary
  is saved to its workdir as chars.json for that). A BERT source gives a BERT classifier, a
  GPT one a GPT classifier (GPT2ForSequenceClassification): the family is the source's.
  `train.epochs > 0` sets `train.steps_per_epoch` from the train split's size and
  `train.steps` = epochs × that, and every field an experiment derives from them (warmup,
  eval cadence...) follows.
- `init_params(config, fresh)`: the fresh params with every leaf the source has; subtrees it
  lacks (a new classifier) keep their fresh initialisation, its extra ones (MLM/NSP heads)
  are dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import traverse_util
from flax.core import meta

from lm.errors import MissingFileError, UserError
from lm.nn.config import ModelConfig
from lm.train.writer import read_config_json

# ModelConfig fields that the experiment sets even when the architecture comes from a source:
# they change neither the pretrained parameters' shapes nor what they compute.
FREE_FIELDS = frozenset({
    "num_labels", "heads", "dropout_rate", "attention_dropout_rate", "dtype",
    "attention_impl", "scan_layers", "scan_unroll", "remat_policy", "init_std", "init",
    "kernels",
})
# Parameter subtrees that a finetuned model initialises anew.
FRESH = frozenset({"classifier"})


def hf_dir(name: str) -> pathlib.Path:
    """A Hugging Face directory by path, or 'minilm': all-MiniLM-L6-v2 from its pip package."""
    if name == "minilm":
        from lm.convert import minilm_dir

        return minilm_dir()
    path = pathlib.Path(name)
    if not path.is_dir():
        raise MissingFileError(f"init.hf_dir={name!r} is not a directory")
    return path


def run_config(workdir: str | pathlib.Path) -> dict[str, Any]:
    """The resolved config a run of this project recorded (its config.json)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found: {workdir} is not a workdir of "
                               "`python -m lm train`")
    return read_config_json(path)



def _init_source(init_cfg: Mapping) -> tuple[str, str]:
    """(init.checkpoint, init.hf_dir), at most one of them set."""
    checkpoint, hf = init_cfg.get("checkpoint") or "", init_cfg.get("hf_dir") or ""
    if checkpoint and hf:
        raise UserError("set one of init.checkpoint (a workdir of this project) and "
                        f"init.hf_dir, not both; got checkpoint={checkpoint!r}, hf_dir={hf!r}")
    return checkpoint, hf


def _source(init_cfg: Mapping) -> tuple[ModelConfig, dict[str, Any], str] | None:
    """(architecture, tokenizer block, description) of the init source; None without one."""
    checkpoint, hf = _init_source(init_cfg)
    if hf:
        from lm.convert import hf as convert

        directory = hf_dir(hf)
        model = convert.config_from_hf(convert.read_config(directory))
        # tokenizer.json (any HF tokenizer), else T5's spiece.model (lm.data.hf_tokenizer)
        spiece = directory / "spiece.model"
        tokenizer = {"kind": "sentencepiece", "path": str(spiece)} if spiece.is_file() and not (
            directory / "tokenizer.json").is_file() else {"kind": "hf", "path": str(directory)}
        return model, tokenizer, f"HF directory {directory}"
    if checkpoint:
        saved = run_config(checkpoint)
        return ModelConfig(**saved["model"]), run_tokenizer(checkpoint, saved["data"]), \
            f"run {checkpoint}"
    return None


def run_tokenizer(workdir: str | pathlib.Path, data_cfg: Mapping) -> dict[str, Any]:
    """The tokenizer block of a run, usable with other data. A char vocabulary that the run
    read from its text (path '') is written once to `workdir/chars.json`: the finetuning data
    is another text, with other characters."""
    tokenizer = dict(data_cfg["tokenizer"])
    if tokenizer["kind"] == "char" and not tokenizer["path"]:
        path = pathlib.Path(workdir) / "chars.json"
        if not path.is_file():
            from lm.data import sources, tokenizers

            docs = sources.text_source(ml_collections.ConfigDict(data_cfg),
                                       tokenizer["vocab_split"])
            partial = path.with_name(f"{path.name}.{os.getpid()}")
            tokenizers.save_chars(docs, str(partial))
            os.replace(partial, path)  # every host may write it: each write is whole
        tokenizer["path"] = str(path)
    return tokenizer


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config the run trains: init source and epochs resolved (see the module docstring).

    `config` may hold FieldReferences; the result is a plain copy with them resolved.
    """
    config = copy.deepcopy(config)  # keeps FieldReferences: train.steps set below propagates
    source = _source(config.init)
    if source:
        model, tokenizer, where = source
        free = {k: v for k, v in config.model.items() if k in FREE_FIELDS}
        config.model = {**dataclasses.asdict(model), **free}
        if not config.data.tokenizer.path:
            config.data.tokenizer.update(kind=tokenizer["kind"], path=tokenizer["path"],
                                         vocab_multiple=1)
        print(f"model architecture from {where}")
    if config.data.tokenizer.path == "minilm":  # MiniLM's vocabulary (a fresh BERT's default)
        config.data.tokenizer.path = str(hf_dir("minilm"))
    if config.train.epochs > 0:
        config.train.steps_per_epoch = steps_per_epoch(config)
        config.train.steps = config.train.epochs * config.train.steps_per_epoch
    return ml_collections.ConfigDict(config.to_dict())


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """⌈examples of the train split / batch_size⌉ (classification and seq2seq know their size)."""
    from lm.data import pipeline

    examples = pipeline.num_examples(config.data, config.data.train_split)
    if not examples:
        raise UserError(f"data.train_split={config.data.train_split!r} holds no examples")
    return math.ceil(examples / config.train.batch_size)


# ---------------------------------------------------------------- parameters


def check_compatible(pretrained: ModelConfig, finetuned: ModelConfig, source: str) -> None:
    """Raises if the two configs differ in any field that shapes the pretrained parameters."""
    differ = {f.name: (getattr(pretrained, f.name), getattr(finetuned, f.name))
              for f in dataclasses.fields(ModelConfig)
              if f.name not in FREE_FIELDS
              and getattr(pretrained, f.name) != getattr(finetuned, f.name)}
    if differ:
        lines = "\n".join(f"  model.{k}: checkpoint {a!r}, config {b!r}" for k, (a, b)
                          in differ.items())
        raise UserError(f"the checkpoint {source} does not match config.model:\n{lines}\n"
                        "set config.init so that the trainer takes the architecture from it, "
                        "or remove the overrides that change it")


def _layer_layout(params: dict, scan: bool) -> dict:
    """Each stack (`encoder`) in the scanned (`layers`) or unrolled (`layers_i`) layout.

    A checkpoint saved with the other `scan_layers` setting still initialises the model.
    """
    from lm.nn.transformer import stack_layers, unstack_layers

    def convert(sub: Any) -> Any:
        if not isinstance(sub, dict):
            return sub
        if scan and "layers_0" in sub:
            return stack_layers(sub, sum(k.startswith("layers_") for k in sub))
        if not scan and "layers" in sub:
            return unstack_layers(sub)
        return sub

    return {name: convert(sub) for name, sub in params.items()}


def merge_pretrained(fresh: Mapping, pretrained: Mapping, source: str) -> dict:
    """`fresh` with every leaf outside FRESH replaced by the pretrained one.

    Leaves only in `pretrained` (MLM/NSP heads) are dropped. A leaf of `fresh` that
    `pretrained` lacks, or has with another shape, is an error naming them all.
    Boxed (logically partitioned) leaves of `fresh` stay boxed.
    """
    fresh_flat = traverse_util.flatten_dict(fresh)
    pre_flat = traverse_util.flatten_dict(meta.unbox(pretrained))
    missing, wrong_shape, merged = [], [], {}
    for path, leaf in fresh_flat.items():
        if path[0] in FRESH:
            merged[path] = leaf
            continue
        value = meta.unbox(leaf)
        if path not in pre_flat:
            missing.append("/".join(path))
        elif np.shape(pre_flat[path]) != np.shape(value):
            wrong_shape.append(f"{'/'.join(path)}: {np.shape(pre_flat[path])} vs "
                               f"{np.shape(value)}")
        else:
            new = np.asarray(pre_flat[path], dtype=np.asarray(value).dtype)
            merged[path] = leaf.replace_boxed(new) if isinstance(leaf, meta.AxisMetadata) \
                else new
    if missing or wrong_shape:
        raise UserError(f"cannot initialise from {source}:\n"
                        f"  missing in the checkpoint ({len(missing)}): {missing[:10]}\n"
                        f"  shape (checkpoint vs model) ({len(wrong_shape)}): "
                        f"{wrong_shape[:10]}")
    return traverse_util.unflatten_dict(merged)


def load_params(init_cfg: Mapping, model_cfg: ModelConfig) -> tuple[dict, str]:
    """(params, description) of the source named by `init_cfg`, for a model of `model_cfg`."""
    checkpoint, hf = _init_source(init_cfg)
    if hf:
        from lm.convert import from_hf

        model, params = from_hf(hf_dir(hf), scan_layers=model_cfg.scan_layers)
        source = f"HF directory {hf}"
        check_compatible(model.cfg, model_cfg, source)
        return params, source
    from lm.train import restore

    pre_cfg, params, step = restore.restore_params(checkpoint)
    source = f"checkpoint {checkpoint} (step {step})"
    check_compatible(pre_cfg, model_cfg, source)
    return _layer_layout(params, model_cfg.scan_layers), source


def init_params(config: ml_collections.ConfigDict, fresh_params: Mapping) -> dict:
    """`fresh_params` initialised from `config.init` (if it names a source)."""
    if not (config.init.checkpoint or config.init.hf_dir):
        return dict(fresh_params)
    pretrained, source = load_params(config.init, ModelConfig(**config.model))
    return merge_pretrained(fresh_params, pretrained, source)
