"""`python -m lm <command> ...`: a thin dispatcher; each command lives in its own module."""

import importlib
import sys

# command -> module exposing `main(argv: list[str]) -> None` (imported lazily: `lm tokenizer`
# should not pay for importing the trainer).
COMMANDS = {
    "train": "lm.train.cli",
    "sweep": "lm.sweep",
    "predict": "lm.finetune",
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
    module = importlib.import_module(COMMANDS[argv[1]])
    module.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv)
