"""A converted checkpoint on disk: `config.json` (the ModelConfig) + `params.safetensors`."""

import dataclasses
import json
import pathlib

import flax.linen as nn
import jax
import numpy as np

from lm.convert.hf import flatten, unflatten
from lm.errors import MissingFileError
from lm.models import ModelConfig, build

SEP = "/"  # joins a parameter path into one safetensors key: 'decoder/layers/attn/query/kernel'


def save_converted(directory: str | pathlib.Path, cfg: ModelConfig, params: dict) -> None:
    """Writes `cfg` as config.json and `params` (float32) as params.safetensors."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    flat = {SEP.join(path): np.asarray(x, np.float32) for path, x in flatten(params).items()}
    save_file(flat, directory / "params.safetensors")


def load_converted(directory: str | pathlib.Path) -> tuple[nn.Module, dict]:
    """`(model, params)` from a directory written by `save_converted`."""
    from safetensors.numpy import load_file  # noqa: PLC0415

    directory = pathlib.Path(directory)
    for name in ("config.json", "params.safetensors"):
        if not (directory / name).is_file():
            raise MissingFileError(f"{str(directory / name)!r} is missing: not a directory "
                                    "written by `python -m lm convert`")
    cfg = ModelConfig(**json.loads((directory / "config.json").read_text()))
    flat = load_file(directory / "params.safetensors")
    params = unflatten({tuple(k.split(SEP)): v for k, v in flat.items()})
    return build(cfg), jax.tree.map(jax.numpy.asarray, params)
