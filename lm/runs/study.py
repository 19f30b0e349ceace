"""Studies: a shared tokenizer, pretraining variants × seeds, then tasks × seeds from each.

    python -m lm study --config experiments/<study>.py:<arg> --workdir DIR
        [--print_commands] [--slurm DIR2] [--parallel N] [--summarize] [--config.<k>=<v> ...]

The experiment's `get_study(arg)` returns an `lm.config.Study`. `graph` turns it into ordinary
runs in dependency order, each in its own directory:

    DIR/tokenizer/                      python -m lm tokenizer train --output DIR/tokenizer/spm
    DIR/pretrain/<variant>-s<p>/        python -m lm train --config <variant's experiment>
    DIR/finetune/<variant>-s<p>/<task>-s<f>/   python -m lm train --config <task's experiment>

A pretraining run gets the shared vocabulary (`data.tokenizer.kind/path`) and
`train.seed=<p>`; a finetuning run gets `init.checkpoint=<its pretraining run>`,
`train.seed=<f>` and the task's metric as `train.best_metric`. Flag order: the task's metric,
the variant's or task's overrides, the command line's (every pretraining and finetuning run),
then those the graph sets, so the graph always wins. Each run is built exactly as `python -m
lm train` builds it from the same flags (`--print_commands` prints them) and is finished once
its `DONE` marker exists (the sweep's marker): a second `lm study` skips finished runs and
resumes the others from their checkpoints. A run that raises is reported with its workdir
(and its traceback in `<workdir>/FAILED`); the runs that need it are skipped, the others go
on. SIGTERM/SIGINT saves the running run and stops the study with exit status 75.

`DIR/runs.csv`: one row per finished pretraining and finetuning run; `value` is the run's
metric at its best checkpoint (`best/<metric>` of `lm.train.loop.train`). `DIR/results.*`:
`lm.runs.report` (variants × tasks, mean ± std (n), Welch CIs, the paper's table beside).

Variants are compared on the same inputs only downstream: every variant is finetuned and
evaluated on the same task data, while their pretraining losses (e.g. MLM on NSP pairs vs on
contiguous text) are measured on inputs their objectives build, so they are not a comparison.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from lm import config as config_lib
from lm.errors import Interrupted, UserError
from lm.runs.sweep import DONE, point_config
from lm.runs.sweep import _write_json as write_json  # atomic: never half a marker

STAGES = ("tokenizer", "pretrain", "finetune")
STUDY_FILE = "study.json"  # the study's spec, overrides and graph (for --summarize)
RUN_FILE = "study_run.json"  # per run: its place in the study and its wall time so far
FAILED = "FAILED"  # per run: the traceback of its last failure
RUNS_CSV = "runs.csv"
COLUMNS = ("stage", "variant", "task", "pretrain_seed", "finetune_seed", "metric", "value",
           "steps", "wall_s", "workdir")


# ---------------------------------------------------------------- the graph


@dataclasses.dataclass(frozen=True)
class Run:
    """One node of the study: `python -m lm <argv>` in `workdir`, after the runs `needs`."""

    id: str  # 'tokenizer', 'pretrain/<variant>-s<p>', 'finetune/<variant>-s<p>/<task>-s<f>'
    stage: str
    argv: tuple[str, ...]  # ('train', '--config', spec, '--workdir', dir, *flags)
    workdir: str
    needs: tuple[str, ...] = ()
    variant: str = ""
    task: str = ""
    pretrain_seed: int | None = None
    finetune_seed: int | None = None
    metric: str = ""  # train.best_metric: the runs.csv value is best/<metric>
    mode: str = "min"

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "lm", *self.argv])

    @property
    def spec(self) -> str:
        return self.argv[self.argv.index("--config") + 1]

    @property
    def flags(self) -> list[str]:
        return [a for a in self.argv if a.startswith("--config.")]


def tokenizer_file(root: pathlib.Path, tok: config_lib.Tokenizer) -> pathlib.Path:
    """The shared vocabulary's file: DIR/tokenizer/spm.model (or chars.json)."""
    return root / "tokenizer" / ("spm.model" if tok.kind == "sentencepiece" else "chars.json")


