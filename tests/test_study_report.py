"""A study's statistics and report (lm.runs.stats, lm.runs.report): numpy/scipy only.

The statistics are checked against the formulas computed here by hand; the tables by
parsing results.md and results.csv.
"""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from lm.runs import report, stats

MINUS = "\u2212"


def _hand_welch(a, b):
    """Welch's t, df, two-sided p and 95% CI of mean(a) − mean(b), from the formulas."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n1, n2 = len(a), len(b)
    m1, m2 = a.sum() / n1, b.sum() / n2
    v1, v2 = ((a - m1) ** 2).sum() / (n1 - 1), ((b - m2) ** 2).sum() / (n2 - 1)
    se = math.sqrt(v1 / n1 + v2 / n2)
    t = (m1 - m2) / se
    df = (v1 / n1 + v2 / n2) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    p = 2 * sps.t.sf(abs(t), df)
    half = sps.t.ppf(0.975, df) * se
    return dict(diff=m1 - m2, df=df, p=p, low=m1 - m2 - half, high=m1 - m2 + half)


def _rows(scores, task="sst2", metric="accuracy"):
    """{variant: {pretrain_seed: [value per finetune seed]}} -> runs.csv rows."""
    return [dict(stage="finetune", variant=v, task=task, pretrain_seed=p, finetune_seed=f,
                 metric=metric, value=value, steps=100, wall_s=1.0, workdir=f"/w/{v}/{p}/{f}")
            for v, seeds in scores.items() for p, values in seeds.items()
            for f, value in enumerate(values)]


def _study(variants=("base", "new"), tasks=("sst2",), **kw):
    metric = {"sst2": "accuracy", "mrpc": "f1", "cola": "mcc"}
    return report.Study.from_dict(dict(
        variants=list(variants), baseline=variants[0],
        tasks=[dict(name=t, metric=metric[t]) for t in tasks], **kw))


def _csv(path):
    with open(path) as f:
        return {(r["variant"], r["task"]): r for r in csv.DictReader(f)}


def _md_table(md, heading):
    """The markdown table under `## heading...` as a list of rows of cells."""
    lines = md.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_summary_and_welch_match_the_formulas():
    a, b = [0.80, 0.82, 0.85, 0.79], [0.78, 0.80, 0.77]
    s = stats.summarize(a, stats.PRETRAIN)
    assert s.n == 4 and s.mean == pytest.approx(sum(a) / 4)
    assert s.std == pytest.approx(math.sqrt(sum((x - s.mean) ** 2 for x in a) / 3))
    want, got = _hand_welch(a, b), stats.welch(a, b, stats.PRETRAIN)
    assert got.diff == pytest.approx(want["diff"])
    assert got.df == pytest.approx(want["df"])
    assert got.p_value == pytest.approx(want["p"])
    assert (got.ci_low, got.ci_high) == pytest.approx((want["low"], want["high"]))
    assert got.within_noise == (want["low"] <= 0 <= want["high"])


def test_no_test_says_why(tmp_path):
    """A task every run scores at its floor (RTE at the majority class) has no spread: no
    CI, and the table says so, rather than blaming the number of seeds."""
    assert stats.welch([0.5], [0.4, 0.45], stats.PRETRAIN).untested == "n<2"
    floor = stats.welch([0.527, 0.527], [0.527, 0.527, 0.527], stats.PRETRAIN)
    assert floor.untested == "no spread" and not floor.tested and floor.diff == 0
    rows = _rows({"base": {p: [0.527] for p in range(3)}, "new": {p: [0.527] for p in range(2)}})
    report.write_report(rows, _study(), tmp_path)
    assert "+0.00 (no test: no spread)" in (tmp_path / "results.md").read_text()


def test_the_constant_prediction_row_sits_under_the_variants(tmp_path):
    """Each task's floor ×100 (and their mean under avg) in a last row of the scores table."""
    rows = (_rows({"base": {0: [0.70], 1: [0.72]}, "new": {0: [0.71], 1: [0.69]}})
            + _rows({"base": {0: [0.80], 1: [0.82]}, "new": {0: [0.81], 1: [0.83]}},
                    task="mrpc", metric="f1"))
    study = report.Study.from_dict(dict(
        variants=["base", "new"], baseline="base",
        tasks=[dict(name="sst2", metric="accuracy", floor=444 / 872),
               dict(name="mrpc", metric="f1", floor=2 * 279 / 687)]))
    report.write_report(rows, study, tmp_path)
    table = _md_table((tmp_path / "results.md").read_text(), "Scores")
    assert [r[0] for r in table[1:]] == ["base", "new", report.FLOOR_ROW]
    assert table[-1][1:] == [f"{100 * 444 / 872:.2f}", f"{100 * 558 / 687:.2f}",
                             f"{50 * (444 / 872 + 558 / 687):.2f}"]
    no_floor = tmp_path / "none"
    report.write_report(rows, _study(tasks=("sst2", "mrpc")), no_floor)
    assert report.FLOOR_ROW not in (no_floor / "results.md").read_text()


