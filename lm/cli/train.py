"""`python -m lm train`: train (or resume) an experiment in a workdir.

    python -m lm train --config experiments/<file>.py[:<arg>] --workdir DIR \\
        [--quiet] [--allow_config_change] [--restart] [--config.<dotted.key>=<value> ...]

Exit status: 0 when the run finished, 75 when SIGTERM/SIGINT stopped it after saving (rerun
the same command to resume), 1 with a one-line message on bad input.
"""

import sys

from lm import config as config_lib
from lm.cli import common


def main(argv: list[str]) -> None:
    """argv[0] is the command name ('train')."""
    p = common.parser("train", __doc__)
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, config.json")
    p.add_argument("--quiet", action="store_true", help="plain log lines, no progress bar")
    p.add_argument("--allow_config_change", action="store_true",
                   help="resume a run with a config that differs from the recorded one "
                   "(the change is logged in config_changes.jsonl with its step)")
    p.add_argument("--restart", action="store_true",
                   help="start the run over: the workdir's records and checkpoints move to "
                   "<workdir>/previous/<time>/ (nothing is deleted)")
    flags, overrides = common.parse(p, argv[1:])
    config = config_lib.load(flags.config, overrides)
    from lm import distributed
    from lm.train import loop, signals  # after parsing: a typo does not wait for jax

    distributed.initialize()  # multi-host: from $LM_* / SLURM / TPU pod; else nothing
    result = loop.train(config, flags.workdir, quiet=flags.quiet,
                        allow_config_change=flags.allow_config_change, restart=flags.restart)
    print({k: round(v, 6) for k, v in result.items()})
    if result.get("preempted"):
        sys.exit(signals.PREEMPTED_EXIT)
