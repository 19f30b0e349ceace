"""What every command shares: one parser style, `--config FILE:ARG` with
`--config.<key>=<value>` overrides, reading a saved run or a Hugging Face directory.

Flags are spelled `--snake_case`; `--kebab-case` is accepted as an alias of the same flag.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence
from typing import Any

from lm.config import ConfigError, split_overrides
from lm.errors import MissingFileError, UserError


def parser(prog: str, description: str, *, config: bool | None = True
           ) -> argparse.ArgumentParser:
    """A command's parser. `config`: True = `--config` required, False = optional, None = the
    command reads no experiment file."""
    p = argparse.ArgumentParser(prog=f"python -m lm {prog}", description=description,
                                allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if config is not None:
        p.add_argument("--config", required=config, metavar="FILE[:ARG]",
                       help="experiments/<file>.py[:<arg>], then --config.<key>=<value> ...")
    return p


def _snake(arg: str) -> str:
    """`--max-new-tokens=3` -> `--max_new_tokens=3` (config overrides keep their keys)."""
    if not arg.startswith("--") or arg.startswith("--config."):
        return arg
    name, eq, value = arg.partition("=")
    return name[:2] + name[2:].replace("-", "_") + eq + value


def parse(p: argparse.ArgumentParser, argv: Sequence[str]
          ) -> tuple[argparse.Namespace, dict[str, str]]:
    """(the command's flags, {dotted key: text}); anything else is a usage error."""
    flags, rest = p.parse_known_args([_snake(a) for a in argv])
    try:
        rest, overrides = split_overrides(rest)
    except ConfigError as e:
        p.error(str(e))
    if rest:
        p.error(f"unrecognized arguments {rest}; config overrides look like "
                "--config.train.lr=3e-4")
    return flags, overrides


def add_run_source(p: argparse.ArgumentParser, *, hf: bool = True) -> None:
    """--workdir (a run of `lm train`) or --hf (a Hugging Face or `lm convert` directory)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a run of `python -m lm train`")
    if hf:
        source.add_argument("--hf", help="a Hugging Face checkpoint directory "
                            "(save_pretrained), or one written by `python -m lm convert`")
    p.add_argument("--step", default="best", help="'best', 'latest' or a step number")


def step_arg(text: str) -> int | str:
    """--step: 'best', 'latest' or a step number."""
    if text.isdigit():
        return int(text)
    if text not in ("best", "latest"):
        raise UserError(f"--step {text!r}: expected 'best', 'latest' or a step number")
    return text


def saved_run(args: argparse.Namespace, overrides: dict[str, str]):
    """The saved run of --workdir at --step, with its recorded config overridden."""
    from lm.train import saved

    return saved.load(args.workdir, step_arg(args.step), overrides)


def load_model(args: argparse.Namespace, overrides: dict[str, str]
               ) -> tuple[Any, Any, Any, Any]:
    """(model, params, tokenizer, saved run or None) of --workdir or --hf."""
    if getattr(args, "hf", None):
        if overrides:
            raise UserError("--config.* overrides apply to a --workdir run's config")
        from lm.generation.inference import load_hf

        return (*load_hf(args.hf), None)
    run = saved_run(args, overrides)
    return run.model, run.params, run.tokenizer, run


def read_text(path: str | pathlib.Path, what: str) -> str:
    """A UTF-8 text file named by the user, or one clear error."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}): convert it, e.g. "
                        "iconv -f latin1 -t utf-8") from None


def lines(texts: list[str], file: str | None, what: str = "--file") -> list[str]:
    """The texts given as arguments, then those of `file` (one per line)."""
    if file:
        texts = [*texts, *(t for t in read_text(file, what).splitlines() if t)]
    if not texts:
        raise UserError(f"give the text as arguments or in {what} (one per line)")
    return texts


def format_metrics(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items())
