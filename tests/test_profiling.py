"""lm.profiling: a trace of a tiny jitted function, and the summary's arithmetic."""

import jax
import jax.numpy as jnp
import pytest

from lm.train import profiling


def test_trace_of_a_jitted_function_sums_its_ops(tmp_path):
    @jax.jit
    def tiny(x):
        return jnp.sin(x @ x).sum()

    x = jnp.ones((64, 64))
    tiny(x).block_until_ready()  # compile outside the trace
    with profiling.trace(tmp_path):
        for _ in range(3):
            tiny(x).block_until_ready()
    ops = profiling.op_times(tmp_path, steps=3)
    mine = [o for o in ops if o.module == "jit_tiny"]
    assert len(mine) >= 2, [(o.name, o.module) for o in ops]  # the dot, the sine, the sum
    # Every op of the function ran once per call, and the shares cover all the ops.
    assert all(o.calls_per_step == 1 for o in mine)
    assert sum(o.share for o in ops) == pytest.approx(1.0)
    assert all(o.ms_per_step > 0 for o in mine)
    table = profiling.format_table(mine, top=1, step_ms=1.0).splitlines()
    assert mine[0].name in table[1]
    assert table[-2].endswith(f"{len(mine) - 1} other ops")
    assert table[-1].endswith("all ops; wall time per step 1.000 ms")


def _event(name, ts, dur, pid=1, tid=1, module="jit_step"):
    return {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
            "args": {"hlo_op": name, "hlo_module": module}}


def test_nested_ops_count_once_and_device_events_win(tmp_path, monkeypatch):
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
        # host side: a launch event that must not count when device events exist
        _event("fusion.1", 0, 50, pid=1),
        # device: a while loop holding two ops, then a lone op on another stream
        _event("while.2", 0, 100, pid=7),
        _event("fusion.1", 10, 30, pid=7),
        _event("dot.3", 50, 40, pid=7),
        _event("fusion.1", 0, 20, pid=7, tid=2),
        {"ph": "X", "name": "python", "pid": 1, "tid": 1, "ts": 0, "dur": 500},
    ]
    monkeypatch.setattr(profiling, "load_events", lambda directory: events)
    ops = {o.name: o for o in profiling.op_times("unused", steps=2)}
    assert set(ops) == {"while.2", "fusion.1", "dot.3"}
    assert ops["while.2"].ms_per_step == pytest.approx(30 / 2 / 1e3)  # 100 - 30 - 40
    assert ops["fusion.1"].ms_per_step == pytest.approx(50 / 2 / 1e3)  # device: 30 + 20
    assert ops["fusion.1"].calls_per_step == 1
    assert ops["dot.3"].share == pytest.approx(40 / 120)


def test_no_trace_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="trace.json.gz"):
        profiling.op_times(tmp_path)


def test_bench_profile_traces_steps_of_the_real_loop(tmp_path, capsys):
    from lm.cli import bench as bench_cli

    bench_cli.main(["bench", "--config", "experiments/gpt_shakespeare_char.py:cpu",
                    "--steps", "12", "--profile", str(tmp_path / "trace"),
                    "--profile_steps", "3", "--config.model.num_layers=1",
                    "--config.model.d_model=32", "--config.model.d_ff=64",
                    "--config.train.batch_size=4"])
    out = capsys.readouterr().out
    assert f"profile of steps 6..8 in {tmp_path / 'trace'}" in out
    table = out.split("profile of steps", 1)[1].splitlines()
    rows = [line for line in table[2:] if "(jit_train_step)" in line]
    assert rows and all(float(r.split()[2]) >= 1 for r in rows)  # calls per step
    assert any("dot_general" in r for r in rows)  # sources come from the compiled HLO
    assert list((tmp_path / "trace").rglob("*.trace.json.gz"))


@pytest.mark.parametrize("window", [(5,), (0, 3), (4, 4)])
def test_a_bad_profile_window_is_a_clear_error(window, tmp_path):
    with pytest.raises(ValueError, match="profile_steps"):
        profiling.StepProfiler(window, tmp_path)
