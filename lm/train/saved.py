"""A finished (or running) training run read back from its workdir, for commands that use it.

    run = saved.load("runs/sst2", step="best")    # or "latest", or a step number
    run.model.apply({"params": run.params}, ...); run.tokenizer.encode(...)

The model and tokenizer are built from the run's recorded config.json, the params from the
chosen checkpoint (the best one is the checkpointer's, by the run's train.best_metric).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import ml_collections

from lm import data, models
from lm.nn.config import ModelConfig
from lm.train import checkpoint, pretrained


@dataclasses.dataclass
class SavedRun:
    workdir: pathlib.Path
    config: ml_collections.ConfigDict  # as recorded in config.json
    model_cfg: ModelConfig
    model: Any
    tokenizer: Any
    params: Any
    step: int


def load(workdir: str | pathlib.Path, step: int | str = "best") -> SavedRun:
    """The run in `workdir` at `step` ('best', 'latest' or a number)."""
    config = ml_collections.ConfigDict(pretrained.run_config(workdir))
    model_cfg, params, step = checkpoint.restore_params(str(workdir), step)
    return SavedRun(pathlib.Path(workdir), config, model_cfg, models.build(model_cfg),
                    data.make_tokenizer(config.data), params, step)