def test_report_csv_matches_the_formulas(tmp_path):
    a, b = [0.80, 0.82, 0.85, 0.79], [0.78, 0.80, 0.77]
    rows = _rows({"base": {p: [x] for p, x in enumerate(b)},
                  "new": {p: [x] for p, x in enumerate(a)}})
    report.write_report(rows, _study(), tmp_path)
    got, want = _csv(tmp_path / "results.csv")["new", "sst2"], _hand_welch(a, b)
    assert float(got["mean"]) == pytest.approx(100 * np.mean(a))  # scale=100
    assert float(got["std"]) == pytest.approx(100 * np.std(a, ddof=1))
    assert int(got["n"]) == 4
    assert float(got["diff"]) == pytest.approx(100 * want["diff"])
    assert float(got["ci_low"]) == pytest.approx(100 * want["low"])
    assert float(got["ci_high"]) == pytest.approx(100 * want["high"])
    assert float(got["p_value"]) == pytest.approx(want["p"])  # p does not depend on scale


def test_finetune_seeds_are_averaged_within_a_pretraining_seed(tmp_path):
    # Finetuning seeds agree closely within a pretrained model, pretrained models differ:
    # over 6 "independent" runs the difference looks real; over 2 pretraining seeds it is not.
    new = {0: [0.90, 0.91, 0.90], 1: [0.80, 0.81, 0.80]}
    base = {0: [0.84, 0.85, 0.84], 1: [0.83, 0.84, 0.83]}
    report.write_report(_rows({"base": base, "new": new}), _study(), tmp_path, scale=1)
    got = _csv(tmp_path / "results.csv")["new", "sst2"]
    per_seed = _hand_welch([np.mean(v) for v in new.values()],
                           [np.mean(v) for v in base.values()])
    per_run = _hand_welch(sum(new.values(), []), sum(base.values(), []))
    assert int(got["n"]) == 2 and got["unit"] == stats.PRETRAIN
    assert float(got["p_value"]) == pytest.approx(per_seed["p"])
    assert float(got["ci_low"]) == pytest.approx(per_seed["low"])
    assert float(got["p_value"]) != pytest.approx(per_run["p"], rel=0.1)
    assert float(got["std"]) == pytest.approx(np.std([0.9033333, 0.8033333], ddof=1))


def test_one_pretraining_seed_falls_back_to_runs_and_says_so(tmp_path):
    new, base = {0: [0.90, 0.91, 0.93]}, {0: [0.84, 0.85, 0.86]}
    report.write_report(_rows({"base": base, "new": new}), _study(), tmp_path)
    got = _csv(tmp_path / "results.csv")["new", "sst2"]
    want = _hand_welch(new[0], base[0])
    assert got["unit"] == stats.RUN and got["test_unit"] == stats.RUN and int(got["n"]) == 3
    assert float(got["p_value"]) == pytest.approx(want["p"])
    scores = _md_table((tmp_path / "results.md").read_text(), "Scores")
    assert scores[2][1].endswith("(3)\u2020")


