"""`python -m lm <command> ...`: a thin dispatcher to `lm.cli.<command>.main(argv)`.

Bad input (lm.errors.UserError: a config, data, checkpoint or command-line problem) and a
run stopped by a non-finite loss end with a short message and exit status 1; Ctrl-C or
SIGTERM with nothing to save (before a run's loop) with one line and 130 / 143; anything else
is a bug and keeps its traceback. `LM_DEBUG=1` shows the traceback in every case.
"""

import importlib
import os
import signal
import sys

# command -> one line of help. Each lives in lm/cli/<command>.py, imported only when run
# (`lm tokenizer` should not pay for importing the trainer).
COMMANDS = {
    "train": "train (or resume) an experiment in a workdir",
    "sweep": "run every point of an experiment's get_sweep(arg); tabulate and plot them",
    "study": "pretraining variants x downstream tasks x seeds, with the paper's table beside",
    "eval": "evaluate a run's checkpoint on a split, or a causal LM's perplexity on a text",
    "predict": "write a GLUE prediction file from a finetuning run",
    "sample": "continue prompts with a GPT (or decode with a T5)",
    "fill_mask": "the most probable tokens for each [MASK] (BERT)",
    "classify": "label and probabilities from a finetuned classifier",
    "tokenizer": "train a sentencepiece (or char) vocabulary on a data source",
    "data": "prepare a dataset in the data home; time the input pipeline",
    "convert": "import a Hugging Face GPT-2 / BERT / T5 checkpoint",
    "bench": "training throughput (ms/step, tokens/s, MFU) of an experiment",
    "plan": "will an experiment fit on N devices? (compiles ahead of time, runs nothing)",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: python -m lm <command> [--help] [args]\n\ncommands:\n" + "\n".join(
        f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[1] in ("-h", "--help", "help"):
        print(usage())
        return
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sys.exit(usage() if len(argv) < 2 else f"error: unknown command {argv[1]!r}; choose "
                 f"one of {', '.join(COMMANDS)} (python -m lm --help says what each does)")
    from lm import compile_cache, malloc
    from lm.errors import Interrupted, UserError

    signal.signal(signal.SIGTERM, _sigterm)  # one line, not a silent death, before the loop

    compile_cache.enable()  # before jax is imported: it reads the cache settings then
    if malloc.keep_freed_memory():  # before jax allocates anything: CPU steps without faults
        malloc.run_cpu_steps_inline()
    command = importlib.import_module(f"lm.cli.{argv[1]}").main
    try:
        command(argv[1:])
    except (UserError, FloatingPointError) as e:
        if os.environ.get("LM_DEBUG"):
            raise
        sys.exit(f"error: {e}\n(LM_DEBUG=1 shows the traceback)")
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C / SIGTERM with nothing to save
        if os.environ.get("LM_DEBUG"):
            raise
        print(f"error: {e if isinstance(e, Interrupted) else 'interrupted (SIGINT)'}",
              file=sys.stderr)
        sys.exit(getattr(e, "exit_status", 128 + signal.SIGINT))


def _sigterm(signum: int, frame) -> None:
    from lm.errors import Interrupted

    raise Interrupted("interrupted (SIGTERM)", 128 + signum)


if __name__ == "__main__":
    main(sys.argv)
