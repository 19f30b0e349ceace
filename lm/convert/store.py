"""A converted checkpoint on disk: `config.json` (the ModelConfig) + `params.safetensors`,
with the Hugging Face directory's tokenizer files and its own config as `hf_config.json`
(label names, special token ids) copied beside them."""

import dataclasses
import json
import pathlib
import shutil
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lm.convert.hf import flatten, scanned, unflatten
from lm.errors import MissingFileError, UserError
from lm.models import ModelConfig, build
from lm.nn.transformer import unstack_layers

SEP = "/"  # joins a parameter path into one safetensors key: 'decoder/layers/attn/query/kernel'


# The tokenizer files of a `save_pretrained` directory (GPT-2, BERT, T5 and their kin).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")
HF_CONFIG = "hf_config.json"  # the HF directory's config.json, kept for what lm's lacks


def save_converted(directory: str | pathlib.Path, cfg: ModelConfig, params: dict,
                   hf_dir: str | pathlib.Path | None = None) -> list[str]:
    """Writes `cfg` as config.json and `params` (float32) as params.safetensors; with
    `hf_dir`, copies its tokenizer files and its config.json (as hf_config.json) beside them.
    Returns the names of the tokenizer files copied."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    flat = {SEP.join(path): np.asarray(x, np.float32) for path, x in flatten(params).items()}
    save_file(flat, directory / "params.safetensors")
    if hf_dir is None:
        return []
    hf_dir = pathlib.Path(hf_dir)
    shutil.copyfile(hf_dir / "config.json", directory / HF_CONFIG)
    copied = [name for name in TOKENIZER_FILES if (hf_dir / name).is_file()]
    for name in copied:
        shutil.copyfile(hf_dir / name, directory / name)
    return copied


def is_converted(directory: str | pathlib.Path) -> bool:
    """Whether `directory` was written by `save_converted` (lm's config.json, not HF's)."""
    directory = pathlib.Path(directory)
    if not (directory / "params.safetensors").is_file():
        return False
    try:
        return "family" in json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False


def hf_config(directory: str | pathlib.Path) -> dict:
    """The Hugging Face config of an HF directory or of one `lm convert` wrote ({} if none)."""
    directory = pathlib.Path(directory)
    path = directory / (HF_CONFIG if is_converted(directory) else "config.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def load_converted(directory: str | pathlib.Path, **model_overrides: Any
                   ) -> tuple[nn.Module, dict]:
    """`(model, params)` from a directory written by `save_converted`. `model_overrides`
    set ModelConfig fields that leave the parameters alone (dtype, attention_impl,
    scan_layers...)."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    directory = pathlib.Path(directory)
    for name in ("config.json", "params.safetensors"):
        if not (directory / name).is_file():
            raise MissingFileError(f"{str(directory / name)!r} is missing: not a directory "
                                    "written by `python -m lm convert`")
    stored = json.loads((directory / "config.json").read_text())
    unknown = model_overrides.keys() - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise UserError(f"unknown ModelConfig fields in overrides: {sorted(unknown)}")
    cfg = ModelConfig(**(stored | model_overrides))
    flat = load_file(directory / "params.safetensors")
    params = unflatten({tuple(k.split(SEP)): v for k, v in flat.items()})
    if cfg.scan_layers != stored["scan_layers"]:  # the other layer layout
        relayout = scanned if cfg.scan_layers else (
            lambda sub: unstack_layers(sub) if isinstance(sub, dict) and "layers" in sub else sub)
        params = {name: relayout(sub) for name, sub in params.items()}
    return build(cfg), jax.tree.map(jax.numpy.asarray, params)