def test_markdown_layout(tmp_path):
    rng = np.random.default_rng(0)
    variants = ("base", "wide", "deep")
    rows = []
    for task in ("sst2", "mrpc"):
        rows += _rows({v: {p: list(0.8 + 0.01 * rng.standard_normal(2)) for p in range(3)}
                       for v in variants}, task=task, metric={"sst2": "accuracy",
                                                              "mrpc": "f1"}[task])
    report.write_report(rows, _study(variants, ("sst2", "mrpc")), tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "×100" in md.split("## Scores")[0]
    scores, diffs = _md_table(md, "Scores"), _md_table(md, "Difference")
    assert scores[0] == ["variant", "sst2 (accuracy \u2191)", "mrpc (f1 \u2191)", "avg"]
    assert [r[0] for r in scores[1:]] == list(variants)
    assert [r[0] for r in diffs[1:]] == list(variants)
    assert all(len(r) == 4 for r in scores + diffs)
    assert diffs[1][1:] == ["baseline"] * 3
    for cell in scores[2][1:]:
        assert cell.endswith("(3)") and " ± " in cell
    for cell in diffs[2][1:]:
        assert cell[0] in "+" + MINUS and " p" in cell
    assert "Welch" in md and "ttest_ind" in md


def test_noise_is_marked_only_where_the_ci_contains_zero(tmp_path):
    rows = _rows({"base": {0: [0.80], 1: [0.81], 2: [0.79]},
                  "same": {0: [0.805], 1: [0.795], 2: [0.81]},
                  "better": {0: [0.90], 1: [0.91], 2: [0.89]},
                  "worse": {0: [0.70], 1: [0.71], 2: [0.69]}})
    report.write_report(rows, _study(("base", "same", "better", "worse")), tmp_path)
    diffs = _md_table((tmp_path / "results.md").read_text(), "Difference")
    assert diffs[2][1].endswith("(noise)")
    assert "noise" not in diffs[3][1] and "noise" not in diffs[4][1]
    assert diffs[4][1].startswith(MINUS)
    got = _csv(tmp_path / "results.csv")
    assert got["same", "sst2"]["within_noise"] == "True"
    assert got["better", "sst2"]["within_noise"] == got["worse", "sst2"]["within_noise"] == "False"


def test_missing_runs_are_listed_and_never_numbers(tmp_path):
    rows = _rows({"base": {0: [0.80, 0.81], 1: [0.82, 0.83]},
                  "new": {0: [0.85, None], 1: [0.87, 0.85]}})
    rows += _rows({"base": {0: [0.5, 0.6], 1: [0.55, 0.58]}, "new": {0: [None, "nan"]}},
                  task="mrpc", metric="f1")
    study = _study(tasks=("sst2", "mrpc"), pretrain_seeds=[0, 1], finetune_seeds=[0, 1])
    report.write_report(rows, study, tmp_path)
    md = (tmp_path / "results.md").read_text()
    scores, diffs = _md_table(md, "Scores"), _md_table(md, "Difference")
    assert scores[2][1] == "85.50 ± 0.71 (2)*"  # seeds 0 and 1: 85 and mean(87, 85)
    assert scores[2][2] == "missing" and diffs[2][2] == "missing"
    assert scores[2][3] == "missing" and diffs[2][3] == "missing"  # avg: no seed has mrpc
    listed = md.split("## Missing runs")[1]
    for run in ("new/sst2/0/1", "new/mrpc/0/0", "new/mrpc/0/1", "new/mrpc/1/0",
                "new/mrpc/1/1"):
        assert f"- {run}" in listed
    assert "base/" not in listed
    got = _csv(tmp_path / "results.csv")["new", "mrpc"]
    assert got["mean"] == got["diff"] == got["p_value"] == "" and got["n"] == "0"


def test_average_column_uses_seeds_with_every_task(tmp_path):
    sst2 = {"base": {0: [0.80], 1: [0.82], 2: [0.84]}, "new": {0: [0.90], 1: [0.92], 2: [0.7]}}
    mrpc = {"base": {0: [0.60], 1: [0.62], 2: [0.64]}, "new": {0: [0.70], 1: [0.74]}}
    rows = _rows(sst2) + _rows(mrpc, task="mrpc", metric="f1")
    report.write_report(rows, _study(tasks=("sst2", "mrpc")), tmp_path, scale=1)
    got = _csv(tmp_path / "results.csv")
    new_avg = [(0.90 + 0.70) / 2, (0.92 + 0.74) / 2]  # seed 2 has no mrpc
    base_avg = [(0.80 + 0.60) / 2, (0.82 + 0.62) / 2, (0.84 + 0.64) / 2]
    assert int(got["new", "avg"]["n"]) == 2
    assert float(got["new", "avg"]["mean"]) == pytest.approx(np.mean(new_avg))
    assert float(got["new", "avg"]["p_value"]) == pytest.approx(
        _hand_welch(new_avg, base_avg)["p"])


def test_published_differences_are_from_its_own_baseline(tmp_path):
    rows = _rows({"base": {0: [0.9], 1: [0.91]}, "new": {0: [0.92], 1: [0.93]}})
    rows += _rows({"base": {0: [0.8], 1: [0.81]}, "new": {0: [0.82], 1: [0.83]}},
                  task="mrpc", metric="f1")
    ref = dict(citation="Doe et al. (2020), Table 2", baseline="BERT-base",
               rows={"BERT-base": {"sst2": 92.7, "mrpc": 88.9},
                     "BERT + trick": {"sst2": 93.5, "mrpc": 88.1},
                     "other": {"sst2": 99.0}},
               row_of={"new": "BERT + trick", "base": "BERT-base"})
    study = _study(tasks=("sst2", "mrpc"), reference=ref)
    assert report.paper_diffs(study.reference, "new", study.columns(), ("sst2", "mrpc")) == \
        pytest.approx([0.8, -0.8, 0.0])
    report.write_report(rows, study, tmp_path)
    md = (tmp_path / "results.md").read_text()
    paper = _md_table(md, "Published")
    assert paper[0] == ["variant (paper row)", "sst2", "mrpc", "avg"]
    assert paper[1] == ["base (BERT-base)", "baseline", "baseline", "baseline"]
    assert paper[2] == ["new (BERT + trick)", "+0.80", f"{MINUS}0.80", "+0.00"]
    assert "Doe et al. (2020), Table 2" in md.split("## Published")[1]
    ref["row_of"] = {"new": "other"}  # a paper row without mrpc: "—", never a number
    study = _study(tasks=("sst2", "mrpc"), reference=ref)
    report.write_report(rows, study, tmp_path)
    paper = _md_table((tmp_path / "results.md").read_text(), "Published")
    assert paper[2] == ["new (other)", "+6.30", "\u2014", "\u2014"]


def test_png_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _rows({"base": {0: [0.9, 0.91], 1: [0.91, 0.9]}, "new": {0: [0.92]}})
    report.write_report(rows, _study(), tmp_path)
    png = tmp_path / "results.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_skipped_with_a_notice(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    notices = []
    rows = _rows({"base": {0: [0.9]}, "new": {0: [0.92]}})
    report.write_report(rows, _study(), tmp_path, log=notices.append)
    assert not (tmp_path / "results.png").exists() and (tmp_path / "results.md").exists()
    assert len(notices) == 1 and "matplotlib" in notices[0]


def test_study_checks_its_baseline_and_directions():
    with pytest.raises(ValueError, match="baseline"):
        report.Study(variants=("a",), baseline="z", tasks=())
    with pytest.raises(ValueError, match="mode"):
        report.Study(variants=("a",), baseline="a", tasks=(report.Task("x", "m", "up"),))


def test_no_jax_import():
    code = "import sys, lm.runs.report; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
