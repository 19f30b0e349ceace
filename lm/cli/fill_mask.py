"""`python -m lm fill_mask`: the most probable tokens for each [MASK] (BERT's MLM head).

    python -m lm fill_mask (--workdir DIR | --hf DIR) "The capital of France is [MASK]." \\
        [--file FILE] [--top_k 5]
"""

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("fill_mask", __doc__, config=None)
    common.add_run_source(p)
    p.add_argument("text", nargs="*", help="sentences with [MASK]")
    p.add_argument("--file", default=None, help="sentences, one per line")
    p.add_argument("--top_k", type=int, default=5)
    args, overrides = common.parse(p, argv[1:])
    texts = common.lines(args.text, args.file)
    model, params, tokenizer, _ = common.load_model(args, overrides)
    from lm.generation import inference

    for text in texts:
        print(text)
        for k, predictions in enumerate(inference.fill_mask(model, params, tokenizer, text,
                                                            args.top_k)):
            # A sentencepiece word start alone ("▁") decodes to '': show the piece instead.
            shown = "  ".join(f"{token or '▁'!r} {prob:.3f}" for token, prob, _ in predictions)
            print(f"  mask {k + 1}: {shown}")
