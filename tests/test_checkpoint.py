"""Checkpoints: keep-last-K + best, exact resume, SIGTERM, kill -9, and another model's shapes.

References: an uninterrupted run (resume must give bitwise the same metrics on CPU) and the
values that were saved (a checkpoint that survives kill -9 holds exactly what was written).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.train import checkpoint, signals
from lm.train.loop import train
from lm.train.state import TrainState
from tests import multiproc

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"
# A 1-layer char GPT: 6 steps of 4×16 tokens, eval and checkpoint every 3 steps.
TINY = {
    "model.num_layers": "1", "model.d_model": "32", "model.d_ff": "64", "model.num_heads": "2",
    "data.seq_len": "16", "train.batch_size": "4", "train.steps": "6",
    "train.warmup_steps": "2", "train.log_every": "1", "train.eval_every": "3",
    "train.eval_steps": "1", "train.eval_at_start": "False", "train.checkpoint_every": "3",
}
TIMING_KEYS = {"train/steps_per_s", "train/tokens_per_s", "train/tflops_per_s", "train/mfu",
               "train/first_step_s"}  # wall-clock, not state


def _config(**overrides: str):
    return config_lib.load(EXPERIMENT, {**TINY, **overrides})


def _metrics(workdir) -> list[dict]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def _state(value: float, width: int = 3) -> TrainState:
    params = {"dense": {"kernel": jnp.full((2, width), value)}, "bias": jnp.full((4,), value)}
    return TrainState(step=jnp.asarray(int(value), jnp.int32), params=params,
                      opt_state={"mu": jax.tree.map(jnp.zeros_like, params)})


# ------------------------------------------------------------------------- the Checkpointer

def test_keeps_the_last_k_and_the_best(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=2, keep=2, best_metric="eval/loss",
                                   config={"model": {"d_model": 3}})
    eval_loss = {2: 5.0, 4: 1.0, 6: 3.0, 8: 4.0, 10: 6.0}  # the best is step 4
    for step in range(1, 11):
        saved = ckpt.save(step, _state(step), {"batches": step},
                          metrics={"eval/loss": eval_loss.get(step, 0.0)})
        assert saved == (step % 2 == 0)  # only multiples of `every`
    assert not ckpt.save(10, _state(10), {}, force=True)  # that step is already saved
    ckpt.close()

    ckpt = checkpoint.Checkpointer(str(tmp_path), every=2, keep=2)
    assert ckpt.all_steps() == [4, 8, 10]
    state, data_state, extra = ckpt.restore(_state(0))
    assert int(state.step) == 10 and float(state.params["bias"][0]) == 10.0
    assert data_state == {"batches": 10}
    assert extra == {"config": {"model": {"d_model": 3}}, "step": 10}
    state, data_state, _ = ckpt.restore(_state(0), step=4)
    assert float(state.params["dense"]["kernel"][0, 0]) == 4.0 and data_state == {"batches": 4}
    saved, data_state, _ = ckpt.restore(step=8, data=False)  # the saved layout, as dicts
    assert float(saved["params"]["dense"]["kernel"][0, 0]) == 8.0 and data_state is None
    ckpt.close()


def test_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--workdir runs/x`, as the README's quick start has it
    ckpt = checkpoint.Checkpointer("runs/x", every=1, keep=1)
    ckpt.save(3, _state(3), {"batches": 3})
    ckpt.close()
    ckpt = checkpoint.Checkpointer("runs/x", every=1, keep=1)
    state, data_state, _ = ckpt.restore(_state(0))
    assert int(state.step) == 3 and data_state == {"batches": 3}
    assert (tmp_path / "runs/x/checkpoints/3").is_dir()
    ckpt.close()


def test_restore_of_another_model_shape_names_the_parameters(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=1)
    ckpt.save(1, _state(1, width=3), None)
    ckpt.wait()
    with pytest.raises(ValueError) as err:
        ckpt.restore(_state(0, width=5))
    ckpt.close()
    message = str(err.value)
    assert "holds a model of another shape" in message
    assert "params.dense.kernel: checkpoint (2, 3) vs model (2, 5)" in message
    assert "params.bias" not in message  # only what differs
    assert "--workdir" in message  # and what to do about it


def save_forever(directory: str) -> None:
    """Saves checkpoints of 16 MB states, each filled with its step, until killed."""
    ckpt = checkpoint.Checkpointer(directory, every=1, keep=2)
    for step in range(1, 10_000):
        state = _state(step)
        state = state.replace(params={**state.params, "big": jnp.full((4_000_000,), step * 1.0)})
        ckpt.save(step, state, {"batches": step})


def test_kill_9_mid_save_leaves_the_last_completed_checkpoint_loadable(tmp_path):
    code = f"from tests.test_checkpoint import save_forever; save_forever({str(tmp_path)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    ckpt_dir = tmp_path / "checkpoints"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            names = [p.name for p in ckpt_dir.iterdir()] if ckpt_dir.exists() else []
            if sum(n.isdigit() for n in names) >= 2 and any("tmp" in n for n in names):
                break  # a save is half written: kill now
            time.sleep(0.005)
        else:
            pytest.fail(f"the saver never had a save in flight (exit code {proc.poll()})")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any("tmp" in p.name for p in ckpt_dir.iterdir())  # the half-written save

    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2)
    step = ckpt.latest_step()
    target = _state(0)
    target = target.replace(params={**target.params, "big": jnp.zeros((4_000_000,))})
    state, data_state, _ = ckpt.restore(target)
    ckpt.close()
    assert step >= 2 and int(state.step) == step and data_state == {"batches": step}
    np.testing.assert_array_equal(state.params["big"], np.full((4_000_000,), float(step)))
    assert not any("tmp" in p.name for p in ckpt_dir.iterdir())  # cleaned up on open


def preemption_step() -> int:
    """Worker: process 0 gets SIGTERM at step 5; returns the step at which this process stops."""
    preemption = signals.install_signal_handlers()
    for step in range(1, 3000):
        if jax.process_index() == 0 and step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        if preemption.should_stop(step):
            return step
        time.sleep(0.01)  # a train step
    return -1


def test_sigterm_on_one_host_stops_every_host_at_the_same_step():
    # Hosts that stopped at different steps would wait forever in the next collective.
    steps = multiproc.run("tests.test_checkpoint:preemption_step", 2, timeout=120)
    assert steps[0] == steps[1] >= 5


# ------------------------------------------------------------------ through the train loop

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train(_config(), str(workdir), quiet=True)
    return workdir


class _StopAt:
    """A preemption notice that arrives at `step` (what SIGTERM sets, without a signal)."""

    def __init__(self, step: int):
        self.step, self.requested = step, False

    def should_stop(self, step: int) -> bool:
        self.requested = step >= self.step
        return self.requested


@pytest.mark.slow
def test_resumed_run_gives_the_same_metrics_as_the_uninterrupted_one(uninterrupted, tmp_path,
                                                                      monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(signals, "install_signal_handlers", lambda: _StopAt(2))
        stopped = train(_config(), str(tmp_path), quiet=True)
    assert stopped["step"] == 2
    assert checkpoint.Checkpointer(str(tmp_path), every=3, keep=2).all_steps() == [2]
    resumed = train(_config(), str(tmp_path), quiet=True)
    assert resumed["step"] == 6
    expected = _metrics(uninterrupted)
    assert [r["step"] for r in expected] == [1, 2, 3, 3, 4, 5, 6, 6]  # eval lines at 3 and 6
    assert _metrics(tmp_path) == expected  # bitwise: same floats, every step


def test_checkpoint_of_another_model_shape_in_the_workdir_is_a_clear_error(uninterrupted):
    with pytest.raises(ValueError) as err:
        train(_config(**{"model.d_ff": "96", "train.steps": "9"}), str(uninterrupted),
              quiet=True)
    assert "holds a model of another shape" in str(err.value)
    assert "mlp.wi.kernel: checkpoint (1, 32, 64) vs model (1, 32, 96)" in str(err.value)


def _wait_for_steps(workdir: pathlib.Path, proc: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 180
    metrics = workdir / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"training logged fewer than {count} steps (exit code {proc.wait()})")


@pytest.mark.slow
def test_sigterm_saves_at_the_current_step_and_the_restart_continues(tmp_path):
    long_run = {"train.steps": "100000", "train.decay_steps": "100000",
                "train.checkpoint_every": "100000", "train.eval_every": "0"}
    overrides = [f"--config.{k}={v}" for k, v in {**TINY, **long_run}.items()]
    cmd = [sys.executable, "-m", "lm", "train", "--config", EXPERIMENT, "--workdir",
           str(tmp_path), "--quiet", *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_steps(tmp_path, proc, 3)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == signals.PREEMPTED_EXIT, output
    assert "rerun the same command to resume" in output
    last = _metrics(tmp_path)[-1]["step"]
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2)
    assert ckpt.all_steps() == [last]  # saved at the step it had reached, not a periodic one
    ckpt.close()

    result = train(_config(**{**long_run, "train.steps": str(last + 2)}), str(tmp_path),
                   quiet=True, allow_config_change=True)
    assert result["step"] == last + 2
    train_steps = [r["step"] for r in _metrics(tmp_path) if "train/loss" in r]
    assert train_steps[-3:] == [last, last + 1, last + 2]


def test_flipped_bytes_in_a_saved_array_are_found_by_its_checksum(tmp_path):
    """Bit rot that still decodes (64 flipped bytes of an array) restores garbage without a
    word unless each array's checksum, saved with it, is checked: the step is set aside like
    a truncated one and the previous one restored."""
    def big_state(step):
        state = _state(step)
        big = jax.random.normal(jax.random.key(step), (20_000,))  # random: no compression
        return state.replace(params={**state.params, "big": big})

    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2)
    for step in (1, 2):
        ckpt.save(step, big_state(step), {"batches": step})
    ckpt.close()
    data_files = (tmp_path / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d").iterdir()
    biggest = max(data_files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    biggest.write_bytes(bytes(data))

    messages = []
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2)
    state, data_state, _ = ckpt.restore_latest_intact(big_state(0), log=messages.append)
    ckpt.close()
    assert int(state.step) == 1 and data_state == {"batches": 1}
    np.testing.assert_array_equal(state.params["big"], big_state(1).params["big"])
    (message,) = messages
    assert "checkpoint step 2 is damaged" in message and "params.big" in message
    assert "differ from the checksums saved with them" in message
    assert [p.name.split("-")[0] for p in (tmp_path / "checkpoints_damaged").iterdir()] == ["2"]


def test_checksums_agree_across_shardings():
    """Integer sums: the checksum of an array does not depend on how it is laid out."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    x = jnp.arange(4 * 6, dtype=jnp.float32).reshape(4, 6) / 7
    mesh = Mesh(np.array(jax.devices()[:1]), ("a",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("a", None)))
    plain, finite = checkpoint.checksums({"x": x, "b": jnp.zeros((3,), jnp.bfloat16)})
    assert finite and plain["x"] == checkpoint.checksums({"x": sharded})[0]["x"]
    moved = checkpoint.checksums({"x": x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])})[0]
    assert moved["x"] != plain["x"]  # two values swapped: same sum, other positions
    assert not checkpoint.checksums({"x": x.at[1, 2].set(jnp.inf)})[1]
