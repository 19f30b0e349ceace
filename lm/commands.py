"""Using a trained model from the command line: sample, fill_mask, classify.

    python -m lm sample (--workdir DIR [--step best] | --hf DIR) --prompt "ROMEO:" \\
        [--prompts FILE] [--max_new_tokens 256] [--temperature 1.0] [--top_k 0] \\
        [--top_p 1.0] [--num_samples 1] [--seed 0]
    python -m lm fill_mask (--workdir DIR | --hf DIR) "The capital of France is [MASK]."
    python -m lm classify --workdir DIR "This is a great movie!" [--file FILE]

A run is read with its own tokenizer from its best checkpoint (`--step latest` or a number
for another); `--config.<key>=<value>` overrides its recorded config as in `lm train` (model
fields that leave the parameters alone, e.g. `--config.model.dtype=bfloat16`). `--hf DIR`
reads a Hugging Face GPT-2, T5 or BERT directory instead; for T5 the prompt is the encoder's
input. Prompts and sentences come from the arguments or a file, one per line (a tab in a
classify line separates a sentence pair).
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import numpy as np

from lm import config as config_lib
from lm.errors import UserError


def _parser(prog: str, description: str, *, hf: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a run of `python -m lm train`")
    if hf:
        source.add_argument("--hf", help="a Hugging Face checkpoint directory")
    parser.add_argument("--step", default="best", help="'best', 'latest' or a step number")
    return parser


def _model(args, overrides: dict[str, str]) -> tuple[Any, Any, Any, Any]:
    """(model, params, tokenizer, saved run or None) of --workdir or --hf."""
    if getattr(args, "hf", None):
        if overrides:
            raise UserError("--config.* overrides apply to a --workdir run's config")
        from lm.inference import load_hf

        return (*load_hf(args.hf), None)
    from lm.train import saved

    run = saved.load(args.workdir, int(args.step) if args.step.isdigit() else args.step,
                     overrides)
    return run.model, run.params, run.tokenizer, run


def _lines(texts: list[str], file: str | None) -> list[str]:
    if file:
        path = pathlib.Path(file)
        if not path.is_file():
            raise UserError(f"{file}: no such file")
        texts = [*texts, *(t for t in path.read_text(encoding="utf-8").splitlines() if t)]
    if not texts:
        raise UserError("give the text as arguments or in --file / --prompts (one per line)")
    return texts


def sample(argv: list[str]) -> None:
    parser = _parser("python -m lm sample", "Continue prompts with a GPT (or decode a T5).")
    parser.add_argument("--prompt", action="append", default=[], help="repeatable")
    parser.add_argument("--prompts", default=None, help="a file of prompts, one per line")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=0, help="0 = off")
    parser.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = config_lib.parse_command_line(parser, argv[1:])
    prompts = _lines(args.prompt, args.prompts)
    model, params, tokenizer, _ = _model(args, overrides)
    from lm.inference import sample_text

    texts = sample_text(model, params, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        num_samples=args.num_samples, seed=args.seed)
    for i, text in enumerate(texts):
        prompt = prompts[i // args.num_samples]
        print(f"--- prompt {i // args.num_samples + 1}, sample {i % args.num_samples + 1}: "
              f"{prompt!r}\n{text}")


def fill_mask(argv: list[str]) -> None:
    parser = _parser("python -m lm fill_mask", "The most probable tokens for each mask.")
    parser.add_argument("text", nargs="*", help="sentences with [MASK]")
    parser.add_argument("--file", default=None)
    parser.add_argument("--top_k", type=int, default=5)
    args, overrides = config_lib.parse_command_line(parser, argv[1:])
    texts = _lines(args.text, args.file)
    model, params, tokenizer, _ = _model(args, overrides)
    from lm import inference

    for text in texts:
        print(text)
        for k, predictions in enumerate(inference.fill_mask(model, params, tokenizer, text,
                                                            args.top_k)):
            # A sentencepiece word start alone ("▁") decodes to '': show the piece instead.
            shown = "  ".join(f"{token or '▁'!r} {prob:.3f}" for token, prob, _ in predictions)
            print(f"  mask {k + 1}: {shown}")


def classify(argv: list[str]) -> None:
    parser = _parser("python -m lm classify", "Label and probabilities from a finetuned "
                     "classifier (a finetune_glue run).", hf=False)
    parser.add_argument("text", nargs="*", help="sentences (a tab separates a pair)")
    parser.add_argument("--file", default=None)
    args, overrides = config_lib.parse_command_line(parser, argv[1:])
    texts = _lines(args.text, args.file)
    _, _, _, run = _model(args, overrides)
    for text, (label, scores) in zip(texts, classify_texts(run, texts)):
        shown = "  ".join(f"{name}={p:.3f}" for name, p in scores.items())
        print(f"{label}\t{shown}\t{text}")


def classify_texts(run, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(label, {label: probability}) of each text (a score for regression) from a saved
    classification run, encoded exactly as its training data was."""
    import jax

    from lm.data import classification, glue

    if run.config.data.objective != "classification":
        raise UserError(f"{run.workdir} is a {run.config.data.objective!r} run: `lm classify` "
                        "needs a classification finetuning run (experiments/finetune_glue.py)")
    task = glue.get(run.config.data.task)
    examples = [classification.classification_example(
        {"texts": tuple(t.split("\t")), "label": 0, "idx": i}, run.tokenizer,
        run.config.data.seq_len, task.num_labels) for i, t in enumerate(texts)]
    batch = {k: np.stack([e[k] for e in examples]) for k in ("inputs", "token_type_ids",
                                                             "input_mask")}
    logits = np.asarray(jax.jit(run.model.apply)(
        {"params": run.params}, batch["inputs"], token_type_ids=batch["token_type_ids"],
        input_mask=batch["input_mask"])["logits"], np.float64)
    if task.num_labels == 1:
        return [(f"{row[0]:.3f}", {"score": float(row[0])}) for row in logits]
    names = task.words or task.labels
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return [(names[int(p.argmax())], dict(zip(names, map(float, p)))) for p in probs]
