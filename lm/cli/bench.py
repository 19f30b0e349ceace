"""`python -m lm bench`: training throughput of an experiment, on its real data.

    python -m lm bench --config experiments/<file>.py[:<arg>] [--steps 100] \\
        [--profile DIR [--profile_steps 10]] [--json FILE] [--config.<dotted.key>=<value> ...]

Runs `steps` training steps in a scratch workdir (no eval, no checkpoint) through the real
loop and reports, averaged over the logged windows after the first (which holds
compilation): ms/step, steps/s, tokens/s, model TFLOP/s (6N + attention, lm.train.mfu), MFU
against the device's peak (the bf16 dense peak of the accelerator's data sheet, or a measured
CPU matmul peak; `LM_PEAK_FLOPS` overrides), the first step's time (tracing and compiling),
and the device's peak memory (`memory_stats()`, where the backend reports it).
`--config.data.source=synthetic` measures on random tokens: no corpus or tokenizer needed.
`--profile DIR` also traces `profile_steps` steps from the middle of the run into DIR
(jax.profiler; TensorBoard or ui.perfetto.dev), prints the top XLA ops by time and their
share of all ops (lm/profiling.py), and writes the report as DIR/bench.json beside the trace;
`--json FILE` writes it there."""

import json
import pathlib

from lm import config as config_lib
from lm.cli import common


def main(argv: list[str]) -> None:
    p = common.parser("bench", __doc__)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--profile", default="", metavar="DIR", help="write a trace here")
    p.add_argument("--profile_steps", type=int, default=10, help="steps to trace")
    p.add_argument("--json", default="", metavar="FILE", help="write the report here")
    flags, overrides = common.parse(p, argv[1:])
    from lm.train import bench

    overrides = {**overrides, **bench.overrides(flags.steps, flags.profile, flags.profile_steps)}
    out = bench.run(flags.config, config_lib.load(flags.config, overrides))
    peak = out["peak_flops"]
    print(f"peak: {peak:.4g} FLOP/s per device, {out['peak_flops_source']}" if peak
          else f"peak: {out['peak_flops_source']}")
    print(bench.line(out))
    for path in filter(None, [flags.json, flags.profile and f"{flags.profile}/bench.json"]):
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(out, indent=1) + "\n")
