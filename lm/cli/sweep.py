"""`python -m lm sweep`: run every point of an experiment's `get_sweep(arg)`, then tabulate.

    python -m lm sweep --config experiments/finetune_glue.py:sst2 --workdir DIR \\
        [--print_commands] [--summarize] [--config.<key>=<value> ...]

Each point runs in DIR/<point-name>/ as `python -m lm train` would run it; a finished point
(its DONE marker) is skipped when the sweep runs again, an interrupted one resumes. The end
writes DIR/results.csv, results.md and results.png (lm/runs/sweep.py). Exit status 75 when
SIGTERM stopped a point (rerun to resume).
"""

import sys

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("sweep", __doc__)
    p.add_argument("--workdir", required=True, help="one subdirectory per point")
    p.add_argument("--print_commands", action="store_true",
                   help="print one `python -m lm train` command per point and exit")
    p.add_argument("--summarize", action="store_true",
                   help="only rebuild results.csv/.md/.png from DIR")
    args, overrides = common.parse(p, argv[1:])
    from lm.runs import sweep

    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    if args.print_commands:
        print("\n".join(sweep.commands(args.config, args.workdir, flags)))
        return
    if not args.summarize and sweep.run_points(args.config, args.workdir, flags) is None:
        from lm.train.signals import PREEMPTED_EXIT

        sys.exit(PREEMPTED_EXIT)
    sweep.summarize(args.workdir)
