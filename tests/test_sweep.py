"""Sweeps: grid helpers, point names, resumable runs, results table and plot."""

import csv
import json
import pathlib
import shlex
import sys
import textwrap

import pytest

from lm import config as config_lib
from lm.cli import sweep as sweep_cli
from lm.runs import sweep
from lm.train.writer import read_records

# A stand-in experiment for the runner's bookkeeping tests (the real trainer is exercised
# by test_sweep_end_to_end below).
FAKE_EXPERIMENT = textwrap.dedent('''
    from lm.config import Sweep, base_config, product

    ARGS = ("x",)

    def get_config(arg):
        config = base_config()
        config.train.steps = 3
        return config

    def get_sweep(arg):
        return Sweep(product(**{"train.lr": [0.1, 0.01], "train.batch_size": [4, 8]}),
                     metric="eval/accuracy", mode="max")
''')


class FakeTrain:
    """Records the points it runs and writes a metrics.jsonl whose score depends on lr."""

    def __init__(self, fail_on: str | None = None):
        self.ran, self.fail_on = [], fail_on

    def __call__(self, config, workdir):
        name = pathlib.Path(workdir).name
        self.ran.append(name)
        if name == self.fail_on:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle
        assert config.train.best_metric == "eval/accuracy"  # the sweep's metric ranks points
        lr, bs = config.train.lr, config.train.batch_size
        with open(pathlib.Path(workdir) / "metrics.jsonl", "w") as f:
            for step in range(1, config.train.steps + 1):
                f.write(json.dumps({"step": step, "train/loss": 1 / step}) + "\n")
                acc = 0.5 + lr * step + bs / 1000
                f.write(json.dumps({"step": step, "eval/loss": 1 - acc, "eval/accuracy": acc})
                        + "\n")
        # As train() reports the checkpointer's best: here the last step scores highest.
        return {"eval/accuracy": acc, "best/eval/accuracy": acc, "best/step": step}


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "fake_experiment.py"
    path.write_text(FAKE_EXPERIMENT)
    return str(path)


