"""`python -m lm study`: an experiment's `get_study(arg)` as a graph of ordinary runs.

    python -m lm study --config experiments/<study>.py:<arg> --workdir DIR \\
        [--print_commands] [--slurm DIR2] [--parallel N] [--summarize] \\
        [--config.<key>=<value> ...]

The shared tokenizer (DIR/tokenizer), every pretraining run (DIR/pretrain/<variant>-s<seed>),
then every finetuning run (DIR/finetune/<variant>-s<seed>/<task>-s<seed>), each an `lm train`
with a DONE marker: running the study again skips finished runs and resumes the others. A
failed run is reported with its workdir and the runs that need it are skipped. The
`--config.<key>=<value>` overrides apply to EVERY pretraining and finetuning run (and their
data.* keys to the tokenizer). The end writes DIR/runs.csv and DIR/results.csv/.md/.png
(lm/runs/study.py, lm/runs/report.py). Exit status 75 when SIGTERM stopped a run (rerun to
resume), 1 when a run failed.
"""

import sys

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("study", __doc__)
    p.add_argument("--workdir", required=True, help="the study's directory")
    p.add_argument("--print_commands", action="store_true",
                   help="print every run's command line in dependency order and exit")
    p.add_argument("--slurm", metavar="DIR2",
                   help="write one sbatch job array per stage and DIR2/submit.sh, and exit")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="with --slurm: an #SBATCH line for every stage, e.g. "
                   "--sbatch=--time=4:00:00 (repeatable)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run up to N independent runs of a stage at once as subprocesses, "
                   "each pinned to 1/N of the cores")
    p.add_argument("--summarize", action="store_true",
                   help="only rewrite runs.csv and results.* from what has finished")
    p.add_argument("--run", metavar="ID",
                   help="run one run of the graph, e.g. pretrain/base-s0 (what each SLURM "
                   "array task and --parallel worker does)")
    args, overrides = common.parse(p, argv[1:])
    from lm.runs import study

    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    if args.print_commands:
        print("\n".join(study.commands(args.config, args.workdir, flags)))
        return
    if args.slurm:
        for path in study.write_slurm(args.config, args.workdir, flags, args.slurm,
                                      args.sbatch):
            print(f"wrote {path}")
        print(f"submit with: bash {args.slurm}/submit.sh")
        return
    if args.run:
        from lm.train.signals import PREEMPTED_EXIT

        if study.run_by_id(args.config, args.workdir, args.run, flags).get("preempted"):
            sys.exit(PREEMPTED_EXIT)
        return
    outcome = None
    if not args.summarize:
        outcome = study.run_study(args.config, args.workdir, flags, parallel=args.parallel)
    study.summarize(args.workdir)
    if outcome is not None and outcome.preempted:
        from lm.train.signals import PREEMPTED_EXIT

        sys.exit(PREEMPTED_EXIT)
    if outcome is not None and outcome.failed:
        sys.exit(f"{len(outcome.failed)} run(s) failed: " + ", ".join(
            f"{run_id} ({workdir})" for run_id, workdir in outcome.failed.items())
            + (f"; {len(outcome.skipped)} skipped because of them" if outcome.skipped else ""))
