"""`python -m lm bench`: training throughput of an experiment, on its real data.

    python -m lm bench --config experiments/<file>.py[:<arg>] [--steps 100] \\
        [--profile DIR [--profile_steps 10]] [--config.<dotted.key>=<value> ...]

Runs `steps` training steps in a scratch workdir (no eval, no checkpoint) through the real
loop and prints steps/s, tokens/s and MFU, averaged over the logged windows after the first
(which holds compilation). `--profile DIR` also traces `profile_steps` steps from the middle
of the run into DIR (jax.profiler; open it in TensorBoard or ui.perfetto.dev) and prints the
top XLA ops by time and their share of all ops (lm/profiling.py).
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

from lm.train import cli
from lm.train import config as config_lib


def summarize(records: list[dict]) -> dict[str, float]:
    """Mean throughput over every logged window except the first (compilation)."""
    windows = [r for r in records if "train/steps_per_s" in r][1:]
    if not windows:
        raise ValueError("too few logged steps to measure: raise --steps")
    keys = ("train/steps_per_s", "train/tokens_per_s", "train/mfu")
    return {k: float(np.mean([r[k] for r in windows])) for k in keys if k in windows[0]}


def profile_overrides(flags: argparse.Namespace) -> dict[str, str]:
    """Trace `profile_steps` steps from the middle of the run (past compilation)."""
    if not flags.profile:
        return {}
    start = max(flags.steps // 2, 2)
    if start + flags.profile_steps > flags.steps + 1:
        sys.exit(f"error: --steps {flags.steps} is too few to trace {flags.profile_steps} steps "
                 f"from step {start}: raise --steps")
    return {"train.profile_steps": f"{start},{start + flags.profile_steps}",
            "train.profile_dir": str(pathlib.Path(flags.profile).absolute())}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lm bench", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--profile", default="", metavar="DIR", help="write a trace here")
    parser.add_argument("--profile_steps", type=int, default=10, help="steps to trace")
    flags, rest = parser.parse_known_args(argv[1:])
    _, overrides = cli.parse(["--config", flags.config, "--workdir", "-", *rest])
    overrides = {**overrides, "train.steps": str(flags.steps), "train.eval_every": "0",
                 "train.log_every": str(max(flags.steps // 10, 1)),
                 "train.checkpoint_every": str(flags.steps + 1), "train.eval_at_start": "False",
                 **profile_overrides(flags)}
    try:
        config = config_lib.apply_overrides(config_lib.load_experiment(flags.config), overrides)
    except (KeyError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    config.train.eval_steps = 1  # the loop's final eval: one batch, not the whole split
    from lm.train import train

    with tempfile.TemporaryDirectory() as workdir:
        train(config, workdir, quiet=True)
        lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
    result = summarize([json.loads(line) for line in lines])
    print_peak(config.model.get("dtype", "float32"))
    print(f"{flags.config}: " + "  ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in result.items()))


def print_peak(dtype: str) -> None:
    """The peak FLOP/s that MFU divides by, and where it comes from."""
    import jax

    from lm.train import mfu

    peak, source = mfu.peak_flops_and_source(jax.devices()[0], dtype)
    print(f"peak: {peak:.4g} FLOP/s per device, {source}" if peak else f"peak: {source}")
