"""Studies: the run graph, resuming, failures, seeds, --summarize, --print_commands, SLURM,
and a tiny real study end to end (tokenizer -> 2 BERT variants x 2 seeds -> SST-2)."""

import csv
import json
import pathlib
import shlex
import subprocess
import textwrap

import pytest

from lm import config as config_lib
from lm.cli import study as study_cli
from lm.runs import study
from lm.runs.sweep import DONE

REPO = pathlib.Path(__file__).resolve().parent.parent

# A stand-in experiment (get_config only) for the bookkeeping tests; the real trainer is
# exercised by the tiny real study below.
FAKE_EXPERIMENT = textwrap.dedent('''
    from lm.config import base_config

    ARGS = ("x",)

    def get_config(arg):
        config = base_config()
        config.train.steps = 3
        return config
''')

FAKE_STUDY = textwrap.dedent('''
    from lm.config import Study, Task, Tokenizer, Variant

    EXP = "{exp}"

    def get_study(arg=None):
        return Study(
            variants=[Variant("a", EXP, {{"train.lr": 0.1}}),
                      Variant("b", EXP + ":x", {{"train.lr": 0.01}})],
            tasks=[Task("t1", EXP, "eval/accuracy"),
                   Task("t2", EXP, "eval/loss", "min", {{"train.batch_size": 8}})],
            tokenizer=Tokenizer(vocab_size=64) if arg == "tok" else None,
            pretrain_seeds=(0, 1), finetune_seeds=(0, 1))
''')


class FakeExecute:
    """Records the runs it executes; a finetuning score depends on the variant's lr and on
    both seeds. `stop_at` (a run id) raises KeyboardInterrupt there, `fail_at` RuntimeError,
    `preempt_at` returns as train() does on SIGTERM."""

    def __init__(self, stop_at=None, fail_at=None, preempt_at=None):
        self.ran, self.stop_at, self.fail_at, self.preempt_at = [], stop_at, fail_at, preempt_at

    def __call__(self, run, config):
        self.ran.append(run.id)
        if run.id == self.stop_at:
            raise KeyboardInterrupt  # as if killed in the middle
        if run.id == self.fail_at:
            raise RuntimeError("boom")
        if run.id == self.preempt_at:
            return {"step": 1.0, "preempted": 1.0}
        t = config.train
        if run.stage == "pretrain":
            return {"step": float(t.steps)}
        pre = pathlib.Path(config.init.checkpoint)
        assert (pre / DONE).exists() and config.init.hf_dir == ""  # its pretraining finished
        assert t.best_metric == run.metric
        lr = json.loads((pre / study.RUN_FILE).read_text())["command"]
        value = 0.5 + 0.1 * ("lr=0.1" in lr) + 0.01 * run.pretrain_seed + 0.001 * t.seed
        return {"step": float(t.steps), f"best/{t.best_metric}": value, "best/step": 3.0}


def quiet(*_):
    pass


@pytest.fixture
def spec(tmp_path):
    exp = tmp_path / "fake_experiment.py"
    exp.write_text(FAKE_EXPERIMENT)
    path = tmp_path / "fake_study.py"
    path.write_text(FAKE_STUDY.format(exp=exp))
    return str(path)


def _runs_csv(workdir, drop=("wall_s", "workdir")):
    with open(pathlib.Path(workdir) / study.RUNS_CSV) as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def test_study_declaration_errors_name_the_field():
    v, t = config_lib.Variant("a", "e.py"), config_lib.Task("t", "e.py", "eval/accuracy")
    assert config_lib.Study([v], [t]).baseline == "a"
    for kwargs, match in [(dict(baseline="z"), "baseline 'z'"),
                          (dict(pretrain_seeds=()), "pretrain_seeds"),
                          (dict(finetune_seeds=(1, 1)), "finetune_seeds repeat"),
                          (dict(variants=[v, v]), "variants: repeated")]:
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.Study(**{"variants": [v], "tasks": [t], **kwargs})
    with pytest.raises(config_lib.ConfigError, match="metric 'accuracy'"):
        config_lib.Task("t", "e.py", "accuracy")
    with pytest.raises(config_lib.ConfigError, match="variant name 'a/b'"):
        config_lib.Variant("a/b", "e.py")
    with pytest.raises(config_lib.ConfigError, match="not a data"):
        config_lib.Tokenizer(overrides={"train.lr": 1})


