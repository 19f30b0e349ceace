"""Resume on another number of hosts: 2 → 1 and 1 → 2 → 1 processes give the losses of an
uninterrupted one-process run, step by step, including the steps after each resume.

The objective is packed causal LM, the hardest case (rows are cut from a document stream);
`data.shards=2` fixes the data order for every process count (lm/data/shards.py).
Parameters and optimizer state reshard through orbax; the data state is merged from every
process's file and re-split. Runs on P processes are tests/multiproc.py's: one CPU device
each on 127.0.0.1.
"""

import json
import pathlib

import numpy as np
import pytest

from lm import config as config_lib
from lm.train.loop import train
from tests import multiproc

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"
TOTAL = 6
# A 1-layer char GPT on packed rows of tiny Shakespeare cut into ~1000 documents.
TINY = {
    "model.num_layers": "1", "model.d_model": "32", "model.d_ff": "64", "model.num_heads": "2",
    "data.objective": "causal", "data.chunk_chars": "1000", "data.shards": "2",
    "data.shuffle_buffer": "64", "data.seq_len": "16",
    "train.batch_size": "4", "train.lr": "1e-2", "train.decay_steps": str(TOTAL),
    "train.warmup_steps": "2",
    "train.log_every": "1", "train.eval_every": "3", "train.eval_steps": "1",
    "train.eval_at_start": "False", "train.checkpoint_every": "100",
}


def run(workdir: str, steps: int) -> dict:
    """Trains to `steps` in `workdir` (resuming there); the final step saves a checkpoint."""
    config = config_lib.load(EXPERIMENT, {**TINY, "train.steps": str(steps)})
    # Each leg stops at its own train.steps (the schedule is fixed by decay_steps): a config
    # change the run records with its step.
    return train(config, workdir, quiet=True, allow_config_change=True)


def runs(plan: list[tuple[str, int]]) -> None:
    """Worker: `run` each (workdir, steps) in turn (processes start slowly: one start)."""
    for workdir, steps in plan:
        run(workdir, steps)


def _losses(workdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of train/loss and eval/loss; each step is logged once."""
    out: dict[str, dict[int, float]] = {"train/loss": {}, "eval/loss": {}}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, values in out.items():
            if key in record:
                assert record["step"] not in values, f"step {record['step']} logged twice"
                values[record["step"]] = record[key]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("one_process")
    run(str(workdir), TOTAL)
    return _losses(workdir)


def _assert_same_losses(got: dict, expected: dict) -> None:
    assert sorted(got["train/loss"]) == list(range(1, TOTAL + 1))
    for key in expected:
        steps = sorted(expected[key])
        np.testing.assert_allclose([got[key][s] for s in steps],
                                   [expected[key][s] for s in steps], rtol=1e-6, err_msg=key)


@pytest.mark.slow
def test_two_processes_then_one_and_one_then_two_then_one(uninterrupted, tmp_path):
    two_one, one_two_one = tmp_path / "2-1", tmp_path / "1-2-1"
    run(str(one_two_one), 2)
    # One start of 2 processes for both: a fresh run to step 3, and a resume of the
    # 1-process run from step 2 to 4.
    multiproc.run("tests.test_resume_hosts:runs", 2,
                  kwargs={"plan": [(str(two_one), 3), (str(one_two_one), 4)]})
    data_files = {p.name for p in (two_one / "checkpoints" / "3" / "data").iterdir()}
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_files
    for workdir in (two_one, one_two_one):
        run(str(workdir), TOTAL)
        _assert_same_losses(_losses(workdir), uninterrupted)
