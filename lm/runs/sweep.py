"""Sweeps: run every point of an experiment's `get_sweep(arg)`, then tabulate and plot them.

    python -m lm sweep --config experiments/finetune_glue.py:sst2 --workdir /tmp/sweep
        [--print_commands] [--summarize] [--config.<key>=<value> ...]

The experiment's `get_sweep(arg)` returns an `lm.config.Sweep`: points (dicts of dotted-key
overrides) and the eval metric that ranks them, which also becomes each point's
`train.best_metric`, so a point's best checkpoint and its rank are the same number. Each point
runs in `DIR/<point-name>/`, one after the other, built exactly as `python -m lm train` builds
it from the same flags (`--print_commands` prints those commands). A point is finished once
its `DONE` marker exists (written after `train` returns); running the sweep again skips
finished points and resumes the others from their checkpoints. At the end it writes
`DIR/results.csv`, `DIR/results.md` and `DIR/results.png` and prints the best point per task.
A point stopped by SIGTERM stops the sweep with exit status 75, like `lm train`.

With `Sweep(..., seeds=(0, 1, 2))` every point runs once per seed (`train.seed`, in
`DIR/<point>,seed=<s>/`); `results.csv`/`.md` then hold one row per point, mean ± std (ddof=1)
of the ranking metric over its finished seeds with n and the rank by the mean, and
`runs.csv` one row per run. Override values of any type (numbers, strings, tuples) are
tabulated and plotted (non-numeric ones as categories).

The ranking metric compares points only when they are measured on the same inputs: e.g. the
masked-LM loss of an MLM+NSP point (sentence pairs) and of an MLM-only point (contiguous
text) are not, so a pretraining ablation is compared downstream (`lm study`).
"""

import csv
import json
import pathlib
import re
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

from lm import config as config_lib
from lm.errors import MissingFileError, UserError
from lm.train.writer import is_finite, jsonable, read_records

Point = dict[str, Any]

DONE = "DONE"  # per-point marker: JSON with the train result and the wall time
POINT_FILE = "sweep_point.json"  # per-point: overrides, metric and task (written first)
SWEEP_FILE = "sweep.json"  # the list of points, so --summarize knows which are missing


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
        raise UserError(f"the sweep has repeated points (same overrides): {duplicates}")
    return names


# ---------------------------------------------------------------- config plumbing


def expand(sweep: config_lib.Sweep) -> list[tuple[Point, str]]:
    """(run overrides, the point's name) for every run: each point × each of `seeds`."""
    groups = point_names(sweep.points)
    if not sweep.seeds:
        return [(dict(p), g) for p, g in zip(sweep.points, groups)]
    return [({**p, "train.seed": seed}, g) for p, g in zip(sweep.points, groups)
            for seed in sweep.seeds]


def point_overrides(sweep: config_lib.Sweep, cli_flags: Sequence[str], point: Point
                    ) -> list[str]:
    """The `--config.` flags of one point: the sweep's metric, the command line's, the point's."""
    ranking = {"train.best_metric": sweep.metric, "train.best_mode": sweep.mode}
    return [*config_lib.as_flags(ranking), *cli_flags, *config_lib.as_flags(point)]


def point_config(spec: str, flags: Sequence[str]):
    """The config `python -m lm train --config spec *flags` builds (same loader, same parser)."""
    _, overrides = config_lib.split_overrides(list(flags))
    return config_lib.load(spec, overrides)


def task_of(config, spec: str) -> str:
    """What "best point per task" groups by: the data task, else the experiment arg."""
    path, arg = config_lib.split_spec(spec)
    return str(config.data.get("task") or arg or pathlib.Path(path).stem)


# ---------------------------------------------------------------- running


def _write_json(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1))
    tmp.replace(path)  # atomic: a killed run never leaves half a marker


