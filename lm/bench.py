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
`--json FILE` writes it there.
"""

import argparse
import json
import pathlib
import tempfile

import numpy as np

from lm import config as config_lib
from lm.errors import UserError


def summarize(records: list[dict]) -> dict[str, float]:
    """Mean throughput over every logged window except the first (compilation)."""
    windows = [r for r in records if "train/steps_per_s" in r][1:]
    if not windows:
        raise UserError("too few logged steps to measure: raise --steps")
    keys = ("train/steps_per_s", "train/tokens_per_s", "train/tflops_per_s", "train/mfu")
    return {k: float(np.mean([r[k] for r in windows])) for k in keys if k in windows[0]}


def report(spec: str, config, summary: dict[str, float], result: dict[str, float]) -> dict:
    """Everything one benchmark measured, and the settings that decide it."""
    import jax

    from lm.train import mfu

    device = jax.devices()[0]
    peak, source = mfu.peak_flops_and_source(device, config.model.get("dtype", "float32"))
    stats = device.memory_stats() or {}
    memory = stats.get("peak_bytes_in_use")
    steps_per_s = summary["train/steps_per_s"]
    return {
        "config": spec, "device": device.device_kind, "devices": jax.device_count(),
        "batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
        "dtype": config.model.dtype, "attention_impl": config.model.attention_impl,
        "remat_policy": config.model.remat_policy,
        "grad_accum_steps": config.train.grad_accum_steps,
        "parallel_micro_batches": config.train.parallel_micro_batches,
        "ms_per_step": 1000 / steps_per_s, "steps_per_s": steps_per_s,
        "tokens_per_s": summary.get("train/tokens_per_s"),
        "tflops_per_s": summary.get("train/tflops_per_s"), "mfu": summary.get("train/mfu"),
        "peak_flops": peak, "peak_flops_source": source,
        "compile_s": result.get("train/first_step_s"),
        "peak_memory_gb": memory / 2**30 if memory else None,
    }


def _line(report: dict) -> str:
    shown = {"ms/step": report["ms_per_step"], "steps/s": report["steps_per_s"],
             "tokens/s": report["tokens_per_s"], "TFLOP/s": report["tflops_per_s"],
             "MFU": report["mfu"], "first step s": report["compile_s"],
             "peak GB": report["peak_memory_gb"]}
    return f"{report['config']}: " + "  ".join(
        f"{k}={v:.4g}" for k, v in shown.items() if v is not None)


def profile_overrides(flags: argparse.Namespace) -> dict[str, str]:
    """Trace `profile_steps` steps from the middle of the run (past compilation)."""
    if not flags.profile:
        return {}
    start = max(flags.steps // 2, 2)
    if start + flags.profile_steps > flags.steps + 1:
        raise UserError(f"--steps {flags.steps} is too few to trace {flags.profile_steps} "
                        f"steps from step {start}: raise --steps")
    return {"train.profile_steps": f"{start},{start + flags.profile_steps}",
            "train.profile_dir": str(pathlib.Path(flags.profile).absolute())}


def main(argv: list[str]) -> None:
    parser = config_lib.command_parser("python -m lm bench", __doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--profile", default="", metavar="DIR", help="write a trace here")
    parser.add_argument("--profile_steps", type=int, default=10, help="steps to trace")
    parser.add_argument("--json", default="", metavar="FILE", help="write the report here")
    flags, overrides = config_lib.parse_command_line(parser, argv[1:])
    overrides = {**overrides, "train.steps": str(flags.steps), "train.eval_every": "0",
                 "train.log_every": str(max(flags.steps // 10, 1)), "train.epochs": "0",
                 "train.checkpoint_every": str(flags.steps + 1), "train.eval_at_start": "False",
                 "train.eval_steps": "1",  # the loop's final eval: one batch, not the split
                 **profile_overrides(flags)}
    config = config_lib.load(flags.config, overrides)
    from lm.train.loop import train

    with tempfile.TemporaryDirectory() as workdir:
        result = train(config, workdir, quiet=True)
        lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
    out = report(flags.config, config, summarize([json.loads(line) for line in lines]), result)
    peak = out["peak_flops"]
    print(f"peak: {peak:.4g} FLOP/s per device, {out['peak_flops_source']}" if peak
          else f"peak: {out['peak_flops_source']}")
    print(_line(out))
    for path in filter(None, [flags.json, flags.profile and f"{flags.profile}/bench.json"]):
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(out, indent=1) + "\n")