def test_graph_order_and_what_each_run_gets(spec, tmp_path):
    _, runs, configs = study.build(spec + ":tok", str(tmp_path / "s"), ["--config.train.steps=5"])
    ids = [r.id for r in runs]
    assert ids[:5] == ["tokenizer", "pretrain/a-s0", "pretrain/a-s1", "pretrain/b-s0",
                       "pretrain/b-s1"]
    assert ids[5:9] == ["finetune/a-s0/t1-s0", "finetune/a-s0/t1-s1", "finetune/a-s0/t2-s0",
                        "finetune/a-s0/t2-s1"]
    assert len(ids) == 1 + 4 + 4 * 2 * 2
    position = {run_id: i for i, run_id in enumerate(ids)}
    for run in runs:  # dependency order
        assert all(position[n] < position[run.id] for n in run.needs)
    root = tmp_path / "s"
    pre, ft = configs["pretrain/b-s1"], configs["finetune/b-s1/t2-s0"]
    assert (pre.train.seed, pre.train.lr, pre.train.steps) == (1, 0.01, 5)
    assert pre.data.tokenizer.path == str(root / "tokenizer" / "spm.model")
    assert (ft.init.checkpoint, ft.train.seed, ft.train.batch_size) == (
        str(root / "pretrain" / "b-s1"), 0, 8)
    assert (ft.train.best_metric, ft.train.best_mode, ft.train.steps) == ("eval/loss", "min", 5)
    assert runs[-1].workdir == str(root / "finetune" / "b-s1" / "t2-s1")


def test_skips_finished_runs_and_resumes_to_the_same_runs_csv(spec, tmp_path):
    full = FakeExecute()
    study.run_study(spec, str(tmp_path / "full"), execute=full, log=quiet)
    study.summarize(str(tmp_path / "full"), log=quiet)

    workdir = str(tmp_path / "resumed")
    first = FakeExecute(stop_at="finetune/a-s0/t1-s1")  # the second finetuning run
    with pytest.raises(KeyboardInterrupt):
        study.run_study(spec, workdir, execute=first, log=quiet)
    assert first.ran == full.ran[:len(first.ran)] and len(first.ran) == 6
    second = FakeExecute()
    outcome = study.run_study(spec, workdir, execute=second, log=quiet)
    assert second.ran == full.ran[5:] == outcome.ran  # only what had not finished
    assert study.run_study(spec, workdir, execute=FakeExecute(), log=quiet).ran == []
    study.summarize(workdir, log=quiet)
    assert _runs_csv(workdir) == _runs_csv(tmp_path / "full")
    rows = _runs_csv(tmp_path / "full")
    assert [r["stage"] for r in rows] == ["pretrain"] * 4 + ["finetune"] * 16
    ft = [r for r in rows if r["stage"] == "finetune"]
    assert ft[0] == dict(stage="finetune", variant="a", task="t1", pretrain_seed="0",
                         finetune_seed="0", metric="eval/accuracy", value="0.6", steps="3")
    # A deleted marker makes exactly that run go again.
    (tmp_path / "full" / "finetune" / "b-s0" / "t2-s1" / DONE).unlink()
    again = FakeExecute()
    study.run_study(spec, str(tmp_path / "full"), execute=again, log=quiet)
    assert again.ran == ["finetune/b-s0/t2-s1"]


