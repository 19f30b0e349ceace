"""The `train` command:

    python -m lm train --config experiments/<file>.py[:<arg>] --workdir DIR \\
        [--quiet] [--config.<dotted.key>=<value> ...]
"""

import argparse
import sys

from lm.train import config as config_lib

USAGE = __doc__.split("\n\n", 1)[1].strip()


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """(flags, {dotted key: text}) from argv (without the command name)."""
    parser = argparse.ArgumentParser(prog="python -m lm train", allow_abbrev=False,
                                     description=USAGE)
    parser.add_argument("--config", required=True, help="experiments/<file>.py[:<arg>]")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics, config.json")
    parser.add_argument("--quiet", action="store_true", help="plain log lines, no progress bar")
    flags, rest = parser.parse_known_args(argv)
    overrides, i = {}, 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            parser.error(f"unrecognized argument {arg!r}; overrides look like "
                         "--config.train.lr=3e-4")
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:  # --config.train.lr 3e-4
            if i + 1 >= len(rest):
                parser.error(f"{arg} needs a value")
            value, i = rest[i + 1], i + 1
        overrides[key] = value
        i += 1
    return flags, overrides


def main(argv: list[str]) -> None:
    """argv[0] is the command name ('train')."""
    flags, overrides = parse(argv[1:])
    try:
        config = config_lib.apply_overrides(config_lib.load_experiment(flags.config), overrides)
    except (KeyError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    from lm import distributed
    from lm.train import train  # after parsing: a typo should not wait for jax to import

    try:
        distributed.initialize()  # multi-host: from $LM_* / SLURM / TPU pod; else nothing
    except distributed.SetupError as e:
        sys.exit(f"error: {e}")
    result = train(config, flags.workdir, quiet=flags.quiet)
    print({k: round(v, 6) for k, v in result.items()})
