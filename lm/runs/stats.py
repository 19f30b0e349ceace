"""Statistics of a study (numpy/scipy only): per-seed scores -> mean ± std (n), Welch's test.

Unit of replication: the pretraining seed. The finetuning runs of one pretrained model share
its draw of pretraining noise, so they are not independent samples of the variant; counting
them as such shrinks the standard error by up to sqrt(#finetuning seeds) and calls noise a
difference. So each pretraining seed's finetuning scores are averaged first (`by_unit`), and a
variant is compared with the baseline by Welch's t-test over those means: Welch, not Student,
because variants need not share a variance or a number of seeds. The 95% CI of the difference
uses the same Welch–Satterthwaite t, so "CI contains 0" and "p >= 0.05" agree. With a single
pretraining seed there is nothing to average over: the fallback is per-run scores (unit RUN),
which measure finetuning noise only; the report marks those cells.

The task average is taken per unit (a pretraining seed, or a run) over the units that have
every task, then summarised and tested like a task.
"""

import dataclasses
import math
import warnings
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

PRETRAIN = "pretrain seed"  # a score per pretraining seed: the mean of its finetuning seeds
RUN = "run"  # a score per finetuning run (fallback when there is one pretraining seed)
UNITS = (PRETRAIN, RUN)

RunKey = tuple[int, int]  # (pretrain_seed, finetune_seed)
UnitScores = dict[str, dict[Hashable, float]]  # unit -> unit key -> score


@dataclasses.dataclass(frozen=True)
class Summary:
    """mean ± std (ddof=1) over `n` scores of one unit; nan where undefined."""

    mean: float
    std: float
    n: int
    unit: str
    scores: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """variant − baseline: difference of means, its CI and Welch's two-sided p (nan: no test)."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    unit: str
    untested: str = ""  # why there is no test: "n<2" or "no spread" (every score the same)

    @property
    def tested(self) -> bool:
        return not math.isnan(self.ci_low)

    @property
    def within_noise(self) -> bool | None:
        """True when the CI contains 0; None when there was no test."""
        return self.ci_low <= 0.0 <= self.ci_high if self.tested else None


def by_unit(scores: Mapping[RunKey, float], unit: str) -> dict[Hashable, float]:
    """Per-run scores -> the unit's: PRETRAIN averages the finetuning seeds of each seed."""
    if unit == RUN:
        return dict(scores)
    groups: dict[int, list[float]] = defaultdict(list)
    for (pretrain_seed, _), value in scores.items():
        groups[pretrain_seed].append(value)
    return {seed: float(np.mean(values)) for seed, values in groups.items()}


def unit_scores(scores: Mapping[RunKey, float]) -> UnitScores:
    """One cell's scores in both units."""
    return {unit: by_unit(scores, unit) for unit in UNITS}


def task_average(per_task: Sequence[UnitScores]) -> UnitScores:
    """Mean over tasks per unit key, only over the keys that every task has."""
    out: UnitScores = {}
    for unit in UNITS:
        cells = [cell[unit] for cell in per_task]
        common = set.intersection(*(set(c) for c in cells)) if cells else set()
        out[unit] = {k: float(np.mean([c[k] for c in cells])) for k in sorted(common)}
    return out


def summary_unit(cell: UnitScores) -> str:
    return PRETRAIN if len(cell[PRETRAIN]) >= 2 else RUN


def comparison_unit(a: UnitScores, b: UnitScores) -> str:
    """PRETRAIN when both sides have two pretraining seeds, else RUN for both."""
    return PRETRAIN if min(len(a[PRETRAIN]), len(b[PRETRAIN])) >= 2 else RUN


def summarize(scores: Sequence[float], unit: str) -> Summary:
    x = np.asarray(scores, dtype=float)
    mean = float(x.mean()) if x.size else math.nan
    std = float(x.std(ddof=1)) if x.size >= 2 else math.nan
    return Summary(mean, std, int(x.size), unit, tuple(float(v) for v in x))


def welch(a: Sequence[float], b: Sequence[float], unit: str,
          confidence: float = 0.95) -> Comparison:
    """mean(a) − mean(b) with Welch's t-test; CI and p are nan when a side has n < 2 or
    both sides have zero variance (no estimate of the noise)."""
    a_N, b_M = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a_N.mean() - b_M.mean()) if a_N.size and b_M.size else math.nan
    # Equal scores up to float rounding (0.527 × 100 three times) count as no spread: a
    # variance of 1e-28 would give a CI of width 0 and a meaningless p.
    tolerance = 1e-9 * max(1.0, *np.abs(a_N), *np.abs(b_M)) if a_N.size and b_M.size else 1.0
    spread = max(np.ptp(a_N), np.ptp(b_M)) if min(a_N.size, b_M.size) >= 2 else 0.0
    if not spread > tolerance:
        why = "n<2" if min(a_N.size, b_M.size) < 2 else "no spread"
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, unit, why)
    with warnings.catch_warnings():  # one side constant up to rounding (RTE at its floor):
        warnings.simplefilter("ignore", RuntimeWarning)  # its variance ~0 is the right answer
        res = stats.ttest_ind(a_N, b_M, equal_var=False)
    ci = res.confidence_interval(confidence_level=confidence)  # Welch–Satterthwaite t
    return Comparison(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df),
                      unit)


def compare(variant: UnitScores, baseline: UnitScores) -> Comparison:
    unit = comparison_unit(variant, baseline)
    return welch(list(variant[unit].values()), list(baseline[unit].values()), unit)


def describe(cell: UnitScores) -> Summary:
    unit = summary_unit(cell)
    return summarize(list(cell[unit].values()), unit)


def mean_ci(scores: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """t-interval of the mean of `scores`; (nan, nan) with fewer than two scores."""
    if len(scores) < 2:
        return math.nan, math.nan
    mean, sem = float(np.mean(scores)), float(stats.sem(scores))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(confidence, len(scores) - 1, loc=mean, scale=sem)
    return float(low), float(high)