def test_a_failed_run_is_reported_and_independent_runs_go_on(spec, tmp_path, monkeypatch):
    workdir, lines = tmp_path / "s", []
    execute = FakeExecute(fail_at="pretrain/a-s1")
    outcome = study.run_study(spec, str(workdir), execute=execute, log=lines.append)
    assert outcome.failed == {"pretrain/a-s1": str(workdir / "pretrain" / "a-s1")}
    assert sorted(outcome.skipped) == sorted(f"finetune/a-s1/{t}-s{f}" for t in ("t1", "t2")
                                             for f in (0, 1))
    assert len(outcome.ran) == 3 + 3 * 4 and not outcome.preempted
    assert any("pretrain/a-s1: FAILED (RuntimeError: boom)" in line
               and str(workdir / "pretrain" / "a-s1") in line for line in lines)
    assert "RuntimeError: boom" in (workdir / "pretrain" / "a-s1" / study.FAILED).read_text()
    # The command says which run failed and where, after writing the tables.
    monkeypatch.setattr(study, "default_execute", FakeExecute(fail_at="pretrain/a-s1"))
    with pytest.raises(SystemExit, match=r"1 run\(s\) failed: pretrain/a-s1 \(.*a-s1\); "
                       "4 skipped"):
        study_cli.main(["study", "--config", spec, "--workdir", str(workdir)])
    assert (workdir / "results.md").exists()
    # Fixed: the next study runs the failed run and its dependants, and clears FAILED.
    again = FakeExecute()
    study.run_study(spec, str(workdir), execute=again, log=quiet)
    assert again.ran[0] == "pretrain/a-s1" and len(again.ran) == 5
    assert not (workdir / "pretrain" / "a-s1" / study.FAILED).exists()


def test_summarize_shows_missing_runs_as_missing(spec, tmp_path):
    workdir = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):  # b's finetuning never ran; a's half
        study.run_study(spec, str(workdir), execute=FakeExecute(stop_at="finetune/a-s1/t1-s0"),
                        log=quiet)
    study_cli.main(["study", "--config", spec, "--workdir", str(workdir), "--summarize"])
    rows = _runs_csv(workdir)
    assert len(rows) == 4 + 4 and all(r["value"] for r in rows if r["stage"] == "finetune")
    md = (workdir / "results.md").read_text()
    scores = md.split("## Scores")[1].split("##")[0]
    b_row = next(line for line in scores.splitlines() if line.startswith("| b |"))
    assert b_row == "| b | missing | missing |"  # no number at all (no avg: max and min)
    a_row = next(line for line in scores.splitlines() if line.startswith("| a |"))
    assert a_row.count("(2)†*") == 2  # one pretraining seed of two: per run, incomplete
    assert "## Missing runs (12)" in md and "- b/t2/1/1" in md
    # The interrupted run started: it is listed with its workdir.
    assert f"- a/t1/1/0 ({workdir / 'finetune' / 'a-s1' / 't1-s0'})" in md
    with open(workdir / "results.csv") as f:
        b_t1 = next(r for r in csv.DictReader(f) if r["variant"] == "b" and r["task"] == "t1")
    assert b_t1["n"] == "0" and b_t1["mean"] == ""


def test_a_preempted_run_stops_the_study_with_status_75(spec, tmp_path, monkeypatch):
    execute = FakeExecute(preempt_at="pretrain/a-s1")
    outcome = study.run_study(spec, str(tmp_path / "s"), execute=execute, log=quiet)
    assert outcome.preempted and execute.ran[-1] == "pretrain/a-s1"
    assert not (tmp_path / "s" / "pretrain" / "a-s1" / DONE).exists()
    monkeypatch.setattr(study, "default_execute", execute)  # what the command runs
    with pytest.raises(SystemExit) as exit_info:
        study_cli.main(["study", "--config", spec, "--workdir", str(tmp_path / "s")])
    assert exit_info.value.code == 75


