"""Failure and recovery: a resumed run is the uninterrupted run, in its checkpoints (the best
one included), its records and its config; damaged checkpoints are set aside, not fatal.

The reference for every test is an uninterrupted run of the same tiny config.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.cli import train as cli_train
from lm.errors import UserError
from lm.train import checkpoint, pretrained, restore, signals, writer
from lm.train import step as step_lib
from lm.train.loop import train

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"
# 30 steps of a 1-layer char GPT: eval every 10, checkpoint every 5, keep the last 2 and the
# best by eval/loss, 'max' so that the best is an early checkpoint that the last-2 policy
# would delete (the case a forgotten metric loses).
TINY = {
    "model.num_layers": "1", "model.d_model": "32", "model.d_ff": "64", "model.num_heads": "2",
    "data.seq_len": "16", "train.batch_size": "4", "train.steps": "30", "train.log_every": "1",
    "train.eval_every": "10", "train.eval_steps": "1", "train.eval_at_start": "False",
    "train.checkpoint_every": "5", "train.keep_checkpoints": "2", "train.best_mode": "max",
}
TIMING_KEYS = {"train/steps_per_s", "train/tokens_per_s", "train/tflops_per_s", "train/mfu",
               "train/first_step_s"}


def _config(**overrides: str):
    return config_lib.load(EXPERIMENT, {**TINY, **overrides})


def _records(workdir) -> list[dict]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in lines]


def _checkpoints(workdir) -> tuple[list[int], int | None]:
    ckpt = checkpoint.Checkpointer(str(workdir), best_metric="eval/loss", best_mode="max",
                                   read_only=True)
    steps, best = ckpt.all_steps(), ckpt.best_step()
    ckpt.close()
    return steps, best


class _StopAt:
    """A preemption notice that arrives at `step` (what SIGTERM sets, without a signal)."""

    def __init__(self, step: int):
        self.step, self.requested, self.signal_name = step, False, "SIGTERM"

    def should_stop(self, step: int) -> bool:
        self.requested = step >= self.step
        return self.requested


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, train(_config(), str(workdir), quiet=True)


def _without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def test_a_resumed_run_keeps_the_best_checkpoint_of_the_uninterrupted_one(uninterrupted,
                                                                         tmp_path, monkeypatch):
    reference, expected = uninterrupted
    steps, best = _checkpoints(reference)
    assert best == 10 and steps == [10, 25, 30]  # the best (max) survives the last-2 policy
    with monkeypatch.context() as patch:
        patch.setattr(signals, "install_signal_handlers", lambda: _StopAt(22))
        stopped = train(_config(), str(tmp_path), quiet=True)
    assert stopped["step"] == 22 and stopped["preempted"] == 1.0
    resumed = train(_config(), str(tmp_path), quiet=True)
    assert _checkpoints(tmp_path) == (steps, best)
    assert _without_timing(resumed) == _without_timing(expected)
    assert resumed["best/step"] == 10 and resumed["best/eval/loss"] == next(
        r["eval/loss"] for r in _records(reference) if r["step"] == 10 and "eval/loss" in r)
    assert _records(tmp_path) == _records(reference)


def test_steps_after_the_last_checkpoint_are_recorded_once(uninterrupted, tmp_path):
    """A kill after step 30's records but before its checkpoint: the rerun trains 26..30 again
    and metrics.jsonl ends up exactly as the uninterrupted run's, not with them twice."""
    reference, _ = uninterrupted
    shutil.copytree(reference, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "30")  # never completed
    train(_config(), str(tmp_path / "run"), quiet=True)
    assert _records(tmp_path / "run") == _records(reference)


