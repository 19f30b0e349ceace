"""`python -m lm bench`: training throughput of an experiment, on its real data.

    python -m lm bench --config experiments/<file>.py[:<arg>] [--steps 100] \\
        [--config.<dotted.key>=<value> ...]

Runs `steps` training steps in a scratch workdir (no eval, no checkpoint) through the real
loop and prints steps/s, tokens/s and MFU, averaged over the logged windows after the first
(which holds compilation).
"""

import json
import pathlib
import tempfile

import numpy as np

from lm import config as config_lib


def summarize(records: list[dict]) -> dict[str, float]:
    """Mean throughput over every logged window except the first (compilation)."""
    windows = [r for r in records if "train/steps_per_s" in r][1:]
    if not windows:
        raise ValueError("too few logged steps to measure: raise --steps")
    keys = ("train/steps_per_s", "train/tokens_per_s", "train/mfu")
    return {k: float(np.mean([r[k] for r in windows])) for k in keys if k in windows[0]}


def main(argv: list[str]) -> None:
    parser = config_lib.command_parser("python -m lm bench", __doc__)
    parser.add_argument("--steps", type=int, default=100)
    flags, overrides = config_lib.parse_command_line(parser, argv[1:])
    overrides = {**overrides, "train.steps": str(flags.steps), "train.eval_every": "0",
                 "train.log_every": str(max(flags.steps // 10, 1)), "train.epochs": "0",
                 "train.checkpoint_every": str(flags.steps + 1), "train.eval_at_start": "False",
                 "train.eval_steps": "1"}  # the loop's final eval: one batch, not the split
    config = config_lib.load(flags.config, overrides)
    from lm.train.loop import train

    with tempfile.TemporaryDirectory() as workdir:
        train(config, workdir, quiet=True)
        lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
    result = summarize([json.loads(line) for line in lines])
    print(f"{flags.config}: " + "  ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in result.items()))
