"""A study's table: finished runs -> results.csv, results.md and results.png.

    write_report(read_runs("DIR/runs.csv"), Study.from_dict(...), "DIR")

Each variant's score per task is mean ± std (n) over pretraining seeds, each the mean of its
finetuning seeds; differences from the baseline carry a Welch 95% CI and p (why Welch over
pretraining seeds: `lm.runs.stats`). A published table, when given, is shown as its own
differences from its own baseline, beside ours. Runs without a value are listed, never
counted: a cell with no value says "missing".
"""

import csv
import dataclasses
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from lm.runs import stats

AVG = "avg"
FLOOR_ROW = "(constant prediction)"  # the trivial baseline, under the variants
MINUS = "\u2212"  # typographic minus, as papers print it
NO_VALUE = "\u2014"  # em dash: no number here (not in the paper; no floor given)


# ---------------------------------------------------------------- the study


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    metric: str  # the name runs.csv's `metric` column holds for this task
    mode: str = "max"  # 'max' | 'min': which way is better (as train.best_mode)
    floor: float | None = None  # a constant prediction's score (unscaled), if known


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published table, in the units it is printed in (GLUE: already ×100)."""

    citation: str
    baseline: str  # the paper's baseline row
    rows: Mapping[str, Mapping[str, float]]  # paper row -> task -> value
    row_of: Mapping[str, str] = dataclasses.field(default_factory=dict)  # variant -> row

    def row(self, variant: str) -> str:
        return self.row_of.get(variant, variant)


@dataclasses.dataclass(frozen=True)
class Study:
    variants: tuple[str, ...]  # table order
    baseline: str  # one of `variants`
    tasks: tuple[Task, ...]  # column order
    reference: Reference | None = None
    # The planned grid; when given, runs absent from runs.csv are listed as missing too.
    pretrain_seeds: tuple[int, ...] = ()
    finetune_seeds: tuple[int, ...] = ()

    def __post_init__(self):
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not one of {self.variants}")
        for task in self.tasks:
            if task.mode not in ("max", "min"):
                raise ValueError(f"task {task.name}: mode must be 'max' or 'min', not "
                                 f"{task.mode!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Study":
        """From plain data (JSON): tasks as [{name, metric, mode}], reference as a dict."""
        ref = d.get("reference")
        return cls(
            variants=tuple(d["variants"]), baseline=d["baseline"],
            tasks=tuple(t if isinstance(t, Task) else Task(**t) for t in d["tasks"]),
            reference=Reference(**ref) if isinstance(ref, Mapping) else ref,
            pretrain_seeds=tuple(d.get("pretrain_seeds", ())),
            finetune_seeds=tuple(d.get("finetune_seeds", ())))

    def average_tasks(self) -> tuple[str, ...]:
        """The tasks the avg column averages: all when they agree on the direction, else
        the 'max' ones; none with fewer than two."""
        modes = {t.mode for t in self.tasks}
        names = tuple(t.name for t in self.tasks if len(modes) == 1 or t.mode == "max")
        return names if len(names) >= 2 else ()

    def columns(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks) + ((AVG,) if self.average_tasks() else ())


# ---------------------------------------------------------------- runs -> scores


class MissingRun(NamedTuple):
    variant: str
    task: str
    pretrain_seed: int
    finetune_seed: int
    workdir: str = ""


def read_runs(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """runs.csv as a list of row dicts (values are parsed where they are used)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _value(row: Mapping[str, Any]) -> float | None:
    """The row's score, or None when the run has none (unfinished, failed, empty, nan)."""
    raw = row.get("value")
    try:
        value = float(raw) if raw not in (None, "") else math.nan
    except ValueError:
        value = math.nan  # 'None', 'failed'...
    return value if math.isfinite(value) else None


def _is_run_of(row: Mapping[str, Any], study: Study, metric_of: Mapping[str, str]) -> bool:
    return (row.get("stage", "finetune") in ("finetune", "", None)
            and row.get("variant") in study.variants and row.get("task") in metric_of
            and row.get("metric") in (None, "", metric_of[row["task"]]))


