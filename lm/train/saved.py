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

from lm import config as config_lib
from lm.errors import UserError
from lm.train import pretrained, restore, setup


@dataclasses.dataclass
class SavedRun:
    workdir: pathlib.Path
    setup: setup.Setup  # from the recorded config.json, on this process's devices
    params: Any
    step: int

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.setup.config

    @property
    def model_cfg(self):
        return self.setup.model_cfg

    @property
    def model(self):
        return self.setup.model

    @property
    def tokenizer(self):
        return self.setup.tokenizer


def load(workdir: str | pathlib.Path, step: int | str = "best",
         overrides: dict[str, str] | None = None) -> SavedRun:
    """The run in `workdir` at `step` ('best', 'latest' or a number), with command-line
    `{dotted key: text}` overrides of its recorded config (lm.config's parser: e.g.
    `data.eval_split`, or a model field that does not change the parameters, such as
    `model.attention_impl`)."""
    config = ml_collections.ConfigDict(pretrained.run_config(workdir))
    for key, text in (overrides or {}).items():
        config_lib.override(config, key, text)
    model_cfg, params, step = restore.restore_params(str(workdir), step)
    changed = {k.split(".", 1)[1]: config.model[k.split(".", 1)[1]]
               for k in overrides or {} if k.startswith("model.")}
    fixed = sorted(set(changed) - pretrained.FREE_FIELDS)
    if fixed:
        raise UserError(f"model fields {fixed} are fixed by the checkpoint's parameters; only "
                        f"{sorted(pretrained.FREE_FIELDS)} can change when reading a run")
    parts = setup.build(config, mesh=setup.reader_mesh(), model_cfg=model_cfg.replace(**changed))
    return SavedRun(pathlib.Path(workdir), parts, params, step)