def _tokenizer_run(study: config_lib.Study, root: pathlib.Path, cli_flags: Sequence[str]) -> Run:
    tok = study.tokenizer
    spec = tok.config or next(v.config for v in study.variants if v.name == study.baseline)
    # The command line's data overrides reach the tokenizer too (same data), except the
    # tokenizer's own keys, which the study sets for the pretraining runs.
    data_flags = [f for f in cli_flags if f.startswith("--config.data.")
                  and not f.startswith("--config.data.tokenizer.")]
    output = tokenizer_file(root, tok).with_suffix("")
    argv = ["tokenizer", "train", "--output", str(output), "--kind", tok.kind, "--config", spec,
            *config_lib.as_flags(tok.overrides), *data_flags]
    if tok.kind == "sentencepiece":
        argv[6:6] = ["--vocab_size", str(tok.vocab_size), "--model_type", tok.model_type]
    return Run("tokenizer", "tokenizer", tuple(argv), str(root / "tokenizer"))


def tokenizer_config(study: config_lib.Study, run: Run):
    """What the tokenizer run trains: `data` (the data block its command line names) and
    `vocabulary` (lm.data.tokenizers.train_vocabulary's arguments)."""
    tok = study.tokenizer
    _, overrides = config_lib.split_overrides(run.flags)
    output = tokenizer_file(pathlib.Path(run.workdir).parent, tok).with_suffix("")
    vocabulary = {"output": str(output), "kind": tok.kind}
    if tok.kind == "sentencepiece":
        vocabulary.update(vocab_size=tok.vocab_size, model_type=tok.model_type)
    return config_lib.ConfigDict({"data": config_lib.load_data(run.spec, overrides),
                                  "vocabulary": vocabulary})


def graph(study: config_lib.Study, workdir: str, cli_flags: Sequence[str] = ()) -> list[Run]:
    """Every run of the study in dependency order: tokenizer, pretraining, finetuning."""
    root = pathlib.Path(workdir).absolute()
    cli_flags = list(cli_flags)
    runs = [] if study.tokenizer is None else [_tokenizer_run(study, root, cli_flags)]
    shared = {} if study.tokenizer is None else {
        "data.tokenizer.kind": study.tokenizer.kind,
        "data.tokenizer.path": str(tokenizer_file(root, study.tokenizer))}
    pretrain = []
    for v in study.variants:
        for p in study.pretrain_seeds:
            name = f"{v.name}-s{p}"
            flags = [*config_lib.as_flags(v.overrides), *cli_flags,
                     *config_lib.as_flags({**shared, "train.seed": p})]
            wd = root / "pretrain" / name
            pretrain.append(Run(f"pretrain/{name}", "pretrain",
                                ("train", "--config", v.config, "--workdir", str(wd), *flags),
                                str(wd), tuple(r.id for r in runs), variant=v.name,
                                pretrain_seed=p))
    finetune = []
    for pre in pretrain:
        for t in study.tasks:
            for f in study.finetune_seeds:
                ranking = {"train.best_metric": t.metric, "train.best_mode": t.mode}
                graph_set = {"init.checkpoint": pre.workdir, "init.hf_dir": "", "train.seed": f}
                flags = [*config_lib.as_flags(ranking), *config_lib.as_flags(t.overrides),
                         *cli_flags, *config_lib.as_flags(graph_set)]
                wd = root / "finetune" / pathlib.Path(pre.workdir).name / f"{t.name}-s{f}"
                finetune.append(Run(
                    f"finetune/{pathlib.Path(pre.workdir).name}/{t.name}-s{f}", "finetune",
                    ("train", "--config", t.config, "--workdir", str(wd), *flags), str(wd),
                    (pre.id,), variant=pre.variant, task=t.name,
                    pretrain_seed=pre.pretrain_seed, finetune_seed=f, metric=t.metric,
                    mode=t.mode))
    return runs + pretrain + finetune


def build(spec: str, workdir: str, cli_flags: Sequence[str] = ()
          ) -> tuple[config_lib.Study, list[Run], dict[str, Any]]:
    """(study, graph, run id -> config): every train run's config is built before anything
    runs, so a bad override fails first; a pretraining run's metric is its best_metric."""
    study = config_lib.load_study(spec)
    runs = graph(study, workdir, cli_flags)
    configs = {r.id: tokenizer_config(study, r) if r.stage == "tokenizer" else
               point_config(r.spec, r.flags) for r in runs}
    runs = [dataclasses.replace(r, metric=configs[r.id].train.best_metric,
                                mode=configs[r.id].train.best_mode)
            if r.stage == "pretrain" else r for r in runs]
    return study, runs, configs


def commands(spec: str, workdir: str, cli_flags: Sequence[str] = ()) -> list[str]:
    """Every run's command line in dependency order (`--print_commands`)."""
    return [r.command for r in build(spec, workdir, cli_flags)[1]]


# ---------------------------------------------------------------- running


