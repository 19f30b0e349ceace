"""A run's parameters for reading (lm eval, sample, predict, classify; finetuning from a
run): the model config and params of one checkpoint; its optimizer state is never read."""

import os
from typing import Any

from etils import epath

from lm.errors import MissingFileError, UserError
from lm.train import checkpoint
from lm.train.checkpoint import Checkpointer
from lm.train.writer import read_config_json


def restore_params(workdir: str, step: int | str | None = None) -> tuple[Any, dict, int]:
    """(model config, params, step) of a run's checkpoint: `step` = an int, 'latest' (None)
    or 'best' (by the run's train.best_metric). Only the params are read: damage elsewhere
    in the checkpoint does not matter; damage in them is a one-line UserError naming it."""
    from lm.nn.config import ModelConfig

    if not (epath.Path(os.path.abspath(workdir)) / "checkpoints").exists():
        raise MissingFileError(f"{workdir} holds no checkpoint (expected {workdir}/checkpoints/"
                               "<step>/, written by `python -m lm train`)")
    ckpt = Checkpointer(workdir, read_only=True, **_best_of(workdir))
    try:
        if step == "best":  # a run without a best metric (or none scored yet): its latest
            step = ckpt.best_step() if ckpt.best_metric else None
        if step in (None, "latest"):
            step = ckpt.latest_step()
        if step is None or int(step) not in ckpt.all_steps():
            raise MissingFileError(f"{workdir} has no checkpoint at step {step}; it has "
                                   f"{ckpt.all_steps()}")
        try:
            state, _, extra = ckpt.restore(None, int(step), data=False, params_only=True)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  (any read failure means damage)
            raise UserError(f"checkpoint step {step} in {ckpt.directory} is damaged "
                            f"({checkpoint.short_error(e)}): read another step (--step), or "
                            "rerun `lm train`, which sets it aside") from None
    finally:
        ckpt.close()
    model = extra["config"].get("model")
    if not model:
        raise UserError(f"the checkpoint in {workdir} saved no config.model")
    return ModelConfig(**model), state["params"], int(step)


def _best_of(workdir: str) -> dict[str, str]:
    """The run's best-checkpoint settings, from its config.json (empty when it has none)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    train = read_config_json(path).get("train", {})
    return {"best_metric": train.get("best_metric") or None,
            "best_mode": train.get("best_mode", "min")}