def collect_scores(rows: Sequence[Mapping[str, Any]], study: Study, scale: float = 100.0
                   ) -> tuple[dict[tuple[str, str], dict[stats.RunKey, float]], list[MissingRun]]:
    """(variant, task) -> {(pretrain_seed, finetune_seed): value × scale}, and the runs with
    no value: rows without one, and planned runs (study seeds) with no row."""
    metric_of = {t.name: t.metric for t in study.tasks}
    scores: dict[tuple[str, str], dict[stats.RunKey, float]] = {
        (v, t): {} for v in study.variants for t in metric_of}
    seen: dict[tuple[str, str, int, int], str] = {}  # every run of the study -> workdir
    for row in rows:
        if not _is_run_of(row, study, metric_of):
            continue
        key = (int(row["pretrain_seed"]), int(row["finetune_seed"]))
        seen.setdefault((row["variant"], row["task"], *key), str(row.get("workdir") or ""))
        value = _value(row)
        if value is None:
            continue
        cell = scores[row["variant"], row["task"]]
        if key in cell:
            raise ValueError(f"two values for {row['variant']}/{row['task']}/{key}")
        cell[key] = value * scale
    for v in study.variants:
        for t in metric_of:
            for p in study.pretrain_seeds:
                for f in study.finetune_seeds:
                    seen.setdefault((v, t, p, f), "")
    missing = [MissingRun(*k, workdir=w) for k, w in seen.items()
               if k[2:] not in scores[k[0], k[1]]]
    order = {v: i for i, v in enumerate(study.variants)} | {t: i for i, t in
                                                            enumerate(metric_of)}
    missing.sort(key=lambda m: (order[m.variant], order[m.task], m.pretrain_seed,
                                m.finetune_seed))
    return scores, missing


# ---------------------------------------------------------------- scores -> cells


@dataclasses.dataclass(frozen=True)
class Cell:
    variant: str
    column: str  # a task or AVG
    summary: stats.Summary
    comparison: stats.Comparison | None  # None for the baseline's own row
    n_missing: int  # runs of this cell (any task, for AVG) with no value


def analyze(rows: Sequence[Mapping[str, Any]], study: Study, scale: float = 100.0
            ) -> tuple[dict[tuple[str, str], Cell], list[MissingRun]]:
    """Every (variant, column) cell of the table, and the missing runs."""
    scores, missing = collect_scores(rows, study, scale)
    cells: dict[tuple[str, str], stats.UnitScores] = {
        k: stats.unit_scores(s) for k, s in scores.items()}
    if study.average_tasks():
        for v in study.variants:
            cells[v, AVG] = stats.task_average([cells[v, t] for t in study.average_tasks()])
    out = {}
    for (v, column), cell in cells.items():
        tasks = study.average_tasks() if column == AVG else (column,)
        comparison = (None if v == study.baseline
                      else stats.compare(cell, cells[study.baseline, column]))
        out[v, column] = Cell(v, column, stats.describe(cell), comparison,
                              sum(m.variant == v and m.task in tasks for m in missing))
    return out, missing


# ---------------------------------------------------------------- results.csv


def csv_rows(cells: Mapping[tuple[str, str], Cell], study: Study, scale: float
             ) -> list[dict[str, Any]]:
    metric_of = {t.name: t.metric for t in study.tasks} | {AVG: AVG}
    out = []
    for v in study.variants:
        for column in study.columns():
            c = cells[v, column]
            s, cmp = c.summary, c.comparison
            out.append(dict(
                variant=v, task=column, metric=metric_of[column], scale=scale,
                unit=s.unit if s.n else "",
                mean=s.mean, std=s.std, n=s.n,
                diff=0.0 if cmp is None else cmp.diff,
                test_unit="" if cmp is None or math.isnan(cmp.diff) else cmp.unit,
                ci_low=None if cmp is None else cmp.ci_low,
                ci_high=None if cmp is None else cmp.ci_high,
                p_value=None if cmp is None else cmp.p_value,
                within_noise=None if cmp is None else cmp.within_noise, missing=c.n_missing))
    return out


def _csv_value(x: Any) -> Any:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else x


def write_csv(rows: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)


# ---------------------------------------------------------------- results.md


