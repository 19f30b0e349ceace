"""`python -m lm eval`: a run's checkpoint on a split of its data, or on a text file.

    python -m lm eval --workdir DIR [--split validation] [--step best|latest|N]
    python -m lm eval --workdir DIR --text FILE [--window N] [--stride N]

(`--config.<key>=<value>` overrides the run's recorded config, as in `lm train`.)

On a split: the trainer's own evaluation over the whole split once (loss, perplexity, token
accuracy, MLM/NSP accuracy, a finetuning task's metrics, decoded-text metrics for seq2seq),
written to DIR/eval_<split>.json. On a text file (causal LMs): perplexity with a sliding
window (lm/eval/perplexity.py), written to DIR/eval_<file name>.json. A relative --text that
is not found here is looked up in the data home ($LM_DATA_DIR), like experiments' files.
"""

import json
import pathlib
from typing import Any

from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("eval", __doc__, config=None)
    common.add_run_source(p, hf=False)
    p.add_argument("--split", default=None, help="default: the run's data.eval_split")
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--text", default=None, help="a text file (causal LMs): perplexity")
    p.add_argument("--window", type=int, default=None, help="default: model.max_len")
    p.add_argument("--stride", type=int, default=None, help="default: window // 2")
    args, overrides = common.parse(p, argv[1:])
    from lm.data import home
    from lm.eval import perplexity, runner

    run = common.saved_run(args, overrides)
    if args.text:
        path = pathlib.Path(home.resolve(args.text))
        results: dict[str, Any] = perplexity.evaluate_text(
            run, common.read_text(path, "--text"), window=args.window, stride=args.stride)
        name = path.stem
    else:
        name = args.split or run.config.data.eval_split
        results = runner.evaluate_split(run.setup, run.params, name, args.batch_size)
    results = {"step": run.step, **results}
    out = run.workdir / f"eval_{name.replace('/', '_')}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"step {run.step} on {name}: "
          + common.format_metrics({k: v for k, v in results.items() if k != "step"})
          + f"\nwrote {out}")
