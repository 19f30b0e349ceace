"""nanoGPT's CPU Shakespeare command and `lm`'s `gpt_shakespeare_char.py:cpu`, side by side.

    python scripts/compare_nanogpt.py [--anchors DIR] [--order nanogpt,lm] [--repeat 1]

Runs nanoGPT's README CPU command (DIR/run_nanogpt_cpu.sh: 4 layers x 128, block 64, batch
12, 2000 iterations) and then

    python -m lm train --config experiments/gpt_shakespeare_char.py:cpu --workdir TMP --quiet

one right after the other on this machine, and prints both final validation losses, the
median ms/step of their steady-state steps, the whole-process wall times and the ratios.
DIR is --anchors, else $LM_ANCHORS_DIR, else ../shared/anchors beside this repository (it
holds nanoGPT and the runner, which needs a python with torch and numpy: --python, default
this one). Machines' speed drifts with load: compare only runs made together.
"""

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT = "experiments/gpt_shakespeare_char.py:cpu"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()}, {fields['CPU(s)'].strip()} CPUs"
    except (OSError, subprocess.CalledProcessError, KeyError):
        return "unknown CPU"


def environment(python: str) -> dict[str, str]:
    """The runner calls `python`: put the chosen interpreter's directory first on PATH."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{pathlib.Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_nanogpt(anchors: pathlib.Path, python: str) -> dict[str, float]:
    runner = anchors / "run_nanogpt_cpu.sh"
    if not runner.exists():
        sys.exit(f"error: {runner} not found: pass --anchors or set LM_ANCHORS_DIR")
    out = subprocess.run(["bash", str(runner)], capture_output=True, text=True,
                         env=environment(python))
    if out.returncode:
        sys.exit(f"error: nanoGPT failed:\n{out.stdout}\n{out.stderr}")
    m = re.search(r"val loss ([\d.]+) at step (\d+); median ([\d.]+) ms/step", out.stdout)
    if not m:
        sys.exit(f"error: unexpected nanoGPT output:\n{out.stdout}")
    # The runner times the `python train.py ...` process alone (its data preparation and
    # scratch copy are outside), as we time the `python -m lm train ...` process.
    return {"val_loss": float(m.group(1)), "step": int(m.group(2)),
            "ms_per_step": float(m.group(3)),
            "wall_s": float(re.search(r"wall ([\d.]+) s", out.stdout).group(1))}


def run_lm(python: str, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [python, "-m", "lm", "train", "--config", EXPERIMENT, "--workdir", workdir,
               "--quiet", *extra]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                             env=environment(python))
        wall = time.perf_counter() - start
        if out.returncode:
            sys.exit(f"error: lm failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        records = [json.loads(line) for line in
                   pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("eval/loss") is not None]
    # With log_every=1 each record's rate is one step's (the loop's first step after a pause
    # only starts the clock), as nanoGPT times each iteration.
    step_ms = [1e3 / r["train/steps_per_s"] for r in records if r.get("train/steps_per_s")]
    return {"val_loss": evals[-1]["eval/loss"], "step": evals[-1]["step"],
            "ms_per_step": statistics.median(step_ms[10:]), "wall_s": wall}


def table(results: dict[str, dict[str, float]]) -> str:
    nano, lm = results["nanoGPT"], results["lm"]
    rows = [("val loss", "val_loss", "{:.4f}", None),
            ("ms/step (median)", "ms_per_step", "{:.1f}", "nanoGPT / lm: {:.2f}x"),
            ("wall time, whole process (s)", "wall_s", "{:.1f}", "nanoGPT / lm: {:.2f}x")]
    lines = ["| | nanoGPT (torch) | lm (jax) | ratio |", "|---|---|---|---|"]
    for label, key, fmt, ratio in rows:
        r = ratio.format(nano[key] / lm[key]) if ratio else ""
        lines.append(f"| {label} | {fmt.format(nano[key])} | {fmt.format(lm[key])} | {r} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", default=os.environ.get("LM_ANCHORS_DIR")
                        or str(REPO.parent / "shared" / "anchors"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--order", default="nanogpt,lm", help="which runs first")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the pair this often")
    flags, extra = parser.parse_known_args()  # extra: --config.<key>=<value> for lm
    print(f"CPU: {cpu_name()}\nlm: python -m lm train --config {EXPERIMENT} --workdir TMP "
          f"--quiet {' '.join(extra)}\nnanoGPT: bash {flags.anchors}/run_nanogpt_cpu.sh",
          flush=True)
    runs = {"nanogpt": lambda: run_nanogpt(pathlib.Path(flags.anchors), flags.python),
            "lm": lambda: run_lm(flags.python, extra)}
    for i in range(flags.repeat):
        results = {}
        for name in flags.order.split(","):
            results["nanoGPT" if name == "nanogpt" else "lm"] = runs[name]()
            print(f"  {name}: {results['nanoGPT' if name == 'nanogpt' else 'lm']}", flush=True)
        print(f"\nround {i + 1}:\n{table(results)}\n", flush=True)


if __name__ == "__main__":
    main()