@dataclasses.dataclass
class Outcome:
    ran: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> workdir
    skipped: list[str] = dataclasses.field(default_factory=list)  # a run they need failed
    preempted: bool = False


class _Stop:
    """SIGTERM/SIGINT between runs (the trainer handles them during one); a context that puts
    the previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested, self.previous = False, {}

    def __enter__(self) -> _Stop:
        self.previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True


def _is_done(run: Run) -> bool:
    return (pathlib.Path(run.workdir) / DONE).exists()


def _info(run: Run) -> dict[str, Any]:
    path = pathlib.Path(run.workdir) / RUN_FILE
    info = json.loads(path.read_text()) if path.exists() else {"wall_s": 0.0}
    fields = ("id", "stage", "variant", "task", "pretrain_seed", "finetune_seed", "metric",
              "mode")
    return {**info, **{k: getattr(run, k) for k in fields}, "command": run.command}


def default_execute(run: Run, config) -> dict[str, Any]:
    """What `python -m lm <run.argv>` does, in this process."""
    if run.stage == "tokenizer":
        from lm.data import tokenizers

        tokenizers.train_vocabulary(config.data, **config.vocabulary)
        return {}
    from lm.train.loop import train

    return train(config, run.workdir)


def run_one(run: Run, config, execute: Callable, log=print) -> dict:
    """Runs one node and writes its DONE marker (unless it was preempted); an exception
    leaves its traceback in `<workdir>/FAILED` and propagates."""
    wd = pathlib.Path(run.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    info = _info(run)
    write_json(wd / RUN_FILE, info)
    start = time.time()
    try:
        result = execute(run, config)
    except Exception:
        (wd / FAILED).write_text(traceback.format_exc())
        raise
    finally:
        info["wall_s"] += time.time() - start  # the legs of a resumed run add up
        write_json(wd / RUN_FILE, info)
    if not result.get("preempted"):
        (wd / FAILED).unlink(missing_ok=True)
        write_json(wd / DONE, {"wall_s": info["wall_s"], "result": result})
    return result


def _save_graph(spec: str, workdir: str, cli_flags: Sequence[str],
                study: config_lib.Study, runs: Sequence[Run]) -> None:
    root = pathlib.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / STUDY_FILE, {"config": spec, "overrides": list(cli_flags),
                                   "study": study.report_dict(),
                                   "runs": [dataclasses.asdict(r) for r in runs]})


def run_study(spec: str, workdir: str, cli_flags: Sequence[str] = (),
              execute: Callable | None = None, parallel: int = 1, log=print) -> Outcome:
    """Runs every unfinished run in dependency order (`parallel` > 1: that many subprocesses
    per stage, each pinned to its share of the cores). `execute(run, config)`: how one run
    runs (default: as its `python -m lm` command, in this process)."""
    execute = execute or default_execute
    study, runs, configs = build(spec, workdir, cli_flags)
    _save_graph(spec, workdir, cli_flags, study, runs)
    with _Stop() as stop:
        return _run_stages(runs, configs, spec, workdir, cli_flags, execute, parallel, stop,
                           log)


def _run_stages(runs: Sequence[Run], configs: dict[str, Any], spec: str, workdir: str,
                cli_flags: Sequence[str], execute: Callable, parallel: int, stop: _Stop,
                log) -> Outcome:
    out = Outcome()
    for stage in STAGES:
        todo = []
        for run in (r for r in runs if r.stage == stage):
            bad = [n for n in run.needs if n in out.failed or n in out.skipped]
            if _is_done(run):
                log(f"{run.id}: done, skipped")
            elif bad:
                log(f"{run.id}: skipped (needs {bad[0]}, which did not finish)")
                out.skipped.append(run.id)
            else:
                todo.append(run)
        if parallel > 1 and len(todo) > 1:
            _run_parallel(todo, spec, workdir, cli_flags, parallel, out, stop, log)
        else:
            for run in todo:
                if stop.requested:
                    out.preempted = True
                    break
                _run_here(run, configs.get(run.id), execute, out, log)
                stop.install()  # the trainer's handlers are stale once it returns
                if out.preempted:
                    break
        if out.preempted or stop.requested:
            out.preempted = True
            log("stopped: run the study again to resume")
            return out
    return out


def _run_here(run: Run, config, execute: Callable, out: Outcome, log) -> None:
    log(f"{run.id}: running\n  {run.command}")
    try:
        result = run_one(run, config, execute, log)
    except Interrupted as e:  # SIGTERM/SIGINT as the run started: nothing to save yet
        out.preempted = True
        log(f"{run.id}: stopped ({e})")
        return
    except Exception as e:  # one broken run must not stop the independent ones
        log(f"{run.id}: FAILED ({type(e).__name__}: {e}); workdir {run.workdir} "
            f"(traceback in {FAILED})")
        out.failed[run.id] = run.workdir
        return
    if result.get("preempted"):
        out.preempted = True
        log(f"{run.id}: stopped at step {int(result.get('step', 0))}")
    else:
        out.ran.append(run.id)


def run_by_id(spec: str, workdir: str, run_id: str, cli_flags: Sequence[str] = (),
              execute: Callable | None = None, log=print) -> dict[str, Any]:
    """One node of the graph (`--run ID`: a SLURM array task, a --parallel worker)."""
    execute = execute or default_execute
    study, runs, configs = build(spec, workdir, cli_flags)
    by_id = {r.id: r for r in runs}
    if run_id not in by_id:
        raise UserError(f"--run {run_id!r} is not a run of this study; runs: "
                        f"{', '.join(list(by_id)[:8])}...")
    run = by_id[run_id]
    missing = [n for n in run.needs if not _is_done(by_id[n])]
    if missing:
        raise UserError(f"{run_id} needs {missing[0]}, which has not finished (no {DONE})")
    if _is_done(run):
        log(f"{run_id}: done, skipped")
        return {}
    if not (pathlib.Path(workdir) / STUDY_FILE).exists():
        _save_graph(spec, workdir, cli_flags, study, runs)
    return run_one(run, configs.get(run_id), execute, log)


# ---------------------------------------------------------------- --parallel


def core_slots(n: int, cores: Sequence[int] | None = None) -> list[set[int]]:
    """`n` disjoint shares of this process's cores (shared round-robin when n > cores)."""
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    k = max(1, len(cores) // n)
    return [{cores[(i * k + j) % len(cores)] for j in range(k)} for i in range(n)]


def worker_env(cores: set[int]) -> dict[str, str]:
    """Thread counts that match the pinned cores (XLA's CPU pool follows the affinity)."""
    n = str(len(cores))
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1"}


def worker_argv(spec: str, workdir: str, run_id: str, cli_flags: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "lm", "study", "--config", spec, "--workdir", str(workdir),
            "--run", run_id, *cli_flags]


def _run_parallel(todo: Sequence[Run], spec: str, workdir: str, cli_flags: Sequence[str],
                  n: int, out: Outcome, stop: _Stop, log) -> None:
    """Up to `n` runs at once as `python -m lm study --run ID` subprocesses (each writes its
    own DONE marker), each pinned to a share of the cores; SIGTERM is passed on to them."""
    free, queue, procs, signalled = core_slots(n), list(todo), {}, set()
    while queue or procs:
        while queue and free and not stop.requested:
            run, cores = queue.pop(0), free.pop(0)
            pathlib.Path(run.workdir).mkdir(parents=True, exist_ok=True)
            logf = open(pathlib.Path(run.workdir) / "study.log", "ab")
            log(f"{run.id}: running on cores {sorted(cores)}\n  {run.command}")
            proc = subprocess.Popen(
                worker_argv(spec, workdir, run.id, cli_flags), stdout=logf,
                stderr=subprocess.STDOUT, env=worker_env(cores), start_new_session=True,
                preexec_fn=lambda c=cores: os.sched_setaffinity(0, c))
            procs[proc] = (run, cores, logf)
        if stop.requested:
            for proc in procs.keys() - signalled:  # once: a second SIGTERM kills outright
                proc.send_signal(signal.SIGTERM)  # each saves its checkpoint and exits 75
                signalled.add(proc)
        time.sleep(0.2)
        for proc in [p for p in procs if p.poll() is not None]:
            run, cores, logf = procs.pop(proc)
            logf.close()
            free.append(cores)
            if proc.returncode == 0:
                out.ran.append(run.id)
                log(f"{run.id}: done")
            elif proc.returncode in (75, 128 + signal.SIGTERM, 128 + signal.SIGINT):
                out.preempted = True
                log(f"{run.id}: stopped")
            else:
                out.failed[run.id] = run.workdir
                log(f"{run.id}: FAILED (exit status {proc.returncode}); workdir {run.workdir}"
                    f" (its output: {run.workdir}/study.log)")
    if stop.requested:
        out.preempted = True


# ---------------------------------------------------------------- --slurm


def write_slurm(spec: str, workdir: str, cli_flags: Sequence[str], out_dir: str,
                options: Sequence[str] = ()) -> list[pathlib.Path]:
    """One sbatch script per stage, a job array of its runs (each `lm study --run ID`, which
    runs the `lm train` shown beside it and writes its DONE marker), and submit.sh, which
    chains the stages with --dependency=afterok and then summarizes."""
    _, runs, _ = build(spec, workdir, cli_flags)
    out = pathlib.Path(out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    scripts = []
    for i, stage in enumerate(s for s in STAGES if any(r.stage == s for r in runs)):
        stage_runs = [r for r in runs if r.stage == stage]
        cases = []
        for j, r in enumerate(stage_runs):
            cmd = shlex.join(["python", *worker_argv(spec, workdir, r.id, cli_flags)[1:]])
            cases.append(f"  {j})  # {r.command}\n      {cmd} ;;")
        path = out / f"{i}-{stage}.sbatch"
        path.write_text("\n".join([
            "#!/bin/bash",
            f"# Study {spec}, stage {stage}: {len(stage_runs)} runs, one array task each.",
            "# Submit every stage in order with submit.sh (it adds --dependency=afterok).",
            f"#SBATCH --job-name=study-{stage}",
            f"#SBATCH --array=0-{len(stage_runs) - 1}",
            f"#SBATCH --output={out.absolute()}/logs/{stage}-%a.out",
            *(f"#SBATCH {o}" for o in options),
            "set -euo pipefail",
            f"cd {shlex.quote(os.getcwd())}",
            'case "$SLURM_ARRAY_TASK_ID" in',
            *cases,
            '  *) echo "no run $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
            "esac", ""]))
        scripts.append(path)
    summarize = shlex.join(["python", "-m", "lm", "study", "--config", spec, "--workdir",
                            str(workdir), "--summarize", *cli_flags])
    lines = ["#!/bin/bash", "# Submits the study's stages, each after the previous one "
             "succeeded, then its summary.", "set -euo pipefail", 'cd "$(dirname "$0")"']
    dependency = ""
    for path in scripts:
        var = path.stem.split("-", 1)[1]
        lines += [f"{var}=$(sbatch --parsable {dependency}{path.name})",
                  f'echo "{var}: job ${var}"']
        dependency = f"--dependency=afterok:${var} "
    wrap = shlex.quote(f"cd {shlex.quote(os.getcwd())} && {summarize}")
    lines += [f"sbatch --parsable --dependency=afterany:${var} --job-name=study-summary "
              f"--output=logs/summary.out --wrap {wrap}", ""]
    submit = out / "submit.sh"
    submit.write_text("\n".join(lines))
    submit.chmod(0o755)
    return [*scripts, submit]


# ---------------------------------------------------------------- results


def _row(run: dict[str, Any]) -> dict[str, Any]:
    """A runs.csv row of a run (value None unless it finished with a best checkpoint)."""
    wd = pathlib.Path(run["workdir"])
    done = json.loads((wd / DONE).read_text()) if (wd / DONE).exists() else None
    result = (done or {}).get("result", {})
    value = result.get(f"best/{run['metric']}") if run["metric"] else None
    return dict(stage=run["stage"], variant=run["variant"], task=run["task"],
                pretrain_seed=run["pretrain_seed"],
                finetune_seed="" if run["finetune_seed"] is None else run["finetune_seed"],
                metric=run["metric"], value=value,
                steps=int(result["step"]) if "step" in result else "",
                wall_s=round(done["wall_s"], 1) if done else "", workdir=run["workdir"],
                _done=done is not None, _started=wd.exists())


def summarize(workdir: str, log=print) -> list[dict[str, Any]]:
    """Rewrites DIR/runs.csv (finished runs) and DIR/results.csv/.md/.png from what is on
    disk; runs not finished are listed as missing (with their workdir when they started)."""
    import csv

    from lm.runs import report

    root = pathlib.Path(workdir)
    if not (root / STUDY_FILE).exists():
        raise UserError(f"{root / STUDY_FILE} not found: is {workdir} a study dir?")
    saved = json.loads((root / STUDY_FILE).read_text())
    rows = [_row(r) for r in saved["runs"] if r["stage"] != "tokenizer"]
    with open(root / RUNS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()}
                         for row in rows if row["_done"])
    # Started but unfinished runs go to the report without a value: listed with their workdir.
    report.write_report([r for r in rows if r["_started"]], report.Study.from_dict(
        saved["study"]), root, log=log)
    finished = sum(r["_done"] for r in rows)
    log(f"{finished}/{len(rows)} runs finished; wrote {root / RUNS_CSV}, "
        f"{root / 'results.md'}")
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows if r["_done"]]
