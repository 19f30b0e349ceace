"""`python -m lm tokenizer train`: a sentencepiece (or char) vocabulary from a data source.

    python -m lm tokenizer train --output PREFIX [--vocab_size 32000] [--model_type unigram] \\
        [--config experiments/<file>.py[:<arg>]] [--config.data.<key>=<value> ...]

The data block is an experiment's (`--config`) or lm.data.config's defaults, with
`--config.data.<key>=<value>` overrides, e.g.
    python -m lm tokenizer train --output /tmp/wt2_32k --vocab_size 32000 --model_type bpe \\
        --config.data.source=text --config.data.files.train=wikitext-2/train.txt \\
        --config.data.doc_separator=wikitext
"""

import os
import time

from lm.cli import common


def main(argv: list[str]) -> None:
    """argv[0] is 'tokenizer', argv[1] the subcommand."""
    if argv[1:2] != ["train"]:
        raise SystemExit("usage: python -m lm tokenizer train --output PREFIX ... "
                         "(python -m lm tokenizer train --help)")
    p = common.parser("tokenizer train", __doc__, config=False)
    p.add_argument("--output", required=True, help="model prefix: writes PREFIX.model")
    p.add_argument("--kind", default="sentencepiece", choices=["sentencepiece", "char"])
    p.add_argument("--vocab_size", type=int, default=32000)
    p.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--character_coverage", type=float, default=0.9995)
    p.add_argument("--no_byte_fallback", action="store_true")
    p.add_argument("--num_sentinels", type=int, default=100)
    p.add_argument("--max_sentences", type=int, default=2_000_000,
                   help="sample at most this many lines (sentencepiece holds them in memory)")
    p.add_argument("--split", default="train")
    args, overrides = common.parse(p, argv[2:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lm import config as config_lib
    from lm.data import tokenizers

    start = time.time()
    path = tokenizers.train_vocabulary(
        config_lib.load_data(args.config, overrides), args.output, split=args.split,
        kind=args.kind, vocab_size=args.vocab_size, model_type=args.model_type,
        character_coverage=args.character_coverage, byte_fallback=not args.no_byte_fallback,
        num_sentinels=args.num_sentinels, max_sentences=args.max_sentences)
    print(f"wrote {path} in {time.time() - start:.1f} s")
