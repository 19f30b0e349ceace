"""`lm plan`: batch specs match real batches; the planner's per-device parameter and
optimizer bytes match the real sharded arrays (FSDP over 4: a quarter) and XLA's own
argument sizes; a peak that does not fit brings a remat / micro-batching that does.

The planner and the reference each run in a fresh process with 4 CPU devices (compiling and
initialising need no collective, so one process with several devices is fine here).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm.data import make_iterator, make_tokenizer, specs
from lm.train import windows
from lm.units import parse_bytes
from tests.test_data_objectives import small_sentencepiece
from tests.test_data_pipeline import cfg_for

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = "experiments/gpt_shakespeare_char.py:cpu"
# The layer loop kept as a loop (the cpu experiment unrolls it), so remat has a body to apply to.
FSDP_4 = ["--config.mesh.preset=fsdp", "--config.train.batch_size=8",
          "--config.model.scan_unroll=1"]


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory) -> str:
    return small_sentencepiece(tmp_path_factory)


@pytest.mark.parametrize("objective", ["causal", "random_windows", "mlm", "mlm_nsp",
                                       "span_corruption", "classification"])
def test_batch_spec_matches_a_real_batch(sp_path, objective):
    cfg = cfg_for(sp_path, "mlm_nsp" if objective in ("mlm", "random_windows") else objective)
    cfg.objective = objective
    maker = windows.make_iterator if objective == "random_windows" else make_iterator
    batch = next(maker(cfg, make_tokenizer(cfg), split="train", batch_size=2, seed=0))
    real = {k: (np.shape(v), jax.dtypes.canonicalize_dtype(np.asarray(v).dtype))
            for k, v in batch.items()}
    assert specs.batch_spec(cfg, 2) == real


def _python(code_or_args: list[str], devices: int = 4) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = subprocess.run([sys.executable, *code_or_args], cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def real_state_bytes(overrides: list[str]) -> None:
    """Prints the bytes of each device's shards of the real, initialised sharded state."""
    from lm import config as config_lib
    from lm import models
    from lm.data import specs
    from lm.train import objectives, optim, sharding
    from lm.train.state import init_state

    _, flags = config_lib.split_overrides(overrides)
    config = config_lib.load(EXPERIMENT, flags)
    model_cfg = models.ModelConfig(**config.model)
    task = objectives.get(config.data.objective, model_cfg)
    tx, _ = optim.make_optimizer(config.train)
    mesh = sharding.make_mesh(config.mesh)
    one_row = {k: np.zeros((1, *shape[1:]), dtype)
               for k, (shape, dtype) in specs.batch_spec(config.data, 1).items()}
    state, _ = sharding.init_sharded(
        lambda: init_state(task, models.build(model_cfg), tx, jax.random.key(0), one_row),
        mesh, sharding.logical_rules(config.mesh))
    per_device = {str(d.id): 0 for d in mesh.devices.flat}
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        for shard in leaf.addressable_shards:
            per_device[str(shard.device.id)] += shard.data.nbytes
    print(json.dumps(per_device))


@pytest.fixture(scope="module")
def fsdp_4_plan() -> dict:
    return json.loads(_python(["-m", "lm", "plan", "--config", EXPERIMENT, "--devices", "4",
                               "--json", *FSDP_4]))


def test_planner_state_bytes_are_the_real_sharded_arrays_bytes(fsdp_4_plan):
    code = f"from tests.test_plan import real_state_bytes; real_state_bytes({FSDP_4!r})"
    real = json.loads(_python(["-c", code]))
    own, total = fsdp_4_plan["own"], fsdp_4_plan["total_state_bytes"]
    assert fsdp_4_plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    planned = own["params"] + own["opt_state"]
    assert sorted(real.values()) == [planned] * 4  # every device holds the planned bytes
    assert total / 4 <= planned <= total / 4 * 1.01  # a quarter (+ replicated scalars)
    # XLA's own count of what the step takes: the state, the step counter, the batch shard.
    batch = specs.batch_spec(load_data_cfg(), 8)
    batch_bytes = sum(np.prod(shape) * dtype.itemsize for shape, dtype in batch.values()) // 4
    assert own["arguments"] == planned + 4 + batch_bytes


def load_data_cfg():
    from lm import config as config_lib

    return config_lib.load(f"{REPO}/{EXPERIMENT}").data


def test_a_peak_that_does_not_fit_brings_one_that_does(fsdp_4_plan):
    memory = fsdp_4_plan["own"]["peak"] - 1
    text = _python(["-m", "lm", "plan", "--config", EXPERIMENT, "--devices", "4",
                    f"--device_memory={memory}", *FSDP_4])
    assert "fits in" in text and ": NO" in text
    assert "fits with: --config.model.remat_policy=" in text or \
        "fits with: --config.train.grad_accum_steps=" in text, text
    assert "mesh: data=1 × fsdp=4 × tensor=1 (preset fsdp)" in text


def test_device_memory_units():
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("16GiB") == 16 * 2**30
    assert parse_bytes("1.5e9") == 1_500_000_000
    with pytest.raises(ValueError, match="80 GB"):
        parse_bytes("80 GB!")
