"""Sweeps: run every point of an experiment's `get_sweep(arg)`, then tabulate and plot them.

    python -m lm sweep --config experiments/finetune_glue.py:sst2 --workdir /tmp/sweep
        [--print_commands] [--summarize] [--config.<key>=<value> ...]

Each point is a dict of dotted-key overrides and runs in `DIR/<point-name>/`, one after the
other. A point is finished once its `DONE` marker exists (written after `train` returns);
running the sweep again skips finished points and calls `train` again on the others, which
resumes from their checkpoints. When all points are done it writes `DIR/results.csv`,
`DIR/results.md` and `DIR/results.png` and prints the best point per task.
"""

import argparse
import csv
import itertools
import json
import math
import pathlib
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

Point = dict[str, Any]

DONE = "DONE"  # per-point marker: JSON with the train result and the wall time
POINT_FILE = "sweep_point.json"  # per-point: overrides, metric and task (written first)
SWEEP_FILE = "sweep.json"  # the list of points, so --summarize knows which are missing


# ---------------------------------------------------------------- grid helpers


def product(**axes: Sequence[Any]) -> list[Point]:
    """Every combination of the axes' values; the first axis varies slowest.

    Keys are dotted config paths: `product(**{"train.lr": [1e-4, 3e-4], "train.seed": [0]})`.
    """
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zip_(**axes: Sequence[Any]) -> list[Point]:
    """The i-th point takes the i-th value of every axis (all axes have the same length)."""
    lengths = {key: len(values) for key, values in axes.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_ needs axes of equal length; got {lengths}")
    keys = list(axes)
    return [dict(zip(keys, values)) for values in zip(*axes.values())]


def chain(*grids: Sequence[Point]) -> list[Point]:
    """The points of several grids, one after the other."""
    return [dict(point) for grid in grids for point in grid]


# ---------------------------------------------------------------- point names


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # 5e-05, 0.1: short and exact
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value)
    return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """`train.lr` -> `lr` when no other swept key ends the same way."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def point_name(point: Point, short: dict[str, str] | None = None) -> str:
    """A filesystem-safe directory name from the overrides, e.g. `lr=5e-05,batch_size=16`."""
    short = short or {key: key for key in point}
    name = ",".join(f"{short[k]}={_format_value(v)}" for k, v in point.items()) or "default"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)[:200]


def point_names(points: Sequence[Point]) -> list[str]:
    """One unique name per point (an error if two points have the same overrides)."""
    keys = list(dict.fromkeys(key for point in points for key in point))
    short = _short_keys(keys)
    names = [point_name(point, short) for point in points]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"the sweep has repeated points (same overrides): {duplicates}")
    return names


# ---------------------------------------------------------------- config plumbing


def split_spec(spec: str) -> tuple[str, str | None]:
    """`experiments/x.py:arg` -> (`experiments/x.py`, `arg`)."""
    path, _, arg = spec.partition(":")
    return path, (arg or None)


def get_sweep(spec: str) -> list[Point]:
    """The points of the experiment file's `get_sweep(arg)`."""
    import importlib.util

    path, arg = split_spec(spec)
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"experiment file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("experiment_sweep", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep(arg); it cannot be swept")
    points = list(module.get_sweep(arg))
    if not points:
        raise ValueError(f"{path}: get_sweep({arg!r}) returned no points")
    return points


def parse_flags(flags: Sequence[str]) -> dict[str, str]:
    """`["--config.train.lr=3e-5"]` -> `{"train.lr": "3e-5"}` (values stay text)."""
    out = {}
    for flag in flags:
        key, sep, text = flag.removeprefix("--config.").partition("=")
        if not flag.startswith("--config.") or not sep:
            raise ValueError(f"bad override {flag!r}: expected --config.<dotted.key>=<value>")
        out[key] = text
    return out


def point_config(spec: str, cli_flags: Sequence[str], point: Point):
    """The config `python -m lm train` builds for this point (same parsing, same order)."""
    from lm.train import config as train_config

    config = train_config.load_experiment(spec)  # a fresh ConfigDict: safe to edit in place
    # In place, not via a copy: fields the experiment derives lazily (FieldReferences, e.g.
    # steps = epochs × steps per epoch) must follow overridden batch sizes and epochs.
    for key, text in parse_flags(list(cli_flags) + as_flags(point)).items():
        train_config.override(config, key, text)
    return config