def _num(x: float, decimals: int, sign: bool = False) -> str:
    x = round(x, decimals) + 0.0  # never "−0.00"
    text = f"{x:+.{decimals}f}" if sign else f"{x:.{decimals}f}"
    return text.replace("-", MINUS)


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def score_cell(c: Cell, decimals: int) -> str:
    """`mean ± std (n)`; † when n counts runs (one pretraining seed), * when runs are missing."""
    s = c.summary
    if s.n == 0:
        return "missing"
    std = "\u2014" if math.isnan(s.std) else _num(s.std, decimals)
    marks = ("\u2020" if s.unit == stats.RUN else "") + ("*" if c.n_missing else "")
    return f"{_num(s.mean, decimals)} ± {std} ({s.n}){marks}"


def diff_cell(c: Cell, decimals: int) -> str:
    """`+1.23 [−0.40, 2.90] p=0.21 (noise)`; "baseline" on the baseline's own row."""
    cmp = c.comparison
    if cmp is None:
        return "baseline"
    if math.isnan(cmp.diff):
        return "missing"
    text = _num(cmp.diff, decimals, sign=True)
    if not cmp.tested:
        return f"{text} (no test: {cmp.untested})"
    text += (f" [{_num(cmp.ci_low, decimals)}, {_num(cmp.ci_high, decimals)}]"
             f" {_p(cmp.p_value)}")
    text += " (noise)" if cmp.within_noise else ""
    return text + ("\u2020" if cmp.unit == stats.RUN else "")


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def _header(study: Study) -> list[str]:
    arrow = {"max": "\u2191", "min": "\u2193"}
    return ["variant"] + [f"{t.name} ({t.metric} {arrow[t.mode]})" for t in study.tasks] + (
        [AVG] if study.average_tasks() else [])


def paper_diffs(ref: Reference, variant: str, columns: Sequence[str],
                average_tasks: Sequence[str]) -> list[float | None]:
    """The paper's row for `variant` minus the paper's own baseline, per column (None: the
    paper lacks the row or the task). AVG is over `average_tasks`, when it has all of them."""
    row, base = ref.rows.get(ref.row(variant)), ref.rows.get(ref.baseline, {})
    if row is None:
        return [None] * len(columns)
    diff = {t: row[t] - base[t] for t in row if t in base}
    if average_tasks and all(t in diff for t in average_tasks):
        diff[AVG] = sum(diff[t] for t in average_tasks) / len(average_tasks)
    return [diff.get(column) for column in columns]


def _paper_table(ref: Reference, study: Study, decimals: int) -> list[str]:
    columns = study.columns()
    body = []
    for v in study.variants:
        label = v if ref.row(v) == v else f"{v} ({ref.row(v)})"
        if ref.row(v) == ref.baseline:
            body.append([label] + ["baseline"] * len(columns))
            continue
        diffs = paper_diffs(ref, v, columns, study.average_tasks())
        body.append([label] + [NO_VALUE if d is None else _num(d, decimals, sign=True)
                               for d in diffs])
    return [f"## Published: differences from its own baseline `{ref.baseline}`", "",
            f"{ref.citation}. Rows: our variant (the paper's row where it is named "
            f"differently); {NO_VALUE}: not in the paper.", "",
            *_table(["variant (paper row)", *columns], body), ""]


def _intro(study: Study, scale: float) -> list[str]:
    units = (f"Scores ×{scale:g} (metrics are fractions in lm; shown ×{scale:g} as papers do). "
             if scale != 1 else "")
    avg = (f"`{AVG}`: mean over {', '.join(study.average_tasks())} per pretraining seed "
           "(only seeds with every one of them). " if study.average_tasks() else "")
    return ["# Study results", "",
            (units + "mean ± std (n): n pretraining seeds, each the mean of its finetuning "
             "seeds. \u2020: one pretraining seed, so n counts finetuning runs, which measure "
             "finetuning noise only. *: some runs missing (listed below). " + avg
             + (f"{FLOOR_ROW}: the score of predicting one constant (the majority class; 0 "
                "for a correlation): a variant near it learned nothing the task can use."
                if any(t.floor is not None for t in study.tasks) else "")).rstrip(), ""]


TEST_LINE = ("Test: Welch's two-sided t-test (scipy.stats.ttest_ind, equal_var=False), variant "
             "vs baseline, over per-pretraining-seed means (finetuning seeds averaged within "
             "each pretraining seed: they share one pretrained model); 95% CI of the "
             "difference from the Welch–Satterthwaite t. (noise): the CI contains 0. "
             "\u2020: only one pretraining seed on a side, so per-run scores.")


