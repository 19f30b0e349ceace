"""Commands: one thin module per `python -m lm <command>` (argparse and printing only)."""
