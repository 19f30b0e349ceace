"""nanoGPT's CPU Shakespeare command and `lm`'s `gpt_shakespeare_char.py:cpu`, side by side.

    git clone https://github.com/karpathy/nanoGPT /path/to/nanoGPT
    python scripts/compare_nanogpt.py --nanogpt /path/to/nanoGPT [--order nanogpt,lm] \\
        [--repeat 1] [--python PYTHON] [--config.<key>=<value> ...]

Runs nanoGPT's README CPU command (train.py config/train_shakespeare_char.py --device=cpu
--compile=False, 4 layers x 128, block 64, batch 12, 2000 iterations) in a scratch copy of
the checkout, on the tiny Shakespeare text that ships inside lm, and then

    python -m lm train --config experiments/gpt_shakespeare_char.py:cpu --workdir TMP --quiet

one right after the other on this machine, and prints both final validation losses, the
median ms/step of their steady-state steps, the whole-process wall times and the ratios.
The nanoGPT checkout is --nanogpt, else $NANOGPT_DIR; nanoGPT needs a python with torch and
numpy (--python, default this one). Machines' speed drifts with load: compare only runs made
together.
"""

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from lm.compile_cache import cpu_name
from lm.data.sources import shakespeare_text
from lm.train import bench
from lm.train.writer import read_records

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT = "experiments/gpt_shakespeare_char.py:cpu"


def environment(python: str) -> dict[str, str]:
    """The runner calls `python`: put the chosen interpreter's directory first on PATH."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{pathlib.Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def nanogpt_checkout(directory: str | None) -> pathlib.Path:
    """The nanoGPT checkout to run, or one clear line saying how to get one."""
    if not directory:
        sys.exit("error: no nanoGPT checkout: `git clone https://github.com/karpathy/nanoGPT` "
                 "and pass its path as --nanogpt DIR (or set $NANOGPT_DIR)")
    path = pathlib.Path(directory).expanduser()
    if not (path / "train.py").is_file() or not (path / "data/shakespeare_char").is_dir():
        sys.exit(f"error: --nanogpt {directory} is not a nanoGPT checkout (no train.py and "
                 "data/shakespeare_char): `git clone https://github.com/karpathy/nanoGPT`")
    return path


# nanoGPT's README CPU command; --eval_iters=20 and --log_interval=1 time every iteration.
NANOGPT_FLAGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                 "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                 "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                 "--lr_decay_iters=2000", "--dropout=0.0"]


def run_nanogpt(checkout: pathlib.Path, python: str) -> dict[str, float]:
    """nanoGPT's CPU run in a scratch copy of `checkout`, on lm's copy of tiny Shakespeare
    (karpathy/char-rnn's input.txt, which nanoGPT's prepare.py would download)."""
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(checkout, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        data = pathlib.Path(work, "data", "shakespeare_char")
        (data / "input.txt").write_text(shakespeare_text(), encoding="utf-8")
        env = environment(python)
        prepared = subprocess.run([python, "prepare.py"], cwd=data, capture_output=True,
                                  text=True, env=env)
        if prepared.returncode:
            sys.exit(f"error: nanoGPT's prepare.py failed:\n{prepared.stderr[-3000:]}")
        # Timed as lm's: the `python train.py ...` process alone.
        start = time.perf_counter()
        out = subprocess.run([python, "train.py", *NANOGPT_FLAGS], cwd=work,
                             capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"error: nanoGPT failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    ms = [float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", out.stdout,
                                       re.M)][10:]  # the first iterations warm up
    val = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", out.stdout, re.M)
    if not ms or not val:
        sys.exit(f"error: unexpected nanoGPT output:\n{out.stdout[-3000:]}")
    return {"val_loss": float(val[-1][1]), "step": int(val[-1][0]),
            "ms_per_step": statistics.median(ms), "wall_s": wall}


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
        records = read_records(pathlib.Path(workdir, "metrics.jsonl"))
    evals = [r for r in records if r.get("eval/loss") is not None]
    # With log_every=1 each record's rate is one step's (the loop's first step after a pause
    # only starts the clock), as nanoGPT times each iteration; its runner skips 10 too.
    return {"val_loss": evals[-1]["eval/loss"], "step": evals[-1]["step"],
            "ms_per_step": bench.median_ms_per_step(records, skip_windows=10), "wall_s": wall}


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
    parser.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR"),
                        help="a clone of https://github.com/karpathy/nanoGPT "
                             "(default: $NANOGPT_DIR)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--order", default="nanogpt,lm", help="which runs first")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the pair this often")
    flags, extra = parser.parse_known_args()  # extra: --config.<key>=<value> for lm
    checkout = nanogpt_checkout(flags.nanogpt) if "nanogpt" in flags.order else None
    print(f"CPU: {cpu_name()} x{os.cpu_count()}\n"
          f"lm: python -m lm train --config {EXPERIMENT} --workdir TMP "
          f"--quiet {' '.join(extra)}\nnanoGPT ({checkout}): python train.py "
          f"{' '.join(NANOGPT_FLAGS)}",
          flush=True)
    runs = {"nanogpt": lambda: run_nanogpt(checkout, flags.python),
            "lm": lambda: run_lm(flags.python, extra)}
    for i in range(flags.repeat):
        results = {}
        for name in flags.order.split(","):
            results["nanoGPT" if name == "nanogpt" else "lm"] = runs[name]()
            print(f"  {name}: {results['nanoGPT' if name == 'nanogpt' else 'lm']}", flush=True)
        print(f"\nround {i + 1}:\n{table(results)}\n", flush=True)


if __name__ == "__main__":
    main()