def _biggest_file(directory: pathlib.Path) -> pathlib.Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_64_bytes(path: pathlib.Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    start = min(int(len(data) * where), max(len(data) - 64, 0))
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# {damage: (what it does to a step directory, what the message says)}
DAMAGE = {
    "empty data json": (lambda d: (d / "data" / "process_0-of-1.json").write_text(""), ""),
    "truncated state file": (lambda d: _truncate(_biggest_file(d / "state")), ""),
    "empty metrics": (lambda d: (d / "metrics" / "metrics").write_text(""), "is not JSON"),
    "junk metrics": (lambda d: (d / "metrics" / "metrics").write_text("{'eval"), "is not JSON"),
    "non-UTF-8 metrics": (lambda d: (d / "metrics" / "metrics").write_bytes(b"\xff\xfe{"),
                          "is not JSON"),
    "flipped bytes": (lambda d: _flip_64_bytes(_biggest_file(d / "state" / "ocdbt.process_0")),
                      "differ from the checksums saved with them"),
    "missing manifest": (lambda d: (d / "state" / "manifest.ocdbt").unlink(),
                         "manifest.ocdbt is missing"),
}


@pytest.mark.parametrize("damage", [d for d in DAMAGE if DAMAGE[d][1]])
def test_more_damage_is_set_aside_and_the_previous_step_restored(uninterrupted, tmp_path,
                                                                 damage, capfd):
    """What the loop's Checkpointer does on a resume (the test below runs the loop)."""
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("tensorboard"))
    apply, said = DAMAGE[damage]
    apply(run / "checkpoints" / "30")
    ckpt = checkpoint.Checkpointer(str(run), best_metric="eval/loss", best_mode="max")
    state, _, extra = ckpt.restore_latest_intact(ckpt.saved_abstract_state(25))
    ckpt.close()
    out, err = capfd.readouterr()
    assert extra["step"] == 25 and int(state["step"]) == 25
    assert "checkpoint step 30 is damaged" in out and said in out, out
    assert [p.name.split("-")[0] for p in (run / "checkpoints_damaged").iterdir()] == ["30"]
    # One line: no orbax tracebacks ("Event loop is closed"), no reprs of its internals.
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-2000:]
    assert "<bound method" not in out and "tensorstore_spec" not in out


