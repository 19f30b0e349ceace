"""`python -m lm data prepare|bench`: put a dataset in the data home; time the input pipeline.

    python -m lm data prepare NAME [--from DIR]
    python -m lm data bench [--config experiments/<file>.py[:<arg>]] [--batch_size 32] \\
        [--batches 200] [--config.data.<key>=<value> ...]

prepare: NAME is tiny_shakespeare, wikitext-2, glue (every task) or glue/<task>; with
`--from DIR` the files are copied from a local copy laid out like the data home, else
downloaded; each file's sha256 is checked (lm/data/prepare.py). bench: examples/s and
tokens/s of the data block of an experiment (or of lm.data.config's defaults), overridden by
`--config.data.<key>=<value>`.
"""

import os

from lm.cli import common


def prepare(argv: list[str]) -> None:
    p = common.parser("data prepare", __doc__, config=None)
    p.add_argument("name", help="tiny_shakespeare | wikitext-2 | glue | glue/<task>")
    p.add_argument("--from", dest="source", default=None,
                   help="a local copy laid out like the data home (default: download)")
    args, _ = common.parse(p, argv)
    from lm.data import home
    from lm.data import prepare as prepare_lib

    written = prepare_lib.prepare(args.name, args.source)
    print(f"{args.name}: {len(written)} file(s) in {home.data_home()} "
          f"({'from ' + args.source if args.source else 'downloaded'})")


def bench(argv: list[str]) -> None:
    p = common.parser("data bench", __doc__, config=False)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="batches not timed")
    p.add_argument("--split", default="train")
    args, overrides = common.parse(p, argv)
    from lm import config as config_lib
    from lm.data import pipeline

    cfg = config_lib.load_data(args.config, overrides)
    r = pipeline.throughput(cfg, split=args.split, batch_size=args.batch_size,
                            batches=args.batches, warmup=args.warmup)
    print(f"objective={cfg.objective} seq_len={cfg.seq_len} batch={args.batch_size} "
          f"vocab={r['vocab_size']} threads={cfg.num_threads} workers={cfg.workers}: "
          f"{r['examples_per_s']:,.0f} examples/s, {r['tokens_per_s']:,.0f} tokens/s "
          f"({args.batches} batches in {r['seconds']:.1f} s)")


def main(argv: list[str]) -> None:
    """argv[0] is 'data', argv[1] the subcommand."""
    commands = {"prepare": prepare, "bench": bench}
    if argv[1:2] and argv[1] in commands:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return commands[argv[1]](argv[2:])
    raise SystemExit("usage: python -m lm data prepare NAME [--from DIR] | "
                     "python -m lm data bench [--config FILE:ARG] [--config.data.<key>=...]")