def _get(config, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return default
        node = node[part]
    return node


def metric_and_mode(config) -> tuple[str, str]:
    """The metric that ranks points: `train.best_metric` / `best_mode` (default eval loss)."""
    metric = _get(config, "train.best_metric") or "eval/loss"
    mode = _get(config, "train.best_mode") or "min"
    return metric, mode


def task_of(config, spec: str) -> str:
    """What "best point per task" groups by: the data task, else the experiment arg."""
    path, arg = split_spec(spec)
    return str(_get(config, "data.task") or arg or pathlib.Path(path).stem)


# ---------------------------------------------------------------- running


def _jsonable(x: Any) -> Any:
    return float(x) if hasattr(x, "__float__") else str(x)  # numpy / jax scalars -> float


def _write_json(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    tmp.replace(path)  # atomic: a killed run never leaves half a marker


def run_points(spec: str, workdir: str, cli_overrides: Sequence[str] = (),
               train_fn: Callable | None = None, log=print) -> list[str]:
    """Runs every unfinished point in order; returns the names of the points it ran."""
    points = get_sweep(spec)
    names = point_names(points)
    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / SWEEP_FILE, {"config": spec, "overrides": list(cli_overrides),
                                    "points": [{"name": n, "overrides": p}
                                               for n, p in zip(names, points)]})
    if train_fn is None:
        from lm.train import train as train_fn
    ran = []
    for i, (name, point) in enumerate(zip(names, points)):
        point_dir = root / name
        if (point_dir / DONE).exists():
            log(f"[{i + 1}/{len(points)}] {name}: done, skipped")
            continue
        log(f"[{i + 1}/{len(points)}] {name}: running")
        config = point_config(spec, cli_overrides, point)
        metric, mode = metric_and_mode(config)
        point_dir.mkdir(parents=True, exist_ok=True)
        info_path = point_dir / POINT_FILE
        # Wall time adds up over the legs of a resumed point (a leg that is killed outright
        # loses its share; one interrupted by an exception, e.g. Ctrl-C, keeps it).
        info = json.loads(info_path.read_text()) if info_path.exists() else {"wall_s": 0.0}
        info.update(overrides=point, metric=metric, mode=mode, task=task_of(config, spec))
        _write_json(info_path, info)
        start = time.time()
        try:
            result = train_fn(config, str(point_dir))
        finally:
            info["wall_s"] += time.time() - start
            _write_json(info_path, info)
        if result.get("step", config.train.steps) < config.train.steps:
            # train() returns early only when preempted (SIGTERM/SIGINT, checkpoint saved):
            # the point is not done, and neither is the sweep.
            log(f"[{i + 1}/{len(points)}] {name}: stopped at step {int(result['step'])}; "
                "run the sweep again to resume")
            return ran
        _write_json(point_dir / DONE, {"wall_s": info["wall_s"], "result": result})
        ran.append(name)
    return ran


def as_flags(point: Point) -> list[str]:
    """`{"train.lr": 5e-05}` -> `["--config.train.lr=5e-05"]` (how `lm train` reads them)."""
    return [f"--config.{key}={_flag_value(value)}" for key, value in point.items()]


def _flag_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "")\
            + ")"
    return repr(value) if isinstance(value, float) else str(value)


def commands(spec: str, workdir: str, cli_overrides: Sequence[str] = ()) -> list[str]:
    """One `python -m lm train` command line per point, for a cluster scheduler."""
    points = get_sweep(spec)
    root = pathlib.Path(workdir)
    return [shlex.join(["python", "-m", "lm", "train", "--config", spec,
                        "--workdir", str(root / name), *cli_overrides, *as_flags(point)])
            for name, point in zip(point_names(points), points)]


# ---------------------------------------------------------------- collecting results


def read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_point(point_dir: pathlib.Path) -> dict[str, Any]:
    """Final and best eval metrics, steps and wall time of one point, from its files."""
    info = json.loads((point_dir / POINT_FILE).read_text()) if (
        point_dir / POINT_FILE).exists() else {}
    done = json.loads((point_dir / DONE).read_text()) if (point_dir / DONE).exists() else None
    history = read_jsonl(point_dir / "metrics.jsonl")
    evals = [row for row in history if any(k.startswith("eval/") for k in row)]
    metric, mode = info.get("metric", "eval/loss"), info.get("mode", "min")
    scored = [row for row in evals if _finite(row.get(metric))]
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda row: row[metric]) if scored else {}
    final = evals[-1] if evals else {}
    return {
        "status": "done" if done else ("partial" if history else "missing"),
        "task": info.get("task", ""), "metric": metric, "mode": mode,
        "steps": max((row.get("step", 0) for row in history), default=0),
        "wall_s": round(done["wall_s"], 1) if done else None,
        "best_step": best.get("step"),
        **{f"final/{k}": v for k, v in final.items() if k.startswith("eval/")},
        **{f"best/{k}": v for k, v in best.items() if k.startswith("eval/")},
        "_history": history,
    }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def collect(workdir: str) -> list[dict[str, Any]]:
    """One row per point of the sweep recorded in `workdir` (overrides + summary)."""
    root = pathlib.Path(workdir)
    if not (root / SWEEP_FILE).exists():
        raise FileNotFoundError(f"{root / SWEEP_FILE} not found: is {workdir} a sweep dir?")
    sweep = json.loads((root / SWEEP_FILE).read_text())
    return [{"point": p["name"], **p["overrides"], **summarize_point(root / p["name"]),
             "_swept": list(p["overrides"])} for p in sweep["points"]]