def test_grid_helpers():
    assert config_lib.product(a=[1, 2], b=["x", "y"]) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert config_lib.zip_(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    with pytest.raises(ValueError, match="equal length"):
        config_lib.zip_(a=[1, 2], b=[3])
    assert config_lib.chain(config_lib.zip_(a=[1]), config_lib.product(b=[2, 3])) == [
        {"a": 1}, {"b": 2}, {"b": 3}]


def test_point_names_are_short_unique_and_filesystem_safe():
    points = config_lib.product(**{"train.lr": [5e-05, 3e-05], "model.heads": [("mlm", "nsp")],
                              "data.name": ["a/b c"]})
    names = sweep.point_names(points)
    assert names[0] == "lr=5e-05,heads=mlm-nsp,name=a_b_c"
    # Same last component: the full dotted key disambiguates.
    assert sweep.point_names([{"a.lr": 1, "b.lr": 2}]) == ["a.lr=1,b.lr=2"]
    with pytest.raises(ValueError, match="repeated points"):
        sweep.point_names([{"x": 1}, {"x": 1}])


def test_sweep_runs_resumes_and_summarizes(experiment, tmp_path):
    workdir = tmp_path / "sweep"
    train = FakeTrain(fail_on="lr=0.01,batch_size=4")
    with pytest.raises(KeyboardInterrupt):
        sweep.run_points(experiment, str(workdir), train_fn=train, log=lambda *_: None)
    assert train.ran == ["lr=0.1,batch_size=4", "lr=0.1,batch_size=8", "lr=0.01,batch_size=4"]
    assert not (workdir / "lr=0.01,batch_size=4" / sweep.DONE).exists()

    # Running again runs only the interrupted point and the one never started.
    train = FakeTrain()
    ran = sweep.run_points(experiment, str(workdir), train_fn=train, log=lambda *_: None)
    assert ran == train.ran == ["lr=0.01,batch_size=4", "lr=0.01,batch_size=8"]
    # A deleted marker makes exactly that point run again.
    (workdir / "lr=0.1,batch_size=8" / sweep.DONE).unlink()
    train = FakeTrain()
    sweep.run_points(experiment, str(workdir), train_fn=train, log=lambda *_: None)
    assert train.ran == ["lr=0.1,batch_size=8"]

    lines = []
    rows = sweep.summarize(str(workdir), log=lines.append)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert lines[0].startswith("best fake_experiment: lr=0.1,batch_size=8")
    with open(workdir / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["point"] for r in table] == [r["point"] for r in rows]
    best = table[1]  # lr=0.1, bs=8: acc = 0.5 + 0.1 * 3 + 0.008
    assert float(best["best/eval/accuracy"]) == pytest.approx(0.808)
    assert float(best["final/eval/loss"]) == pytest.approx(1 - 0.808)
    assert best["train.lr"] == "0.1" and best["steps"] == "3"
    md = (workdir / "results.md").read_text().splitlines()
    assert len(md) == 2 + 4 and "best/eval/accuracy" in md[0]
    assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_summarize_marks_missing_points(experiment, tmp_path):
    workdir = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        sweep.run_points(experiment, str(workdir), train_fn=FakeTrain(
            fail_on="lr=0.1,batch_size=8"), log=lambda *_: None)
    lines = []
    rows = sweep.summarize(str(workdir), log=lines.append)
    assert [r["status"] for r in rows] == ["done", "missing", "missing", "missing"]
    assert "3 point(s) not finished" in lines[-1]


def test_print_commands(experiment, tmp_path, capsys):
    sweep_cli.main(["sweep", "--config", experiment + ":x", "--workdir", str(tmp_path),
                "--print_commands", "--config.train.steps=5"])
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 4
    argv = shlex.split(commands[3])
    assert argv[:4] == ["python", "-m", "lm", "train"]
    assert argv[argv.index("--workdir") + 1] == str(tmp_path / "lr=0.01,batch_size=8")
    assert argv[-5:] == ["--config.train.best_metric=eval/accuracy",
                         "--config.train.best_mode=max", "--config.train.steps=5",
                         "--config.train.lr=0.01", "--config.train.batch_size=8"]
    # The commands' overrides build the same config the runner builds.
    config = sweep.point_config(experiment + ":x", argv[argv.index("--workdir") + 2:])
    assert (config.train.lr, config.train.batch_size, config.train.steps) == (0.01, 8, 5)


def test_bad_override_is_a_clear_error(experiment, tmp_path):
    with pytest.raises(SystemExit):
        sweep_cli.main(["sweep", "--config", experiment, "--workdir", str(tmp_path), "--lr=3"])
    with pytest.raises(ValueError, match="unknown config key"):
        sweep.run_points(experiment, str(tmp_path / "s"), ["--config.train.lrr=3"],
                         train_fn=FakeTrain())
    assert not (tmp_path / "s").exists()  # nothing ran, nothing was written


def test_a_preempted_point_is_not_marked_done(experiment, tmp_path):
    def preempted(config, workdir):  # train() returns early (checkpoint saved) on SIGTERM
        return {"step": config.train.steps - 1, "preempted": 1.0}

    ran = sweep.run_points(experiment, str(tmp_path / "s"), train_fn=preempted,
                           log=lambda *_: None)
    assert ran is None and not list((tmp_path / "s").glob(f"*/{sweep.DONE}"))


TINY_REAL_EXPERIMENT = '''
import importlib.util
from lm.config import Sweep, product

_spec = importlib.util.spec_from_file_location("shakespeare", "{path}")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)


def get_config(arg=None):
    config = _mod.get_config("cpu")
    config.model.update(num_layers=1, d_model=32, num_heads=2, d_ff=64, max_len=16)
    config.data.seq_len = 16
    config.train.update(steps=6, batch_size=4, warmup_steps=0, eval_every=3,
                        eval_steps=2, log_every=1, checkpoint_every=3, eval_at_start=False)
    return config


def get_sweep(arg=None):
    return Sweep(product(**{{"train.lr": [1e-2, 1e-3], "train.seed": [0, 1]}}))
'''


def test_real_2x2_sweep_end_to_end(tmp_path):
    """A 2×2 sweep of a tiny real experiment (the trainer, not a fake) writes every result;
    each point's best step is its checkpointer's best (by eval/loss)."""
    REPO = pathlib.Path(__file__).resolve().parent.parent
    path = tmp_path / "tiny_experiment.py"
    path.write_text(TINY_REAL_EXPERIMENT.format(
        path=REPO / "experiments" / "gpt_shakespeare_char.py"))
    workdir = tmp_path / "sweep"
    sweep_cli.main(["sweep", "--config", str(path), "--workdir", str(workdir)])
    for name in ("results.csv", "results.md", "results.png"):
        assert (workdir / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(workdir / "results.csv")))
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    for row in rows:  # eval at steps 3 and 6: the best is the lower eval/loss of the two
        evals = {r["step"]: r["eval/loss"] for r in read_records(
            workdir / row["point"] / "metrics.jsonl") if "eval/loss" in r}
        assert int(row["best_step"]) == min(evals, key=evals.get)
    assert len(list(workdir.glob(f"*/{sweep.DONE}"))) == 4
    # Everything is done: running again trains nothing.
    assert sweep.run_points(str(path), str(workdir), log=lambda *_: None) == []


def test_without_matplotlib_the_plot_is_skipped_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    sweep.plot([], tmp_path / "results.png")
    assert capsys.readouterr().out == (
        "matplotlib is not installed: pip install 'lm[plot]' for results.png\n")
    assert not (tmp_path / "results.png").exists()