def run_points(spec: str, workdir: str, cli_overrides: Sequence[str] = (),
               train_fn: Callable | None = None, log=print) -> list[str] | None:
    """Runs every unfinished point in order; returns the names of the points it ran, or None
    when a point was stopped early (SIGTERM/SIGINT: its checkpoint is saved)."""
    sweep = config_lib.load_sweep(spec)
    runs = expand(sweep)
    points = [point for point, _ in runs]
    names = point_names(points)
    root = pathlib.Path(workdir)
    # Build every point's config first: a bad override fails before anything runs.
    flags = [point_overrides(sweep, cli_overrides, point) for point in points]
    configs = [point_config(spec, f) for f in flags]
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / SWEEP_FILE, {"config": spec, "overrides": list(cli_overrides),
                                    "metric": sweep.metric, "mode": sweep.mode,
                                    "seeds": list(sweep.seeds),
                                    "points": [{"name": n, "overrides": p, "group": g}
                                               for n, (p, g) in zip(names, runs)]})
    if train_fn is None:
        from lm.train.loop import train as train_fn
    ran = []
    for i, (name, point, config) in enumerate(zip(names, points, configs)):
        point_dir = root / name
        if (point_dir / DONE).exists():
            log(f"[{i + 1}/{len(names)}] {name}: done, skipped")
            continue
        log(f"[{i + 1}/{len(names)}] {name}: running")
        point_dir.mkdir(parents=True, exist_ok=True)
        info_path = point_dir / POINT_FILE
        # Wall time adds up over the legs of a resumed point (a leg that is killed outright
        # loses its share; one interrupted by an exception, e.g. Ctrl-C, keeps it).
        info = json.loads(info_path.read_text()) if info_path.exists() else {"wall_s": 0.0}
        info.update(overrides=point, metric=sweep.metric, mode=sweep.mode,
                    task=task_of(config, spec))
        _write_json(info_path, info)
        start = time.time()
        try:
            result = train_fn(config, str(point_dir))
        finally:
            info["wall_s"] += time.time() - start
            _write_json(info_path, info)
        if result.get("preempted"):
            log(f"[{i + 1}/{len(names)}] {name}: stopped at step {int(result['step'])}; "
                "run the sweep again to resume")
            return None
        _write_json(point_dir / DONE, {"wall_s": info["wall_s"], "result": result})
        ran.append(name)
    return ran


def commands(spec: str, workdir: str, cli_overrides: Sequence[str] = ()) -> list[str]:
    """One `python -m lm train` command line per point, for a cluster scheduler."""
    sweep = config_lib.load_sweep(spec)
    root = pathlib.Path(workdir)
    points = [point for point, _ in expand(sweep)]
    return [shlex.join(["python", "-m", "lm", "train", "--config", spec,
                        "--workdir", str(root / name),
                        *point_overrides(sweep, cli_overrides, point)])
            for name, point in zip(point_names(points), points)]


# ---------------------------------------------------------------- collecting results


def summarize_point(point_dir: pathlib.Path) -> dict[str, Any]:
    """Final and best eval metrics, steps and wall time of one point, from its files.

    The best step is the one the point's checkpointer kept as best (by the sweep's metric):
    recorded in its DONE marker, or read from its checkpoints while it is unfinished.
    """
    info = json.loads((point_dir / POINT_FILE).read_text()) if (
        point_dir / POINT_FILE).exists() else {}
    done = json.loads((point_dir / DONE).read_text()) if (point_dir / DONE).exists() else None
    history = read_records(point_dir / "metrics.jsonl")
    evals = [row for row in history if any(k.startswith("eval/") for k in row)]
    metric, mode = info.get("metric", "eval/loss"), info.get("mode", "min")
    best_step = (done or {}).get("result", {}).get("best/step")
    if best_step is None and not done and (point_dir / "checkpoints").is_dir():
        best_step = _best_checkpoint(point_dir, metric, mode)
    best = next((row for row in evals if row["step"] == best_step), {})
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


def _best_checkpoint(point_dir: pathlib.Path, metric: str, mode: str) -> int | None:
    from lm.train.checkpoint import Checkpointer

    ckpt = Checkpointer(str(point_dir), best_metric=metric, best_mode=mode, read_only=True)
    step = ckpt.best_step()
    ckpt.close()
    return step


def collect(workdir: str) -> list[dict[str, Any]]:
    """One row per point of the sweep recorded in `workdir` (overrides + summary)."""
    root = pathlib.Path(workdir)
    if not (root / SWEEP_FILE).exists():
        raise MissingFileError(f"{root / SWEEP_FILE} not found: is {workdir} a sweep dir?")
    sweep = json.loads((root / SWEEP_FILE).read_text())
    return [{"point": p["name"], **p["overrides"], **summarize_point(root / p["name"]),
             "_swept": list(p["overrides"]), "_group": p.get("group", p["name"])}
            for p in sweep["points"]]