@pytest.mark.parametrize("damage", ["empty data json", "truncated state file"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_used(
        uninterrupted, tmp_path, damage, capsys):
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    latest = run / "checkpoints" / "30"
    DAMAGE[damage][0](latest)
    result = train(_config(), str(run), quiet=True)
    out = capsys.readouterr().out
    assert "checkpoint step 30 is damaged" in out and "resuming from step 25" in out
    assert result["step"] == 30
    assert _records(run) == _records(reference)  # steps 26..30 again, the same numbers
    aside = list((run / "checkpoints_damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("30-")  # kept, not deleted


def test_a_resume_with_another_config_is_refused_without_touching_the_record(uninterrupted,
                                                                             tmp_path):
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    recorded = (run / "config.json").read_text()
    with pytest.raises(UserError, match=r"(?s)train.lr: 0.001 -> 0.003.*--allow_config_change"):
        train(_config(**{"train.lr": "3e-3"}), str(run), quiet=True)
    with pytest.raises(UserError, match="holds a model of another shape"):
        train(_config(**{"model.d_ff": "96"}), str(run), quiet=True)
    assert (run / "config.json").read_text() == recorded
    # The same config again: the run is finished, nothing changes.
    again = train(_config(), str(run), quiet=True)
    assert again["step"] == 30 and (run / "config.json").read_text() == recorded
    # A field that a later lm added is no change where the run gets its default (1), and
    # one where it does not (this experiment's 2).
    older = json.loads(recorded)
    del older["train"]["parallel_micro_batches"]
    (run / "config.json").write_text(json.dumps(older))
    assert train(_config(**{"train.parallel_micro_batches": "1"}), str(run),
                 quiet=True)["step"] == 30
    with pytest.raises(UserError, match=r"train.parallel_micro_batches: None -> 2"):
        train(_config(), str(run), quiet=True)
    # The same for a model field (its default is ModelConfig's).
    older = json.loads(recorded)
    del older["model"]["kernels"]
    (run / "config.json").write_text(json.dumps(older))
    assert train(_config(), str(run), quiet=True)["step"] == 30
    with pytest.raises(UserError, match=r"model.kernels: None -> 'cpu'"):
        train(_config(**{"model.kernels": "cpu"}), str(run), quiet=True)
    (run / "config.json").write_text(recorded)
    # Asked for explicitly, a change is recorded with the step it took effect.
    longer = train(_config(**{"train.steps": "35"}), str(run), quiet=True,
                   allow_config_change=True)
    assert longer["step"] == 35
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").open()]
    assert changes[0]["step"] == 30 and changes[0]["changes"]["train.steps"] == [30, 35]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 35


def test_records_past_the_restored_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 1, 2, 2, 3, 4)))
    writer.truncate_records(path, 2)
    assert [json.loads(line)["step"] for line in path.open()] == [0, 1, 2, 2]


def test_no_progress_bar_in_a_log_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    w = writer.MetricsWriter(tmp_path, total_steps=10)
    for s in range(1, 4):
        w.advance(s)
        w.write(s, {"train/loss": 1.0})
    w.close()
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    assert captured.out.count("step ") == 3  # one plain line per record


def _tensorboard_events(directory: pathlib.Path) -> list:
    """Every event of every event file in `directory` (TFRecord framing: length, crc, data,
    crc), in file order."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            n = int.from_bytes(data[i:i + 8], "little")
            events.append(Event.FromString(data[i + 12:i + 12 + n]))
            i += 12 + n + 4
    return events


def _scalars(directory: pathlib.Path) -> list[tuple[int, dict]]:
    """(step, {tag: value}) of every event with values, in TensorBoard's file order."""
    return [(e.step, {v.tag: v.simple_value for v in e.summary.value})
            for e in _tensorboard_events(directory) if e.summary.value]


def test_tensorboard_holds_what_metrics_jsonl_holds(tmp_path):
    """One event per record with every value; a resumed writer rebuilds the events from what
    metrics.jsonl keeps, so the ones a killed run wrote past the restored step are gone."""
    records = [(1, {"train/loss": 2.5, "train/lr": 0.125}), (2, {"train/loss": 2.25}),
               (2, {"eval/loss": 2.75, "eval/accuracy": 0.5})]
    w = writer.MetricsWriter(tmp_path, total_steps=10, quiet=True)
    for step, values in records:
        w.write(step, values)
    w.close()
    time.sleep(1.1)  # event files are named by the second they start in, as a restart's is
    w = writer.MetricsWriter(tmp_path, total_steps=10, initial_step=1, resumed=True, quiet=True)
    w.write(2, {"train/loss": 2.0})
    w.close()
    assert _scalars(tmp_path / "tensorboard") == records[:1] + [(2, {"train/loss": 2.0})]
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["step"] for r in jsonl] == [1, 2]  # step 2 was dropped, then written again


class _Counting:
    """Batches {inputs: [[i]]} with get_state/set_state: the data-iterator interface."""

    def __init__(self, stop: int = 100):
        self.i, self.stop = 0, stop

    def __next__(self):
        if self.i >= self.stop:
            raise StopIteration
        self.i += 1
        return {"inputs": np.full((1, 1), self.i - 1, np.int32)}

    def get_state(self):
        return {"i": self.i}


def test_device_prefetch_checkpoints_the_next_unconsumed_batch():
    import jax

    from lm.train import sharding

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    source = _Counting(stop=5)
    prefetch = sharding.DevicePrefetch(source, mesh, size=2)
    for expected in range(3):
        host, batch = next(prefetch)
        assert int(host["inputs"][0, 0]) == expected == int(jax.device_get(batch["inputs"])[0, 0])
    assert source.i == 5 and prefetch.get_state() == {"i": 3}  # the source ran ahead
    assert [int(h["inputs"][0, 0]) for h, _ in prefetch] == [3, 4]
    assert prefetch.get_state() == {"i": 5}


# ------------------------------------------------------------- records, configs, poison


