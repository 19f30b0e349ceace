"""Fail fast, say what you see: wrong multi-process setups end within a bounded time with a
message naming the setting; process 0 describes the topology; whole-split eval keeps hosts
in step.

Every start here is real processes on 127.0.0.1 (tests/multiproc.py), with short timeouts.
"""

import pathlib
import time

import jax
import numpy as np
import pytest

from lm import config as config_lib
from lm.train import sharding, topology
from lm.train.loop import train
from tests import multiproc

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"


def joined() -> int:
    """Worker: nothing to do once lm.distributed.initialize() has returned."""
    return jax.process_count()


def train_with(overrides: dict) -> None:
    """Worker: a tiny training run with `overrides`, which must fail at start-up."""
    config = config_lib.load(EXPERIMENT, overrides)
    train(config, "/nonexistent-should-not-be-written", quiet=True)


TIMEOUT = {"LM_INIT_TIMEOUT": "4"}
# (case, worker, processes, per-process environment, worker kwargs, expected message)
CASES = {
    "same process id": ("joined", 2, [{"LM_PROCESS_ID": "0"}] * 2, None,
                        "two processes have LM_PROCESS_ID=0"),
    "no coordinator": ("joined", 2, [{"LM_PROCESS_ID": "1", **TIMEOUT}], None,
                       "no process 0 answered at 127.0.0.1:"),
    "a process missing": ("joined", 3, [{"LM_PROCESS_ID": "0", **TIMEOUT},
                                        {"LM_PROCESS_ID": "2", **TIMEOUT}], None,
                          "processes [1] of 3 did not reach process 0"),
    "mesh the devices do not divide": (
        "train_with", 2, [{}] * 2, {"overrides": {"mesh.data": "3"}},
        "mesh.data=3 mesh.fsdp=1 mesh.tensor=1 needs a multiple of 3 devices, but there are 2"),
    "batch the data axis cannot divide": (
        "train_with", 2, [{}] * 2, {"overrides": {"train.batch_size": "5"}},
        "train.batch_size=5 does not split over the batch axes (mesh data=2 × mesh fsdp=1 × "
        "train.parallel_micro_batches=2): use a multiple of 4"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_wrong_setup_ends_fast_naming_the_setting(case):
    worker, count, envs, kwargs, message = CASES[case]
    start = time.monotonic()
    results = multiproc.run_logs(f"tests.test_topology:{worker}", envs, num_processes=count,
                                 kwargs=kwargs, timeout=90)
    assert time.monotonic() - start < 90
    for code, log in results:
        assert code not in (0, None), log  # failed, not hung or killed
        assert message in log, log


def uneven_eval(lengths: list[int]) -> dict:
    """Worker: topology lines of a 2-way data mesh, and a whole-split pass where this
    process has `lengths[process]` batches."""
    mesh = sharding.make_mesh({"preset": "dp"})
    mine = lengths[jax.process_index()]
    batches = [{"weights": np.full((2, 3), i + 1.0, np.float32)} for i in range(mine)]
    seen = [float(b["weights"].sum()) for b in sharding.until_every_host_is_done(batches)]
    return dict(describe=topology.describe(mesh, batch_size=8, grad_accum_steps=2, preset="dp"),
                seen=seen)


def test_topology_lines_and_hosts_in_step_over_a_whole_split():
    first, second = multiproc.run("tests.test_topology:uneven_eval", 2,
                                  kwargs={"lengths": [3, 1]})
    assert first["seen"] == [6.0, 12.0, 18.0]
    assert second["seen"] == [6.0, 0.0, 0.0]  # zero batches after its own ran out
    text = first["describe"]
    assert "topology: 2 processes × 1 local devices = 2 devices (cpu" in text
    assert ("mesh: data=2 × fsdp=1 × tensor=1 (preset dp); across hosts: data; "
            "within a host: none") in text
    assert "batch: 8 rows per step = 2 host slices × 4 rows, in 2 micro-batches" in text
