"""Training throughput of an experiment on its real data (`python -m lm bench`): the real
loop in a scratch workdir, averaged over the logged windows after the first (which holds
compilation)."""

import pathlib
import tempfile

import numpy as np

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


def overrides(steps: int, profile_dir: str = "", profile_steps: int = 10) -> dict[str, str]:
    """The config overrides of a benchmark run: `steps` steps, logged in ten windows, no
    eval or checkpoint on the way; with `profile_dir`, trace `profile_steps` steps from the
    middle of the run (past compilation)."""
    out = {"train.steps": str(steps), "train.eval_every": "0",
           "train.log_every": str(max(steps // 10, 1)), "train.epochs": "0",
           "train.checkpoint_every": str(steps + 1), "train.eval_at_start": "False",
           "train.eval_steps": "1"}  # the loop's final eval: one batch, not the split
    if not profile_dir:
        return out
    start = max(steps // 2, 2)
    if start + profile_steps > steps + 1:
        raise UserError(f"--steps {steps} is too few to trace {profile_steps} "
                        f"steps from step {start}: raise --steps")
    return {**out, "train.profile_steps": f"{start},{start + profile_steps}",
            "train.profile_dir": str(pathlib.Path(profile_dir).absolute())}


def run(spec: str, config) -> dict:
    """Trains `config` (with `overrides(...)` applied) in a scratch workdir; its report."""
    from lm.train.loop import train
    from lm.train.writer import read_records

    with tempfile.TemporaryDirectory() as workdir:
        result = train(config, workdir, quiet=True)
        records = read_records(pathlib.Path(workdir) / "metrics.jsonl")
    return report(spec, config, summarize(records), result)


def line(report: dict) -> str:
    shown = {"ms/step": report["ms_per_step"], "steps/s": report["steps_per_s"],
             "tokens/s": report["tokens_per_s"], "TFLOP/s": report["tflops_per_s"],
             "MFU": report["mfu"], "first step s": report["compile_s"],
             "peak GB": report["peak_memory_gb"]}
    return f"{report['config']}: " + "  ".join(
        f"{k}={v:.4g}" for k, v in shown.items() if v is not None)