def _overrides(**extra: str) -> list[str]:
    return [f"--config.{k}={v}" for k, v in {**TINY, **extra}.items()]


@pytest.mark.slow
def test_tensorboard_after_a_kill_9_equals_an_uninterrupted_runs(uninterrupted, tmp_path):
    """Events still queued for the event file die with the process; the rerun rebuilds them
    from metrics.jsonl, so TensorBoard holds what an uninterrupted run's holds, step for step."""
    reference, _ = uninterrupted
    cmd = [sys.executable, "-m", "lm", "train", "--config", EXPERIMENT, "--workdir",
           str(tmp_path), "--quiet", *_overrides()]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = tmp_path / "metrics.jsonl", time.monotonic() + 180
    try:  # kill after step 17: checkpoint 15 is on disk, steps 16-17 only in the records
        while not (metrics.exists() and '"step": 17' in metrics.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "no step 17"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    train(_config(), str(tmp_path), quiet=True)

    def untimed(directory):
        return [(s, {k: v for k, v in values.items() if k not in TIMING_KEYS})
                for s, values in _scalars(directory / "tensorboard")]

    expected = untimed(reference)
    assert [s for s, _ in expected] == [*range(1, 11), 10, *range(11, 21), 20,
                                        *range(21, 31), 30]  # every step, evals at 10, 20, 30
    assert untimed(tmp_path) == expected


def test_a_torn_last_record_is_dropped_with_a_notice_and_the_run_resumes(uninterrupted,
                                                                         tmp_path, capsys):
    """A kill or a full disk in the middle of writing step 27's record: the rerun drops the
    torn line (and says so), resumes from checkpoint 25, and its records are the reference's."""
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / "30")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 26]
    (run / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 27, "train/accura')
    train(_config(), str(run), quiet=True)
    out = capsys.readouterr().out
    assert "metrics.jsonl: dropped a torn last record (line" in out
    assert _records(run) == _records(reference)


def test_a_damaged_middle_record_is_one_line_naming_the_file_and_line(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / "30")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[4] = lines[4][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"metrics.jsonl, line 5 is not a metrics record") as e:
        train(_config(), str(run), quiet=True)
    assert "\n" not in str(e.value)
    assert (run / "metrics.jsonl").read_text() == before  # nothing rewritten


def test_a_damaged_config_json_is_one_line_naming_the_file_and_the_fix(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("tensorboard"))
    fix = r"config.json is damaged \(.*\): delete it and rerun this run's `lm train` command"
    for content in (b'{"model": {"d_mod', b"\xff\xfe junk", b""):
        (run / "config.json").write_bytes(content)
        for read in (lambda: pretrained.run_config(run),  # sample, eval, predict, classify
                     lambda: restore.restore_params(str(run))):
            with pytest.raises(UserError, match=fix) as e:
                read()
            assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=fix.replace("(.*", "(empty")):
        train(_config(**{"train.steps": "31"}), str(run), quiet=True)
    (run / "config.json").unlink()  # the fix it names
    assert train(_config(), str(run), quiet=True)["step"] == 30
    assert json.loads((run / "config.json").read_text()) == json.loads(
        (reference / "config.json").read_text())


