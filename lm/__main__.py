"""`python -m lm <command> ...`: a thin dispatcher; each command lives in its own module.

Bad input (lm.errors.UserError: a config, data, checkpoint or command-line problem) and a
run stopped by a non-finite loss end with a short message and exit status 1; anything else
is a bug and keeps its traceback. `LM_DEBUG=1` shows the traceback in every case.
"""

import importlib
import os
import sys

# command -> module exposing `main(argv: list[str]) -> None`, or `module:function` (imported
# lazily: `lm tokenizer` should not pay for importing the trainer).
COMMANDS = {
    "train": "lm.train.cli",
    "sweep": "lm.sweep",
    "predict": "lm.predict",
    "eval": "lm.evaluate",
    "sample": "lm.commands:sample",
    "fill_mask": "lm.commands:fill_mask",
    "classify": "lm.commands:classify",
    "tokenizer": "lm.data.cli",
    "data": "lm.data.cli",
    "convert": "lm.convert.cli",
    "bench": "lm.bench",
    "plan": "lm.plan",
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        names = ", ".join(COMMANDS)
        sys.exit(f"usage: python -m lm <command> [args]; commands: {names}")
    from lm import compile_cache, malloc
    from lm.errors import UserError

    compile_cache.enable()  # before jax is imported: it reads the cache settings then
    if malloc.keep_freed_memory():  # before jax allocates anything: CPU steps without faults
        malloc.run_cpu_steps_inline()
    module, _, function = COMMANDS[argv[1]].partition(":")
    command = getattr(importlib.import_module(module), function or "main")
    try:
        command(argv[1:])
    except (UserError, FloatingPointError) as e:
        if os.environ.get("LM_DEBUG"):
            raise
        sys.exit(f"error: {e}\n(LM_DEBUG=1 shows the traceback)")


if __name__ == "__main__":
    main(sys.argv)
