"""The `train` command:

    python -m lm train --config experiments/<file>.py[:<arg>] --workdir DIR \\
        [--quiet] [--allow_config_change] [--config.<dotted.key>=<value> ...]

Exit status: 0 when the run finished, 75 when SIGTERM/SIGINT stopped it after saving (rerun
the same command to resume), 1 with a one-line message on bad input.
"""

import sys

from lm import config as config_lib

USAGE = __doc__.split("\n\n", 1)[1].strip()


def main(argv: list[str]) -> None:
    """argv[0] is the command name ('train')."""
    parser = config_lib.command_parser("python -m lm train", USAGE)
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics, config.json")
    parser.add_argument("--quiet", action="store_true", help="plain log lines, no progress bar")
    parser.add_argument("--allow_config_change", action="store_true",
                        help="resume a run with a config that differs from the recorded one "
                        "(the change is logged in config_changes.jsonl with its step)")
    flags, overrides = config_lib.parse_command_line(parser, argv[1:])
    config = config_lib.load(flags.config, overrides)
    from lm import distributed
    from lm.train import checkpoint, loop  # after parsing: a typo does not wait for jax

    distributed.initialize()  # multi-host: from $LM_* / SLURM / TPU pod; else nothing
    result = loop.train(config, flags.workdir, quiet=flags.quiet,
                        allow_config_change=flags.allow_config_change)
    print({k: round(v, 6) for k, v in result.items()})
    if result.get("preempted"):
        sys.exit(checkpoint.PREEMPTED_EXIT)
