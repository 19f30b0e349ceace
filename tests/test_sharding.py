"""Sharding: the same train steps on 1 device and on sharded meshes give the same losses.

The sharded runs are P processes with one CPU device each (tests/multiproc.py): the real
multi-host path, and the only one that does not deadlock on small CPU machines.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lm import distributed, models
from lm.config import default_train_config
from lm.train import objectives, optim, sharding, step
from lm.train.state import TrainState
from tests import multiproc

STEPS, BATCH, LENGTH = 3, 8, 16
# Tiny GPT whose sharded dims (d_model 64, d_ff 256, 4 heads, vocab 128) divide by 2.
MODEL = dict(vocab_size=128, max_len=LENGTH, dropout_rate=0.0, attention_dropout_rate=0.0)


def _global_batch(i: int) -> dict[str, np.ndarray]:
    """Batch i of the run, the same in every process (each then keeps its slice)."""
    # Each row counts up from a random start: learnable, so the losses move.
    start = np.random.default_rng(i).integers(0, MODEL["vocab_size"], (BATCH, 1))
    tokens = (start + np.arange(LENGTH + 1)) % MODEL["vocab_size"]
    weights = np.ones((BATCH, LENGTH), np.float32)
    weights[0, LENGTH // 2:] = 0.0  # some padding, so the token normaliser matters
    return dict(inputs=tokens[:, :-1].astype(np.int32), targets=tokens[:, 1:].astype(np.int32),
                weights=weights)


def _local_rows(batch: dict[str, np.ndarray], mesh) -> dict[str, np.ndarray]:
    index, count = sharding.process_batch_shard(mesh)
    rows = BATCH // count
    return {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}


def train_losses(mesh: dict) -> dict:
    """Runs STEPS train steps of the tiny GPT on `mesh` (the 8-process test's worker).

    (Multi-process checkpoints, saved and restored on other process counts, are
    tests/test_resume_hosts.py's.)
    """
    model_cfg = models.model_config("gpt", "tiny", **MODEL)
    model = models.build(model_cfg)
    train_cfg = default_train_config()
    train_cfg.update(lr=1e-2, steps=STEPS, weight_decay=0.1, schedule="constant")
    tx, schedule = optim.make_optimizer(train_cfg)
    mesh_obj = sharding.make_mesh(mesh)
    rules = sharding.logical_rules(mesh)

    def init_fn():
        tokens = jnp.zeros((1, LENGTH), jnp.int32)
        params = model.init(jax.random.key(0), tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    state, shardings = sharding.init_sharded(init_fn, mesh_obj, rules)
    train_step = jax.jit(
        functools.partial(step.train_step, model=model,
                          objective=objectives.get("causal", model_cfg),
                          tx=tx, schedule=schedule),
        in_shardings=(shardings, sharding.batch_sharding(mesh_obj)),
        out_shardings=(shardings, None), donate_argnums=0)
    losses = []
    with sharding.use_mesh(mesh_obj, rules):
        for i in range(STEPS):
            batch = sharding.host_batch_to_global(_local_rows(_global_batch(i), mesh_obj), mesh_obj)
            state, metrics = train_step(state, batch)
            losses.append(float(metrics["loss"]))
    wi = state.params["decoder"]["layers"]["mlp"]["wi"]["kernel"]
    result = dict(losses=losses, wi_shape=wi.shape, wi_shard=wi.addressable_shards[0].data.shape,
                  mesh_shape=dict(mesh_obj.shape), **_state_bytes(state))
    return result


def _state_bytes(state) -> dict[str, int]:
    """Bytes of params + optimizer state: on this process's one device, and in all."""
    leaves = jax.tree.leaves((state.params, state.opt_state))
    return dict(device_bytes=sum(x.addressable_shards[0].data.nbytes for x in leaves),
                total_bytes=sum(x.nbytes for x in leaves))


def meshes_losses(meshes: list[dict]) -> list[dict]:
    """`train_losses` on each mesh in turn, in one set of processes (they start slowly)."""
    return [train_losses(mesh) for mesh in meshes]


@pytest.fixture(scope="module")
def single_device():
    return train_losses({"data": 1, "fsdp": 1, "tensor": 1})


# mesh.preset layouts on 8 devices (tp width 2: the model has 4 heads). Each mesh costs
# ~15 s more in the 8 processes, so this is the only 8-process test.
MESHES_8 = {
    "dp": ({"preset": "dp"}, (8, 1, 1)),
    "fsdp": ({"preset": "fsdp"}, (1, 8, 1)),
    "tp": ({"preset": "tp", "tensor": 2}, (4, 1, 2)),
    "fsdp_tp": ({"preset": "fsdp_tp", "tensor": 2}, (1, 4, 2)),
}


@pytest.mark.slow
def test_presets_on_8_processes_match_single_device(single_device):
    meshes = [mesh for mesh, _ in MESHES_8.values()]
    per_process = multiproc.run("tests.test_sharding:meshes_losses", 8,
                                kwargs={"meshes": meshes}, timeout=600)
    layers, d_model, d_ff = single_device["wi_shape"]
    wi_shards = {"dp": [layers, d_model, d_ff], "fsdp": [layers, d_model // 8, d_ff],
                 "tp": [layers, d_model, d_ff // 2], "fsdp_tp": [layers, d_model // 4, d_ff // 2]}
    for results in per_process:
        for (name, (_, shape)), r in zip(MESHES_8.items(), results, strict=True):
            assert tuple(r["mesh_shape"].values()) == shape, name
            np.testing.assert_allclose(r["losses"], single_device["losses"], rtol=1e-5,
                                       err_msg=name)
            # mlp wi (layers, embed, mlp): embed split over fsdp, mlp over tensor
            assert r["wi_shard"] == wi_shards[name], name
            assert r["total_bytes"] == single_device["total_bytes"]
        by_name = dict(zip(MESHES_8, results))
        assert by_name["dp"]["device_bytes"] == single_device["total_bytes"]  # replicated
        # FSDP over 8 holds an eighth of every parameter and optimizer moment.
        assert by_name["fsdp"]["device_bytes"] <= single_device["total_bytes"] / 8 * 1.05
    assert single_device["losses"][-1] < single_device["losses"][0]  # the steps did train


def test_logical_rules_place_params_and_activations():
    rules = sharding.logical_rules({"data": 2, "fsdp": 2, "tensor": 2})
    to_mesh = lambda *names: nn.logical_to_mesh_axes(names, rules)
    assert to_mesh("layers", "embed", "mlp") == P(None, "fsdp", "tensor")
    assert to_mesh("vocab", "embed") == P("tensor", "fsdp")
    # an activation's batch takes data and fsdp, so its embed stays whole
    assert to_mesh("batch", "length", "embed") == P(("data", "fsdp"), None, None)
    assert to_mesh("batch", "length", "heads", "head_dim") == P(("data", "fsdp"), None,
                                                                 "tensor", None)


def test_fit_spec_replicates_dims_the_mesh_does_not_divide():
    mesh = type("FakeMesh", (), {"shape": {"data": 2, "fsdp": 2, "tensor": 2}})()
    # a 65-character vocabulary cannot be split in two: that dim is replicated
    assert sharding._fit_spec(P("tensor", "fsdp"), (65, 64), mesh) == P(None, "fsdp")
    assert sharding._fit_spec(P(("data", "fsdp")), (6, 3), mesh) == P(None, None)


@pytest.mark.parametrize("mesh, devices, expected", [
    ({"data": -1, "fsdp": 1, "tensor": 1}, 8, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, 8, (2, 2, 2)),
    ({"data": 1, "tensor": 4}, 4, (1, 1, 4)),
])
def test_mesh_shape_resolves_the_rest(mesh, devices, expected):
    assert sharding.mesh_shape(mesh, devices) == expected


@pytest.mark.parametrize("mesh, message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs a multiple of 3 devices, but there are 8"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, "uses 4 of the 8 devices"),
    ({"data": -1, "fsdp": -1}, "at most one -1"),
    ({"data": 8, "pipeline": 1}, "unknown axes ['pipeline']"),
])
def test_mesh_shape_errors_say_what_is_wrong(mesh, message):
    with pytest.raises(ValueError) as err:
        sharding.mesh_shape(mesh, 8)
    assert message in str(err.value)


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "16"}, "slurm"),  # a task of `srun`
    ({"SLURM_NTASKS": "16"}, None),  # the batch script's own shell: one process
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1,t1v-2,t1v-3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM
    ({"LM_DISTRIBUTED": "auto"}, "auto"),
    ({"LM_DISTRIBUTED": "off", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "16"}, None),
])
def test_cluster_detection(environ, expected):
    assert distributed.cluster_detected(environ) == expected


def test_explicit_start_needs_all_three_values():
    with pytest.raises(ValueError, match=r"missing \['num_processes', 'process_id'\]"):
        distributed.initialize(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"process_id=4 must be in \[0, num_processes=4\)"):
        distributed.initialize("127.0.0.1:1234", num_processes=4, process_id=4)
