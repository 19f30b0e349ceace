"""`python -m lm classify`: label and probabilities from a finetuned classifier.

    python -m lm classify (--workdir DIR [--step best] | --hf DIR) "This is a great movie!" \\
        [--file FILE]

--workdir: a classification finetuning run (experiments/finetune_glue.py), its texts encoded
as in training. --hf: a Hugging Face BertForSequenceClassification or
GPT2ForSequenceClassification directory (or one `lm convert` wrote from it), labels from its
config.json's id2label. A tab in a text separates a sentence pair. Regression tasks (STS-B,
num_labels=1) print the score.
"""

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("classify", __doc__, config=None)
    common.add_run_source(p)
    p.add_argument("text", nargs="*", help="sentences (a tab separates a pair)")
    p.add_argument("--file", default=None, help="sentences, one per line")
    args, overrides = common.parse(p, argv[1:])
    texts = common.lines(args.text, args.file)
    from lm.eval import predictions
    from lm.generation import inference

    if args.hf:
        model, params, tokenizer, _ = common.load_model(args, overrides)
        results = predictions.classify(model, params, tokenizer, texts,
                                     labels=inference.hf_labels(args.hf))
    else:
        results = predictions.classify_texts(common.saved_run(args, overrides), texts)
    for text, (label, scores) in zip(texts, results):
        shown = "  ".join(f"{name}={p:.3f}" for name, p in scores.items())
        print(f"{label}\t{shown}\t{text}")
