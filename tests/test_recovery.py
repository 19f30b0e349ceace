"""Failure and recovery: a resumed run is the uninterrupted run, in its checkpoints (the best
one included), its records and its config; damaged checkpoints are set aside, not fatal.

The reference for every test is an uninterrupted run of the same tiny config.
"""

import json
import pathlib
import shutil
import sys
import time

import numpy as np
import pytest

from lm import config as config_lib
from lm.errors import UserError
from lm.train import checkpoint, signals, writer
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


@pytest.mark.parametrize("damage", ["empty data json", "truncated state file"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_used(
        uninterrupted, tmp_path, damage, capsys):
    reference, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    latest = run / "checkpoints" / "30"
    if damage == "empty data json":
        (latest / "data" / "process_0-of-1.json").write_text("")
    else:
        biggest = max((p for p in (latest / "state").rglob("*") if p.is_file()),
                      key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
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


def test_tensorboard_holds_what_metrics_jsonl_holds(tmp_path):
    """One event per record with every value, and a resumed writer's purge marker (TensorBoard
    then drops what a killed run wrote past the restored step)."""
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
    events = _tensorboard_events(tmp_path / "tensorboard")
    scalars = [(e.step, {v.tag: v.simple_value for v in e.summary.value})
               for e in events if e.summary.value]
    assert scalars == records + [(2, {"train/loss": 2.0})]
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [0, 2]  # fresh run; resumed after step 1
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
