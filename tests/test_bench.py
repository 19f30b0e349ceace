"""`python -m lm bench` runs the real loop and reports throughput past compilation."""

import json

import pytest

from lm.cli import bench as bench_cli
from lm.train import bench


def test_summary_skips_the_compile_window_and_needs_two_windows():
    records = [{"step": 1, "train/steps_per_s": 0.1, "train/tokens_per_s": 10.0},
               {"step": 2, "train/steps_per_s": 4.0, "train/tokens_per_s": 400.0},
               {"step": 2, "eval/loss": 1.0},
               {"step": 3, "train/steps_per_s": 6.0, "train/tokens_per_s": 600.0}]
    # Two one-step windows of 0.25 s and 1/6 s: 2 steps in 5/12 s, not the mean of the rates.
    assert bench.summarize(records) == pytest.approx(
        {"train/steps_per_s": 4.8, "train/tokens_per_s": 480.0, "ms_per_step": 1e3 / 4.8})
    with pytest.raises(ValueError, match="raise --steps"):
        bench.summarize(records[:1])


def test_bench_command_reports_throughput_and_writes_json(capsys, tmp_path):
    bench_cli.main(["bench", "--config", "experiments/gpt_shakespeare_char.py:cpu", "--steps", "20",
                "--config.model.num_layers=1", "--config.model.d_model=32",
                "--config.model.d_ff=64", "--config.train.batch_size=4",
                "--json", str(tmp_path / "bench.json")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(f.rsplit("=", 1) for f in line.split(": ", 1)[1].split("  "))
    report = json.loads((tmp_path / "bench.json").read_text())
    assert float(fields["steps/s"]) == pytest.approx(report["steps_per_s"], rel=1e-3)
    assert report["ms_per_step"] == pytest.approx(1000 / report["steps_per_s"])
    assert report["tokens_per_s"] == pytest.approx(report["steps_per_s"] * 4 * 64, rel=1e-6)
    assert 0 < report["mfu"] < 1 and report["compile_s"] > 0
    # model TFLOP/s and MFU describe the same FLOPs: MFU = FLOP/s / peak
    assert report["mfu"] == pytest.approx(report["tflops_per_s"] * 1e12 / report["peak_flops"],
                                          rel=1e-6)


@pytest.mark.parametrize("objective", ["causal", "mlm_nsp", "span_corruption", "seq2seq",
                                       "classification"])
def test_synthetic_batches_have_the_objectives_shapes_and_resume(objective):
    from lm import config as config_lib
    from lm.data import specs, synthetic

    cfg = config_lib.data_config()
    cfg.update(objective=objective, seq_len=32, task="mrpc")
    tok = synthetic.NullTokenizer(100)
    it = synthetic.make_iterator(cfg, tok, split="train", batch_size=4, seed=0)
    first = next(it)
    assert {k: (v.shape, v.dtype) for k, v in first.items()} == specs.batch_spec(cfg, 4)
    assert first["inputs"].max() < 100
    state, second = it.get_state(), next(it)
    again = synthetic.make_iterator(cfg, tok, split="train", batch_size=4, seed=0)
    again.set_state(state)
    resumed = next(again)
    assert all((resumed[k] == second[k]).all() for k in second)


def test_bench_on_synthetic_data_needs_no_corpus(capsys):
    bench_cli.main(["bench", "--config", "experiments/bert_mlm_nsp.py:tiny", "--steps", "10",
                "--config.data.source=synthetic", "--config.train.batch_size=4",
                "--config.data.seq_len=32", "--config.model.num_layers=1"])
    assert "steps/s=" in capsys.readouterr().out


def test_ms_per_step_is_the_windows_time_over_their_steps():
    """What scripts/compare_hf_finetune.py reports for lm (every window: the first step only
    starts the clock; eval records carry no rate), and the median nanoGPT's runner reports."""
    # Steps 2..50 took 10 s, 51..100 took 5 s, 101..111 took 2.2 s; an eval at step 100.
    records = [{"step": 50, "train/steps_per_s": 49 / 10.0},
               {"step": 100, "train/steps_per_s": 50 / 5.0},
               {"step": 100, "eval/accuracy": 0.5},
               {"step": 111, "train/steps_per_s": 11 / 2.2}]
    summary = bench.summarize(records, skip_windows=0)
    assert summary["ms_per_step"] == pytest.approx(17.2 / 110 * 1e3)
    assert bench.median_ms_per_step(records, skip_windows=0) == pytest.approx(200.0)