def aggregate(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per point (its runs over seeds): mean ± std (ddof=1) and n of the finished
    runs' `best/<metric>`, and the point's rank by the mean (1 = best; none without runs)."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["_group"], []).append(row)
    out = []
    for name, runs in groups.items():
        metric, mode = runs[0]["metric"], runs[0]["mode"]
        values = [r[f"best/{metric}"] for r in runs if is_finite(r.get(f"best/{metric}"))]
        overrides = {k: runs[0][k] for k in runs[0]["_swept"] if k != "train.seed"}
        out.append({"point": name, **overrides, "task": runs[0]["task"], "metric": metric,
                    "mode": mode, "n": len(values), "runs": len(runs),
                    "mean": float(np.mean(values)) if values else None,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                    "seeds": [r.get("train.seed") for r in runs
                              if is_finite(r.get(f"best/{metric}"))],
                    "_swept": list(overrides)})
    for task in dict.fromkeys(row["task"] for row in out):
        ranked = [r for r in out if r["task"] == task and r["mean"] is not None]
        ranked.sort(key=lambda r: r["mean"] if r["mode"] == "min" else -r["mean"])
        for i, r in enumerate(ranked):
            r["rank"] = i + 1
    return out


def best_per_task(rows: Sequence[dict]) -> dict[str, dict]:
    """The row with the best `best/<metric>` for each task."""
    best: dict[str, dict] = {}
    for row in rows:
        value = row.get(f"best/{row['metric']}")
        if not is_finite(value):
            continue
        sign = -1 if row["mode"] == "min" else 1
        old = best.get(row["task"])
        if old is None or sign * value > sign * old[f"best/{old['metric']}"]:
            best[row["task"]] = row
    return best


def _columns(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row if not k.startswith("_")))


def _text(value: Any) -> Any:
    """A table cell: sequences as their flag text '(mlm,nsp)', everything else as is."""
    return config_lib.flag_value(value) if isinstance(value, (list, tuple)) else value


def write_tables(rows: Sequence[dict], workdir: str, name: str = "results") -> None:
    """DIR/<name>.csv and DIR/<name>.md, one row per row (point, or run)."""
    root, columns = pathlib.Path(workdir), _columns(rows)
    with open(root / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _text(v) for k, v in row.items()} for row in rows)
    cell = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(_text(v)))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    (root / f"{name}.md").write_text("\n".join(lines) + "\n")


def plot(rows: Sequence[dict], path: pathlib.Path) -> None:
    """Top: the ranking metric against each swept value. Bottom: every point's curves."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: pip install 'lm[plot]' for results.png")
        return
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
            curve = [(h["step"], h[key]) for h in row["_history"] if is_finite(h.get(key))]
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
    pairs = [(row.get(key), row.get(metric)) for row in rows if is_finite(row.get(metric))]
    values = [row.get(key) for row in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    # Categories by their text: lists (a tuple after JSON) and None are not hashable/sortable.
    labels = list(dict.fromkeys(str(_text(v)) for v in values))
    x = [v if numeric else labels.index(str(_text(v))) for v, _ in pairs]
    ax.scatter(x, [m for _, m in pairs])
    if numeric and values and min(values) > 0 and max(values) / min(values) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=key, ylabel=metric, title=f"{metric} vs {key}")


def summarize(workdir: str, log=print) -> list[dict]:
    """Rebuilds the tables and the plot from what is on disk; prints the best point per task."""
    rows = collect(workdir)
    plot(rows, pathlib.Path(workdir) / "results.png")
    if any(row["_group"] != row["point"] for row in rows):  # seeds: a row per point
        write_tables(rows, workdir, name="runs")
        points = aggregate(rows)
        write_tables(points, workdir)
        for row in sorted((r for r in points if r.get("rank") == 1), key=lambda r: r["task"]):
            std = "" if row["std"] is None else f" ± {row['std']:.4f}"
            log(f"best {row['task']}: {row['point']}  {row['metric']}={row['mean']:.4f}{std} "
                f"(n={row['n']})")
    else:
        write_tables(rows, workdir)
        for task, row in best_per_task(rows).items():
            metric = row["metric"]
            log(f"best {task}: {row['point']}  {metric}={row[f'best/{metric}']:.4f} "
                f"(step {row['best_step']})")
    missing = [row["point"] for row in rows if row["status"] != "done"]
    if missing:
        log(f"{len(missing)} point(s) not finished: {', '.join(missing)}")
    return rows
