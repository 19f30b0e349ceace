"""`python -m lm tokenizer train ...`, `python -m lm data bench ...`, `python -m lm data prepare`.

The first two read a data config: an experiment's (`--config experiments/<file>.py[:<arg>]`,
with `--config.data.<key>=<value>` overrides) or the defaults of lm.data.config with
KEY=VALUE overrides (dotted keys of the data block); both go through lm.config's one typed
parser, so an unknown key or a value of the wrong type is a one-line error:

    python -m lm tokenizer train --output /tmp/wt2_32k --vocab-size 32000 \\
        source=text files.train=wikitext-2/train.txt doc_separator=wikitext
    python -m lm data bench objective=mlm_nsp source=text files.train=wikitext-2/train.txt \\
        doc_separator=wikitext tokenizer.kind=sentencepiece tokenizer.path=/tmp/wt2_32k.model
"""

from __future__ import annotations

import argparse
import os
import time

import ml_collections
import numpy as np

from lm import config as config_lib
from lm.config import ConfigError
from lm.data import pipeline, sources, tokenizers


def data_config(args: argparse.Namespace, extra: list[str]):
    """The data block: `--config`'s experiment or the defaults, with every override applied."""
    pairs = {}
    for item in args.overrides:  # KEY=VALUE, relative to the data block
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE (a data config key), got {item!r}")
        pairs[f"data.{key}"] = text
    _, flags = config_lib.split_overrides(extra)
    if args.config:
        return config_lib.load(args.config, {**flags, **pairs}).data
    config = ml_collections.ConfigDict({"data": config_lib.data_config()})
    for key, text in {**flags, **pairs}.items():
        config_lib.override(config, key, text)
    return config.data


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=None,
                   help="take the data block of experiments/<file>.py[:<arg>]")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def train_tokenizer(argv: list[str]) -> None:
    p = _parser("python -m lm tokenizer train", "Train a sentencepiece (or char) vocabulary "
                "on a data source's split. KEY=VALUE set data config fields.")
    p.add_argument("--output", required=True, help="model prefix: writes PREFIX.model")
    p.add_argument("--kind", default="sentencepiece", choices=["sentencepiece", "char"])
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--no-byte-fallback", action="store_true")
    p.add_argument("--num-sentinels", type=int, default=100)
    p.add_argument("--max-sentences", type=int, default=2_000_000,
                   help="sample at most this many lines (sentencepiece holds them in memory)")
    p.add_argument("--split", default="train")
    args, extra = p.parse_known_args(argv)
    cfg = data_config(args, extra)
    docs = sources.text_source(cfg, args.split)
    start = time.time()
    if args.kind == "char":
        tok = tokenizers.save_chars(docs, args.output + ".json")
        print(f"wrote {args.output}.json: {len(tok.chars)} characters")
        return
    path = tokenizers.train_sentencepiece(
        tokenizers.lines(docs), args.output, vocab_size=args.vocab_size,
        model_type=args.model_type, character_coverage=args.character_coverage,
        byte_fallback=not args.no_byte_fallback, num_sentinels=args.num_sentinels,
        max_sentences=args.max_sentences)
    print(f"wrote {path} ({args.vocab_size} pieces) in {time.time() - start:.1f} s")


def bench(argv: list[str]) -> None:
    p = _parser("python -m lm data bench", "Examples/s and tokens/s of the input pipeline.")
    p.add_argument("--objective", default=None, help="shorthand for objective=...")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="batches not timed")
    p.add_argument("--split", default="train")
    args, extra = p.parse_known_args(argv)
    cfg = data_config(args, extra)
    if args.objective:
        cfg.objective = args.objective
    tok = tokenizers.make_tokenizer(cfg)
    it = pipeline.make_iterator(cfg, tok, split=args.split, batch_size=args.batch_size, seed=0)
    for _ in range(args.warmup):
        next(it)
    examples = tokens = 0
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
        mask = batch.get("input_mask", batch.get("weights"))
        examples += len(batch["inputs"])
        tokens += int(np.count_nonzero(mask))
    seconds = time.perf_counter() - start
    print(f"objective={cfg.objective} seq_len={cfg.seq_len} batch={args.batch_size} "
          f"vocab={tok.vocab_size} threads={cfg.num_threads} workers={cfg.workers}: "
          f"{examples / seconds:,.0f} examples/s, {tokens / seconds:,.0f} tokens/s "
          f"({args.batches} batches in {seconds:.1f} s)")


def main(argv: list[str]) -> None:
    """argv[0] is 'tokenizer' or 'data'; argv[1] the subcommand."""
    from lm.data import prepare

    commands = {("tokenizer", "train"): train_tokenizer, ("data", "bench"): bench,
                ("data", "prepare"): prepare.main}
    key = tuple(argv[:2])
    if key not in commands:
        raise SystemExit("usage: python -m lm tokenizer train ... | python -m lm data bench ..."
                         " | python -m lm data prepare NAME [--from DIR]")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    commands[key](argv[2:])
