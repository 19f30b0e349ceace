"""`python -m lm predict`: a GLUE prediction file from a finetuning run.

    python -m lm predict --workdir DIR [--split validation] [--out FILE] [--step best]

writes `index<TAB>prediction` rows with the label names the GLUE server expects, predicted
with the trainer's own eval step from the run's best checkpoint (by train.best_metric). A
labelled split is scored too. (GLUE's test splits, which the server scores, come with the
full TFDS dataset; `lm data prepare` fetches train and validation only.)
"""

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("predict", __doc__, config=None)
    common.add_run_source(p, hf=False)
    p.add_argument("--split", default="validation", help="a split of the run's data")
    p.add_argument("--out", default=None, help="default: DIR/<split>_<GLUE name>.tsv")
    args, overrides = common.parse(p, argv[1:])
    from lm.eval import predictions

    path, scores = predictions.predict(args.workdir, args.split, args.out,
                                       common.step_arg(args.step), overrides)
    print(f"wrote {path}: {common.format_metrics(scores)}")