def best_per_task(rows: Sequence[dict]) -> dict[str, dict]:
    """The row with the best `best/<metric>` for each task."""
    best: dict[str, dict] = {}
    for row in rows:
        value = row.get(f"best/{row['metric']}")
        if not _finite(value):
            continue
        sign = -1 if row["mode"] == "min" else 1
        old = best.get(row["task"])
        if old is None or sign * value > sign * old[f"best/{old['metric']}"]:
            best[row["task"]] = row
    return best


def _columns(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))


def write_tables(rows: Sequence[dict], workdir: str) -> None:
    """DIR/results.csv and DIR/results.md, one row per point."""
    root, columns = pathlib.Path(workdir), _columns(rows)
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    cell = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    (root / "results.md").write_text("\n".join(lines) + "\n")


def plot(rows: Sequence[dict], path: pathlib.Path) -> None:
    """Top: the ranking metric against each swept value. Bottom: every point's curves."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    swept = list(dict.fromkeys(key for row in rows for key in row["_swept"]))
    metric = rows[0]["metric"]
    ncols = max(len(swept), 2)
    fig, axes = plt.subplots(2, ncols, figsize=(4.2 * ncols, 7.5), squeeze=False)
    for ax, key in zip(axes[0], swept):
        _plot_against(ax, rows, key, f"best/{metric}")
    for ax in axes[0][len(swept):]:
        ax.axis("off")
    for ax, (key, title) in zip(axes[1], ((metric, f"{metric} (eval)"),
                                          ("train/loss", "train/loss"))):
        for row in rows:
            curve = [(h["step"], h[key]) for h in row["_history"] if _finite(h.get(key))]
            if curve:
                ax.plot(*zip(*curve), marker="." if key == metric else None,
                        label=row["point"], lw=1)
        ax.set(xlabel="step", title=title)
    if len(rows) <= 12:
        axes[1][0].legend(fontsize=6)
    for ax in axes[1][2:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_against(ax, rows: Sequence[dict], key: str, metric: str) -> None:
    """Scatter of `metric` against the swept `key` (categorical when not numeric)."""
    pairs = [(row[key], row.get(metric)) for row in rows if _finite(row.get(metric))]
    values = list(dict.fromkeys(row[key] for row in rows))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    x = [v if numeric else values.index(v) for v, _ in pairs]
    ax.scatter(x, [m for _, m in pairs])
    if numeric and values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key}")


def summarize(workdir: str, log=print) -> list[dict]:
    """Rebuilds the tables and the plot from what is on disk; prints the best point per task."""
    rows = collect(workdir)
    write_tables(rows, workdir)
    plot(rows, pathlib.Path(workdir) / "results.png")
    for task, row in best_per_task(rows).items():
        metric = row["metric"]
        log(f"best {task}: {row['point']}  {metric}={row[f'best/{metric}']:.4f} "
            f"(step {row['best_step']})")
    missing = [row["point"] for row in rows if row["status"] != "done"]
    if missing:
        log(f"{len(missing)} point(s) not finished: {', '.join(missing)}")
    return rows


# ---------------------------------------------------------------- command line


def main(argv: list[str]) -> None:
    """`python -m lm sweep`: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m lm sweep", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiments/<file>.py[:<arg>]")
    parser.add_argument("--workdir", required=True, help="one subdirectory per point")
    parser.add_argument("--print_commands", action="store_true",
                        help="print one `python -m lm train` command per point and exit")
    parser.add_argument("--summarize", action="store_true",
                        help="only rebuild results.csv/.md/.png from DIR")
    args, rest = parser.parse_known_args(argv[1:])
    try:
        parse_flags(rest)
    except ValueError as e:
        parser.error(str(e))
    if args.print_commands:
        print("\n".join(commands(args.config, args.workdir, rest)))
        return
    if not args.summarize:
        run_points(args.config, args.workdir, rest)
    summarize(args.workdir)


if __name__ == "__main__":
    main(sys.argv)