def markdown(cells: Mapping[tuple[str, str], Cell], missing: Sequence[MissingRun],
             study: Study, scale: float, decimals: int) -> str:
    columns = study.columns()
    scores = [[v] + [score_cell(cells[v, c], decimals) for c in columns]
              for v in study.variants]
    diffs = [[v] + [diff_cell(cells[v, c], decimals) for c in columns]
             for v in study.variants]
    floors = {t.name: t.floor * scale for t in study.tasks if t.floor is not None}
    if floors:
        average = [floors[t] for t in study.average_tasks() if t in floors]
        if study.average_tasks() and len(average) == len(study.average_tasks()):
            floors[AVG] = sum(average) / len(average)
        scores.append([FLOOR_ROW] + [_num(floors[c], decimals) if c in floors else NO_VALUE
                                     for c in columns])
    lines = [*_intro(study, scale), "## Scores", "", *_table(_header(study), scores), "",
             f"## Difference from the baseline `{study.baseline}`", "",
             *_table(_header(study), diffs), "", TEST_LINE, ""]
    if study.reference is not None:
        lines += _paper_table(study.reference, study, decimals)
    if missing:
        lines += [f"## Missing runs ({len(missing)})", "",
                  "missing: variant/task/pretrain seed/finetune seed", ""]
        lines += [f"- {m.variant}/{m.task}/{m.pretrain_seed}/{m.finetune_seed}"
                  + (f" ({m.workdir})" if m.workdir else "") for m in missing]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- results.png


def plot(cells: Mapping[tuple[str, str], Cell], study: Study, path: pathlib.Path,
         scale: float) -> None:
    """One panel per column: each variant's per-seed scores as points, mean ± 95% CI."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    columns = study.columns()
    metric_of = {t.name: t.metric for t in study.tasks} | {AVG: "task average"}
    floor = {t.name: t.floor for t in study.tasks}  # red dotted: a constant prediction
    fig, axes = plt.subplots(1, len(columns), figsize=(0.9 * len(study.variants) * len(columns)
                                                       + 2.0, 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for i, v in enumerate(study.variants):
            s = cells[v, column].summary
            if not s.n:
                ax.annotate("missing", (i, 0.03), xycoords=("data", "axes fraction"),
                            ha="center", fontsize=8, color="gray")
                continue
            jitter = [i - 0.15 + 0.3 * k / max(s.n - 1, 1) for k in range(s.n)]
            ax.scatter(jitter, s.scores, s=12, alpha=0.5, color=f"C{i}")
            low, high = stats.mean_ci(s.scores)
            ax.errorbar([i], [s.mean], yerr=[[s.mean - low], [high - s.mean]],
                        fmt="o", color=f"C{i}", capsize=4)
        base = cells[study.baseline, column].summary
        if base.n:
            ax.axhline(base.mean, color="gray", lw=0.8, ls="--")
        if floor.get(column) is not None:
            ax.axhline(floor[column] * scale, color="red", lw=0.8, ls=":")
        ax.set_xticks(range(len(study.variants)), study.variants, rotation=30, ha="right")
        ax.set(title=f"{column} ({metric_of[column]})",
               ylabel=f"score ×{scale:g}" if scale != 1 else "score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- all of it


def write_report(rows: Sequence[Mapping[str, Any]], study: Study | Mapping[str, Any],
                 out_dir: str | pathlib.Path, scale: float = 100.0,
                 decimals: int | None = None, log=print) -> list[dict[str, Any]]:
    """OUT/results.csv, results.md, results.png from run rows; returns the csv rows.

    `scale` multiplies every value (runs are fractions; tables show ×100); `decimals`
    defaults to 2 at ×100 and 4 at ×1."""
    study = study if isinstance(study, Study) else Study.from_dict(study)
    decimals = (2 if scale >= 100 else 4) if decimals is None else decimals
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells, missing = analyze(rows, study, scale)
    table = csv_rows(cells, study, scale)
    write_csv(table, out / "results.csv")
    (out / "results.md").write_text(markdown(cells, missing, study, scale, decimals))
    try:
        plot(cells, study, out / "results.png", scale)
    except ImportError:
        log("matplotlib is not installed: pip install 'lm[plot]' for results.png")
    return table
