"""Training: `train(config, workdir)` runs an experiment config (lm/train/loop.py)."""

from lm.train.loop import train
from lm.train.state import TrainState

__all__ = ["TrainState", "train"]