def test_print_commands_build_the_same_configs(spec, tmp_path, capsys):
    study_cli.main(["study", "--config", spec + ":tok", "--workdir", str(tmp_path),
                    "--print_commands", "--config.train.steps=7"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 21
    tok = shlex.split(lines[0])
    assert tok[:5] == ["python", "-m", "lm", "tokenizer", "train"]
    assert tok[tok.index("--output") + 1] == str(tmp_path / "tokenizer" / "spm")
    assert tok[tok.index("--vocab_size") + 1] == "64"
    _, runs, configs = study.build(spec + ":tok", str(tmp_path), ["--config.train.steps=7"])
    for line, run in zip(lines[1:], runs[1:]):
        argv = shlex.split(line)
        assert argv[:4] == ["python", "-m", "lm", "train"]
        assert argv[argv.index("--workdir") + 1] == run.workdir
        rebuilt = study.point_config(argv[argv.index("--config") + 1],
                                     argv[argv.index("--workdir") + 2:])
        assert rebuilt.to_dict() == configs[run.id].to_dict()
    last = shlex.split(lines[-1])
    assert last[-3:] == [f"--config.init.checkpoint={tmp_path / 'pretrain' / 'b-s1'}",
                         "--config.init.hf_dir=", "--config.train.seed=1"]


def test_slurm_scripts_are_job_arrays_chained_by_afterok(spec, tmp_path, capsys):
    out = tmp_path / "slurm"
    study_cli.main(["study", "--config", spec + ":tok", "--workdir", str(tmp_path / "s"),
                    "--slurm", str(out), "--sbatch=--time=1:00:00", "--config.train.steps=7"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0-tokenizer.sbatch", "1-pretrain.sbatch", "2-finetune.sbatch", "logs",
                     "submit.sh"]
    finetune = (out / "2-finetune.sbatch").read_text()
    assert "#SBATCH --array=0-15\n" in finetune and "#SBATCH --time=1:00:00" in finetune
    assert "#SBATCH --array=0-3\n" in (out / "1-pretrain.sbatch").read_text()
    assert "#SBATCH --array=0-0\n" in (out / "0-tokenizer.sbatch").read_text()
    case = finetune.split("  15)")[1].split(";;")[0]
    comment, command = case.split("\n")[0], shlex.split(case.split("\n")[1])
    assert comment.strip().startswith("# python -m lm train --config")
    assert command[:4] == ["python", "-m", "lm", "study"]
    assert command[command.index("--run") + 1] == "finetune/b-s1/t2-s1"
    assert command[-1] == "--config.train.steps=7"
    submit = (out / "submit.sh").read_text()
    assert submit.splitlines()[4:9:2] == [
        "tokenizer=$(sbatch --parsable 0-tokenizer.sbatch)",
        "pretrain=$(sbatch --parsable --dependency=afterok:$tokenizer 1-pretrain.sbatch)",
        "finetune=$(sbatch --parsable --dependency=afterok:$pretrain 2-finetune.sbatch)"]
    assert "--dependency=afterany:$finetune" in submit and "--summarize" in submit
    for path in out.glob("*.s*"):  # bash can parse every script
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path.name


def test_run_by_id_needs_finished_dependencies(spec, tmp_path):
    workdir = str(tmp_path / "s")
    with pytest.raises(ValueError, match="needs pretrain/a-s0, which has not finished"):
        study.run_by_id(spec, workdir, "finetune/a-s0/t1-s0", execute=FakeExecute(), log=quiet)
    with pytest.raises(ValueError, match="not a run of this study"):
        study.run_by_id(spec, workdir, "pretrain/zz", log=quiet)
    execute = FakeExecute()
    study.run_by_id(spec, workdir, "pretrain/a-s0", execute=execute, log=quiet)
    study.run_by_id(spec, workdir, "finetune/a-s0/t1-s0", execute=execute, log=quiet)
    assert execute.ran == ["pretrain/a-s0", "finetune/a-s0/t1-s0"]
    assert (tmp_path / "s" / "finetune" / "a-s0" / "t1-s0" / DONE).exists()


def test_core_slots_split_the_cores():
    assert study.core_slots(2, [0, 1, 2, 3]) == [{0, 1}, {2, 3}]
    assert study.core_slots(3, [0, 1]) == [{0}, {1}, {0}]  # more workers than cores: shared
    assert study.worker_env({4, 5})["OMP_NUM_THREADS"] == "2"


# ---------------------------------------------------------------- a tiny real study

REAL_STUDY = textwrap.dedent('''
    """python -m lm study --config tiny_study.py --workdir DIR  (tests/test_study.py)"""
    from lm.config import Study, Task, Tokenizer, Variant

    BERT = "{repo}/experiments/bert_mlm_nsp.py:tiny"
    SMALL = {{"model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2,
             "model.d_ff": 64, "model.vocab_size": 640, "model.max_len": 64,
             "data.seq_len": 32, "train.batch_size": 4, "train.steps": 4,
             "train.eval_steps": 1, "train.parallel_micro_batches": 1}}
    SST2 = ("{repo}/experiments/finetune_glue.py:sst2,train=train[:16],epochs=1,seq_len=32,"
            "batch=8")

    def get_study(arg=None):
        variants = [Variant("nsp", BERT, {{**SMALL, "data.objective": "mlm_nsp",
                                           "model.heads": ("mlm", "nsp")}}),
                    Variant("mlm", BERT, {{**SMALL, "data.objective": "mlm",
                                           "model.heads": ("mlm",)}})]
        return Study(
            variants=variants[:1] if arg == "one" else variants,
            tasks=[Task("sst2", SST2, "eval/accuracy", "max",
                        {{"data.eval_split": "validation[:16]"}})],
            tokenizer=Tokenizer(vocab_size=640),  # trained on the baseline's data
            pretrain_seeds=(1,) if arg == "one" else (0, 1), finetune_seeds=(0,))
''')


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    """A tiny study run to the end by the command: a tokenizer, 2 BERT variants × 2
    pretraining seeds (4 steps each), each finetuned on 16 SST-2 rows (2 steps); two runs at
    a time (--parallel 2), each a subprocess pinned to one core."""
    from lm.__main__ import main  # as `python -m lm study` (with the compile cache)

    tmp = tmp_path_factory.mktemp("real_study")
    spec = tmp / "tiny_study.py"
    spec.write_text(REAL_STUDY.format(repo=REPO))
    main(["lm", "study", "--config", str(spec), "--workdir", str(tmp / "s"),
          "--parallel", "2", "--config.train.log_every=1"])
    return str(spec), tmp / "s"


@pytest.mark.slow
def test_real_study_end_to_end(real_study):
    _, workdir = real_study
    rows = _runs_csv(workdir, drop=())
    assert [(r["stage"], r["variant"], r["pretrain_seed"]) for r in rows] == [
        (stage, v, s) for stage in ("pretrain", "finetune") for v in ("nsp", "mlm")
        for s in ("0", "1")]
    for row in rows:
        assert row["metric"] == ("eval/loss" if row["stage"] == "pretrain" else "eval/accuracy")
        assert float(row["value"]) >= 0 and row["steps"] == ("4" if row["stage"] == "pretrain"
                                                             else "2")
        assert (pathlib.Path(row["workdir"]) / DONE).exists()
    # Every variant read the one shared vocabulary; no run trained its own.
    for run in (workdir / "pretrain").iterdir():
        config = json.loads((run / "config.json").read_text())
        assert config["data"]["tokenizer"]["path"] == str(workdir / "tokenizer" / "spm.model")
        assert not (run / "tokenizer.model").exists()
    # Different pretraining seeds: different runs (and so different finetuning runs).
    pre = {(r["variant"], r["pretrain_seed"]): r["value"] for r in rows if r["stage"] == "pretrain"}
    assert pre["nsp", "0"] != pre["nsp", "1"] and pre["mlm", "0"] != pre["mlm", "1"]
    losses = [json.loads((workdir / "finetune" / f"nsp-s{s}" / "sst2-s0" / DONE).read_text())
              ["result"]["eval/loss"] for s in (0, 1)]
    assert losses[0] != losses[1]
    md = (workdir / "results.md").read_text()
    assert "| nsp | " in md and "| mlm | " in md and "Missing runs" not in md
    assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"


class PreemptAt:
    """Stops the run `run_id` after `step` steps as SIGTERM would (the loop saves and returns
    `preempted`): a study interrupted in the middle of a run."""

    def __init__(self, monkeypatch, run_id, step):
        from lm.train import signals

        self.run_id, self.step, self.install = run_id, step, signals.install_signal_handlers
        self.current = None
        monkeypatch.setattr(signals, "install_signal_handlers", self._install)

    def _install(self):
        preemption = self.install()
        if self.current == self.run_id:
            preemption.should_stop = lambda s: s >= self.step
        return preemption

    def __call__(self, run, config):
        self.current = run.id
        return study.default_execute(run, config)


@pytest.mark.slow
def test_interrupted_real_study_resumes_to_the_same_numbers(real_study, tmp_path, monkeypatch):
    """A study stopped in the middle of its pretraining run, then in the middle of its
    finetuning run, then finished (in this process): the same runs.csv, bit for bit, as the
    uninterrupted study's rows for the same runs (same seeds: same scores; and in-process
    runs equal --parallel's pinned subprocesses)."""
    spec, full = real_study
    workdir = str(tmp_path / "s")
    execute = PreemptAt(monkeypatch, "pretrain/nsp-s1", 2)
    outcome = study.run_study(spec + ":one", workdir, ["--config.train.log_every=1"],
                              execute=execute, log=quiet)
    assert outcome.preempted and outcome.ran == ["tokenizer"]
    execute.run_id, execute.step = "finetune/nsp-s1/sst2-s0", 1
    outcome = study.run_study(spec + ":one", workdir, ["--config.train.log_every=1"],
                              execute=execute, log=quiet)
    assert outcome.preempted and outcome.ran == ["pretrain/nsp-s1"]
    execute.run_id = None
    steps = [json.loads(line)["step"] for line in open(
        tmp_path / "s" / "pretrain" / "nsp-s1" / "metrics.jsonl") if "train/loss" in line]
    assert steps == [1, 2, 3, 4]  # resumed at step 3, not restarted
    outcome = study.run_study(spec + ":one", workdir, ["--config.train.log_every=1"],
                              execute=execute, log=quiet)
    assert outcome.ran == ["finetune/nsp-s1/sst2-s0"] and not outcome.preempted
    study.summarize(workdir, log=quiet)
    want = [r for r in _runs_csv(full) if r["variant"] == "nsp" and r["pretrain_seed"] == "1"]
    assert _runs_csv(workdir) == want and len(want) == 2
    for stage in ("pretrain/nsp-s1", "finetune/nsp-s1/sst2-s0"):
        got, ref = (json.loads((d / stage / DONE).read_text())["result"]
                    for d in (tmp_path / "s", full))
        assert {k: v for k, v in got.items() if k.startswith(("eval/", "best/"))} == {
            k: v for k, v in ref.items() if k.startswith(("eval/", "best/"))}


def test_the_nsp_study_gives_each_task_its_floor_and_the_report_gets_it():
    spec = config_lib.load_study(f"{REPO}/experiments/bert_nsp_study.py:cpu")
    tasks = {t["name"]: t for t in spec.report_dict()["tasks"]}
    assert tasks["mrpc"]["floor"] == pytest.approx(2 * 279 / 687)  # F1 of all "equivalent"
    assert tasks["cola"]["floor"] == 0.0 and tasks["rte"]["floor"] == pytest.approx(146 / 277)
    from lm.runs import report

    assert report.Study.from_dict(spec.report_dict()).tasks[0].floor == tasks["sst2"]["floor"]
