"""`python -m lm classify`: label and probabilities from a finetuned classifier.

    python -m lm classify --workdir DIR "This is a great movie!" [--file FILE] [--step best]

DIR is a classification finetuning run (experiments/finetune_glue.py); a tab in a text
separates a sentence pair. Regression tasks (STS-B) print the score.
"""

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("classify", __doc__, config=None)
    common.add_run_source(p, hf=False)
    p.add_argument("text", nargs="*", help="sentences (a tab separates a pair)")
    p.add_argument("--file", default=None, help="sentences, one per line")
    args, overrides = common.parse(p, argv[1:])
    texts = common.lines(args.text, args.file)
    from lm.generation.inference import classify_texts

    for text, (label, scores) in zip(texts, classify_texts(common.saved_run(args, overrides),
                                                           texts)):
        shown = "  ".join(f"{name}={p:.3f}" for name, p in scores.items())
        print(f"{label}\t{shown}\t{text}")