# Overrides of every type (tuples, strings) and seeds (issue 22, items 6 and 7).
TYPED_EXPERIMENT = textwrap.dedent('''
    from lm.config import Sweep, base_config

    ARGS = ("x", "seeds")

    def get_config(arg):
        config = base_config()
        config.model = dict(heads=("mlm", "nsp"), name="a")
        config.train.steps = 3
        return config

    def get_sweep(arg):
        return Sweep([{"model.heads": ("mlm", "nsp"), "model.name": "x y"},
                      {"model.heads": ("mlm",), "model.name": "z"}],
                     metric="eval/accuracy", mode="max",
                     seeds=(0, 1, 2) if arg == "seeds" else ())
''')


def _typed_train(config, workdir):
    """A score from the number of heads and the seed, at step 3 (the best step)."""
    acc = 0.5 + 0.1 * len(config.model.heads) + 0.01 * config.train.seed ** 2
    with open(pathlib.Path(workdir) / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 3, "train/loss": 1.0}) + "\n")
        f.write(json.dumps({"step": 3, "eval/accuracy": acc}) + "\n")
    return {"step": 3.0, "best/eval/accuracy": acc, "best/step": 3.0}


@pytest.fixture
def typed(tmp_path):
    path = tmp_path / "typed_experiment.py"
    path.write_text(TYPED_EXPERIMENT)
    return str(path)


def test_tuple_and_string_overrides_are_tabulated_and_plotted(typed, tmp_path):
    """The NSP sweep's `model.heads` tuples (lists once read back from sweep.json) broke
    results.png and --summarize with "unhashable type: 'list'"."""
    workdir = tmp_path / "sweep"
    sweep.run_points(typed + ":x", str(workdir), train_fn=_typed_train, log=lambda *_: None)
    rows = sweep.summarize(str(workdir), log=lambda *_: None)
    assert [r["model.heads"] for r in rows] == [["mlm", "nsp"], ["mlm"]]
    with open(workdir / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["model.heads"], r["model.name"]) for r in table] == [("(mlm,nsp)", "x y"),
                                                                  ("(mlm,)", "z")]
    assert "| (mlm,nsp) | x y |" in (workdir / "results.md").read_text()
    assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"
    # The table's text is the flag that rebuilds the value.
    config = sweep.point_config(typed + ":x", [f"--config.model.heads={table[1]['model.heads']}"])
    assert tuple(config.model.heads) == ("mlm",)


def test_sweep_seeds_repeat_each_point_and_rank_by_the_mean(typed, tmp_path):
    import numpy as np

    workdir, lines = tmp_path / "sweep", []
    ran = sweep.run_points(typed + ":seeds", str(workdir), train_fn=_typed_train,
                           log=lambda *_: None)
    assert ran == [f"heads=mlm-nsp,name=x_y,seed={s}" for s in (0, 1, 2)] + [
        f"heads=mlm,name=z,seed={s}" for s in (0, 1, 2)]
    commands = sweep.commands(typed + ":seeds", str(workdir))
    assert len(commands) == 6 and commands[4].endswith("--config.train.seed=1")
    sweep.summarize(str(workdir), log=lines.append)
    with open(workdir / "results.csv") as f:
        table = list(csv.DictReader(f))
    with open(workdir / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert [r["point"] for r in table] == ["heads=mlm-nsp,name=x_y", "heads=mlm,name=z"]
    for row, heads in zip(table, (2, 1)):
        scores = [0.5 + 0.1 * heads + 0.01 * s ** 2 for s in (0, 1, 2)]
        assert float(row["mean"]) == pytest.approx(np.mean(scores))
        assert float(row["std"]) == pytest.approx(np.std(scores, ddof=1))
        assert row["n"] == "3" and row["model.heads"] == ("(mlm,nsp)" if heads == 2
                                                           else "(mlm,)")
    assert [r["rank"] for r in table] == ["1", "2"]  # mode max: the higher mean first
    assert lines[0].startswith("best seeds: heads=mlm-nsp,name=x_y  "
                               "eval/accuracy=0.7167 ± 0.0208 (n=3)")
    assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_finetune_glue_sweep_repeats_each_point_over_seeds(tmp_path):
    spec = "experiments/finetune_glue.py:rte,sweep=lr,seeds=3"
    commands = sweep.commands(spec, str(tmp_path))
    assert len(commands) == 9  # 3 learning rates × 3 seeds
    lrs_seeds = [(c.split("--config.train.lr=")[1].split()[0], c.split("--config.train.seed=")[1])
                 for c in commands]
    assert lrs_seeds == [(lr, s) for lr in ("0.0001", "5e-05", "2e-05") for s in "012"]
    assert len(sweep.commands(spec.replace(",seeds=3", ""), str(tmp_path))) == 3
