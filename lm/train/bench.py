"""Training throughput of an experiment on its real data (`python -m lm bench`): the real
loop in a scratch workdir, averaged over the logged windows after the first (which holds
compilation)."""

import pathlib
import tempfile

import numpy as np

from lm.errors import UserError

RATES = ("train/steps_per_s", "train/tokens_per_s", "train/tflops_per_s", "train/mfu")


def timed_windows(records: list[dict]) -> list[tuple[float, dict]]:
    """(seconds, record) of each logged window of a metrics.jsonl: a window's steps are those
    since the previous rated record (the run's first step only starts the clock), its seconds
    those steps over its rate. Eval records carry no rate."""
    rated = [r for r in records if r.get("train/steps_per_s")]
    steps = [r["step"] - prev["step"] for prev, r in zip([{"step": 1}, *rated], rated)]
    return [(n / r["train/steps_per_s"], r) for n, r in zip(steps, rated)]


def summarize(records: list[dict], *, skip_windows: int = 1) -> dict[str, float]:
    """Throughput over the logged windows past the first `skip_windows` (the first holds
    compilation): each rate is the windows' total over their total time (so ms_per_step is
    their seconds over their steps, however long each window is)."""
    timed = timed_windows(records)[skip_windows:]
    if not timed:
        raise UserError("too few logged steps to measure: raise --steps")
    seconds = sum(t for t, _ in timed)
    out = {k: sum(t * r[k] for t, r in timed) / seconds
           for k in RATES if all(r.get(k) is not None for _, r in timed)}
    return {**out, "ms_per_step": 1e3 / out["train/steps_per_s"]}


def median_ms_per_step(records: list[dict], *, skip_windows: int = 10) -> float:
    """The median of the windows' ms/step past the first `skip_windows`; with log_every=1,
    the median step time. Not `summarize`'s mean because nanoGPT's runner reports this
    statistic (scripts/compare_nanogpt.py compares like with like): a median leaves out the
    few slow steps around evals that a mean counts."""
    timed = timed_windows(records)[skip_windows:]
    return float(np.median([1e3 / r["train/steps_per_s"] for _, r in timed]))


def report(spec: str, config, summary: dict[str, float], result: dict[str, float]) -> dict:
    """Everything one benchmark measured, and the settings that decide it."""
    import jax

    from lm.train import mfu

    device = jax.devices()[0]
    peak, source = mfu.peak_flops_and_source(device, config.model.get("dtype", "float32"))
    stats = device.memory_stats() or {}
    memory = stats.get("peak_bytes_in_use")
    return {
        "config": spec, "device": device.device_kind, "devices": jax.device_count(),
        "batch_size": config.train.batch_size, "seq_len": config.data.seq_len,
        "dtype": config.model.dtype, "attention_impl": config.model.attention_impl,
        "remat_policy": config.model.remat_policy,
        "grad_accum_steps": config.train.grad_accum_steps,
        "parallel_micro_batches": config.train.parallel_micro_batches,
        "ms_per_step": summary["ms_per_step"], "steps_per_s": summary["train/steps_per_s"],
        "tokens_per_s": summary.get("train/tokens_per_s"),
        "tflops_per_s": summary.get("train/tflops_per_s"), "mfu": summary.get("train/mfu"),
        "peak_flops": peak, "peak_flops_source": source,
        "compile_s": result.get("train/first_step_s"),
        "peak_memory_gb": memory / 1e9 if memory else None,
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