def test_a_diverging_run_names_no_poisoned_checkpoint_and_restart_starts_over(tmp_path):
    """lr=1e9: step 1's state is finite (params ~1e9) but its next step is NaN. It is set
    aside, not named "the last good"; the workdir then has records and no checkpoint, so a
    plain rerun is refused, and --restart moves the old run aside and starts over."""
    diverging = {"train.lr": "1e9", "train.checkpoint_every": "1", "train.steps": "6"}
    with pytest.raises(FloatingPointError) as e:
        train(_config(**diverging), str(tmp_path), quiet=True)
    assert "at step 2" in str(e.value) and "No checkpoint was saved before it" in str(e.value)
    assert "last good checkpoint" not in str(e.value)
    assert not list((tmp_path / "checkpoints").iterdir())
    assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints_damaged").iterdir()] == ["1"]
    records = (tmp_path / "metrics.jsonl").read_text()
    sane = {"train.steps": "6"}
    with pytest.raises(UserError, match=r"holds the records of a run .* but its checkpoints were"
                       r" set aside as damaged .*: rerun with --restart"):
        train(_config(**sane), str(tmp_path), quiet=True)
    assert (tmp_path / "metrics.jsonl").read_text() == records  # untouched
    cli_train.main(["train", "--config", EXPERIMENT, "--workdir", str(tmp_path), "--quiet",
                    "--restart", *_overrides(**sane)])
    assert [r["step"] for r in _records(tmp_path) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    (previous,) = (tmp_path / "previous").iterdir()  # moved, not deleted
    assert (previous / "metrics.jsonl").read_text() == records
    assert {p.name for p in previous.iterdir()} >= {"config.json", "checkpoints_damaged"}


def test_a_state_turned_nan_at_a_checkpoint_step_is_never_saved(tmp_path, monkeypatch):
    """Finite metrics, NaN params after the update of step 3: step 3 is not saved, and the
    message names step 2, whose values are finite."""
    real_step = step_lib.train_step

    def poisoned(state, batch, **kwargs):
        new, metrics = real_step(state, batch, **kwargs)
        nan = jnp.where(state.step == 2, jnp.nan, 1.0)
        return new.replace(params=jax.tree.map(lambda p: p * nan, new.params)), metrics

    monkeypatch.setattr(step_lib, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match=r"state of step 3 hold NaN/Inf: not saved\. "
                       r"The last good checkpoint is step 2"):
        train(_config(**{"train.checkpoint_every": "1", "train.steps": "5"}), str(tmp_path),
              quiet=True)
    ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    assert ckpt.all_steps() == [1, 2]
    saved, _, _ = ckpt.restore(step=2, data=False)
    ckpt.close()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved))


def test_readers_read_only_the_params_and_name_a_damaged_checkpoint_in_one_line(
        uninterrupted, tmp_path):
    """Each array file of the best checkpoint flipped in turn, at several places (which
    arrays a data file holds, and in what order, varies from save to save): a reader
    (sample, eval, predict, classify) gets the reference's params whenever the damage is in
    the optimizer state only, and one line naming the checkpoint when it is in the params."""
    reference, _ = uninterrupted
    _, want, _ = restore.restore_params(str(reference), 30)
    files = sorted((reference / "checkpoints" / "30" / "state" / "ocdbt.process_0" / "d").iterdir())
    outcomes = set()
    places = [(file, where) for file in files
              for where in ((0.5,) if file.stat().st_size < 4096 else np.linspace(0, 1, 9))]
    for i, (file, where) in enumerate(places):
        run = tmp_path / str(i)
        shutil.copytree(reference, run, ignore=shutil.ignore_patterns("tensorboard"))
        _flip_64_bytes(run / file.relative_to(reference), where)
        try:
            _, got, _ = restore.restore_params(str(run), 30)
        except UserError as e:
            assert "checkpoint step 30 in" in str(e) and "is damaged" in str(e)
            assert "\n" not in str(e)
            outcomes.add("named")
            continue
        jax.tree.map(np.testing.assert_array_equal, got, want)
        try:  # a full restore, as training does: it would set the step aside
            checkpoint.Checkpointer(str(run), read_only=True).restore(step=30, data=False)
            outcomes.add("harmless")  # bytes no array reads (an old B-tree node)
        except Exception:  # noqa: BLE001
            outcomes.add("params read, optimizer state damaged")
    assert {"named", "params read, optimizer state damaged"} <= outcomes


def test_a_damaged_metrics_file_is_named_to_a_reader(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("tensorboard"))
    (run / "checkpoints" / "10" / "metrics" / "metrics").write_text("")
    with pytest.raises(UserError, match=r"checkpoint step 10 in .* is damaged \(.*metrics is "
                       r"not JSON"):
        restore.restore_params(str(run), "best")
