"""The device mesh, the logical→mesh rule table, sharded init and global batches.

The mesh has three named axes: `data` (replicas, each with a slice of the batch), `fsdp`
(also a slice of the batch, and params/optimizer state split along `embed`) and `tensor`
(Megatron-style: MLP hidden units, heads and the vocabulary split across devices). Model code
names only logical axes (`batch`, `embed`, `mlp`, `heads`, `vocab`..., never a mesh axis);
`logical_rules` maps them onto this mesh, so pure data parallel (only `data` > 1), FSDP and
tensor parallel differ in the mesh shape alone.

Typical use (the train loop):

    mesh = make_mesh(config.mesh); rules = logical_rules(config.mesh)
    with use_mesh(mesh, rules):
        state, state_shardings = init_sharded(init_fn, mesh, rules)
        batch = host_batch_to_global(numpy_batch, mesh)
        state, metrics = train_step_jitted(state, batch)
"""

import collections
import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lm.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every replica-like axis

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Priority-ordered (flax picks the first rule whose mesh axes are still free in an array):
# so a parameter's `embed` dim goes to fsdp, while an activation whose `batch` already took
# fsdp falls through to the second `embed` rule and stays replicated.
#
# The `(tensor, fsdp)` and `head_dim → fsdp` rows split the parameters that have no `embed`
# dim (biases of the MLP and attention, BERT's mlm_bias) over fsdp as well: a weight that
# has `embed` took fsdp for it already, and an activation's `batch` took it, so those rows
# only ever apply to such parameters. FSDP then holds 1/N of every parameter.
DEFAULT_RULES: Rules = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("embed", None),
    ("mlp", ("tensor", "fsdp")),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", ("tensor", "fsdp")),
    ("vocab", "tensor"),
    ("length", None),
    ("head_dim", "fsdp"),
    ("head_dim", None),
    ("layers", None),
    ("position", None),
    ("type_vocab", None),
    ("classes", None),
    ("rel_buckets", None),
)


# Pure data parallel replicates every parameter: only the batch is split.
DP_RULES: Rules = (("batch", BATCH_AXES),)

# `mesh.preset`: the mesh (data, fsdp, tensor) and rules of a named layout, for N devices in
# hosts of H devices each. Tensor parallelism talks at every layer, so it stays within a
# host (the fastest links) unless `mesh.tensor` > 1 sets its width.
#   dp       (N, 1, 1)      params replicated, batch split: plain data parallel
#   fsdp     (1, N, 1)      params, grads and optimizer state split N ways (ZeRO-3)
#   tp       (N/T, 1, T)    Megatron tensor parallel within a host, data parallel across
#   fsdp_tp  (1, N/T, T)    tensor parallel within a host, FSDP across hosts
PRESETS = ("dp", "fsdp", "tp", "fsdp_tp")


def preset_axes(mesh_cfg: Mapping[str, Any], devices_per_host: int) -> dict[str, int]:
    """The (data, fsdp, tensor) sizes of `mesh_cfg.preset` (-1 = the remaining devices)."""
    preset = mesh_cfg.get("preset")
    if preset not in PRESETS:
        raise ValueError(f"mesh.preset={preset!r}: choose one of {PRESETS} (or '' and set "
                         "mesh.data, mesh.fsdp, mesh.tensor yourself)")
    width = int(mesh_cfg.get("tensor", 1))
    tensor = (width if width > 1 else devices_per_host) if preset.endswith("tp") else 1
    if preset in ("dp", "tp"):
        return {"data": -1, "fsdp": 1, "tensor": tensor}
    return {"data": 1, "fsdp": -1, "tensor": tensor}


def mesh_shape(mesh_cfg: Mapping[str, Any], num_devices: int, devices_per_host: int = 1
               ) -> tuple[int, ...]:
    """Resolves (data, fsdp, tensor) sizes; one of them may be -1 = the remaining devices.

    With `mesh_cfg.preset` set, the preset decides them (`mesh.tensor` > 1 is then the
    tensor width of tp and fsdp_tp).
    """
    unknown = set(mesh_cfg) - set(MESH_AXES) - {"rules", "preset"}
    if unknown:
        raise UserError(f"mesh config has unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
    if mesh_cfg.get("preset"):
        mesh_cfg = preset_axes(mesh_cfg, devices_per_host)
    sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
    named = dict(zip(MESH_AXES, sizes, strict=True))
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh {named}: sizes must be positive, with at most one -1 (the rest)")
    known = math.prod(s for s in sizes if s != -1)
    setting = " ".join(f"mesh.{a}={s}" for a, s in named.items())
    if mesh_cfg.get("preset"):
        setting = f"mesh.preset={mesh_cfg['preset']} ({setting})"
    if num_devices % known:
        raise UserError(
            f"{setting} needs a multiple of {known} devices, but there are {num_devices}: "
            f"choose sizes whose product divides {num_devices}"
        )
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"{setting} uses {math.prod(sizes)} of the {num_devices} devices: make the "
            f"product of data×fsdp×tensor equal {num_devices}, or set one axis to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, Any], devices: Sequence[jax.Device] | None = None,
              devices_per_host: int | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices (or `devices`), -1 = the rest.

    `devices_per_host` (for presets; default: this process's devices) matters when planning
    for hosts other than this one.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices), devices_per_host or jax.local_device_count())
    # create_device_mesh orders devices so that the inner axes (tensor, fsdp) sit on the
    # fastest interconnect (within a host / a TPU torus row).
    device_grid = mesh_utils.create_device_mesh(shape, devices)
    return Mesh(device_grid, MESH_AXES)


def logical_rules(mesh_cfg: Mapping[str, Any] | None = None) -> Rules:
    """Logical axis name → mesh axes; `mesh_cfg.rules` (list of pairs) replaces the default."""
    custom = (mesh_cfg or {}).get("rules")
    if not custom:
        return DP_RULES if (mesh_cfg or {}).get("preset") == "dp" else DEFAULT_RULES
    rules = tuple((str(name), tuple(axes) if isinstance(axes, list) else axes)
                  for name, axes in custom)
    for name, axes in rules:
        used = (axes,) if isinstance(axes, str) else (axes or ())
        if set(used) - set(MESH_AXES):
            raise UserError(f"rule {name!r} → {axes!r} names an axis outside {MESH_AXES}")
    return rules


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes the model's logical constraints active; trace (first call) jitted steps inside.

    On one device there is nothing to constrain, so it does nothing.
    """
    if mesh.devices.size == 1:
        yield
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Replicates the dims that the mesh axes do not divide (e.g. vocab 65 over tensor=2)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else (axes or ())
        fitted.append(axes if dim % math.prod(mesh.shape[a] for a in names) == 0 else None)
    return PartitionSpec(*fitted)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a (possibly `nn.Partitioned`-boxed) tree of abstract arrays.

    The result has the structure of the unboxed tree; leaves without logical names are
    replicated.
    """
    specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), rules)
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
    leaves = jax.tree.map(lambda x: x.value if is_box(x) else x, abstract_tree, is_leaf=is_box)
    is_spec = lambda x: isinstance(x, PartitionSpec)
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
                        specs, leaves, is_leaf=is_spec)


def init_sharded(init_fn: Callable[[], Any], mesh: Mesh, rules: Rules) -> tuple[Any, Any]:
    """Runs `init_fn` with every output born sharded; returns (state, state_shardings).

    `init_fn` takes no arguments (close over the rng) and may return `nn.Partitioned` boxes
    (params from `nn.with_logical_partitioning`, and an optimizer state built from those
    boxed params inherits their names); the state comes back unboxed. Nothing is ever
    materialised whole on one device.
    """
    # No rules while tracing init: flax's DenseGeneral unboxes its kernel while still flat
    # (before the reshape to D×N×H), so a constraint there would meet the wrong rank. The
    # out_shardings place every output anyway.
    with nn.logical_axis_rules(()):
        _, shardings = abstract_sharded(init_fn, mesh, rules)
        state = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
    return state, shardings


def abstract_sharded(init_fn: Callable[[], Any], mesh: Mesh, rules: Rules) -> tuple[Any, Any]:
    """(ShapeDtypeStructs carrying their shardings, the shardings) of what `init_fn` would
    return, unboxed: the state that `init_sharded` builds, without building it."""
    with nn.logical_axis_rules(()):
        boxed = jax.eval_shape(init_fn)
    shardings = tree_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.meta.unbox(boxed), shardings)
    return abstract, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over data×fsdp, replicated over tensor; any rank."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


@functools.cache  # called for every batch; a mesh never changes
def process_batch_shard(mesh: Mesh) -> tuple[int, int]:
    """(index, count): this process loads slice `index` of `count` equal slices of the batch.

    Processes whose devices differ only along `tensor` hold the same rows, so `count` is the
    number of distinct batch slices across processes, not the process count. Give these to
    the data pipeline as (process_index, process_count).
    """
    num_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    index_map = batch_sharding(mesh).addressable_devices_indices_map((num_shards,))
    shard_ids = sorted({idx[0].start or 0 for idx in index_map.values()})
    if shard_ids != list(range(shard_ids[0], shard_ids[0] + len(shard_ids))):
        raise ValueError(f"this process's devices hold non-contiguous batch slices {shard_ids}")
    return shard_ids[0] // len(shard_ids), num_shards // len(shard_ids)


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows (its `process_batch_shard` slice) into global arrays."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:  # the rows are the global batch: one transfer, half the time
        return jax.device_put({k: np.asarray(v) for k, v in batch.items()}, sharding)
    _, count = process_batch_shard(mesh)

    def to_global(x: np.ndarray) -> jax.Array:
        global_shape = (x.shape[0] * count, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return {k: to_global(np.asarray(v)) for k, v in batch.items()}


def until_every_host_is_done(batches: Iterable[dict[str, np.ndarray]]
                             ) -> Iterator[dict[str, np.ndarray]]:
    """`batches`, then all-zero batches (weight 0) shaped like the last until every process
    has run out of its own: a pass over a whole split gives hosts different batch counts,
    and a host that stopped early would leave the others waiting in the next collective.
    One tiny all-gather per batch decides."""
    if jax.process_count() == 1:
        yield from batches
        return
    iterator, last = iter(batches), None
    while True:
        batch = next(iterator, None)
        if not multihost_utils.process_allgather(np.int32(batch is not None)).any():
            return
        if batch is None:
            if last is None:
                raise ValueError("this process's split is empty while others have batches")
            batch = {k: np.zeros_like(v) for k, v in last.items()}
        last = batch
        yield batch


class DevicePrefetch:
    """(host batch, global device batch) pairs, `size` batches ahead of the step that uses
    them, so that each transfer to the devices overlaps the running step.

    `get_state()` is the state of the next batch not yet handed out (what a checkpoint
    needs), not of the source iterator, which is `size` batches further on.
    """

    def __init__(self, iterator, mesh: Mesh, size: int = 2):
        self._iterator, self._mesh, self._size = iterator, mesh, size
        self._queue: collections.deque = collections.deque()

    def __iter__(self):
        return self

    def _fill(self) -> None:
        while len(self._queue) < max(self._size, 1):
            state = self._iterator.get_state()
            try:
                host = next(self._iterator)
            except StopIteration:
                return
            self._queue.append((state, host, host_batch_to_global(host, self._mesh)))

    def __next__(self) -> tuple[Mapping[str, np.ndarray], dict[str, jax.Array]]:
        self._fill()
        if not self._queue:
            raise StopIteration
        _, host, batch = self._queue.popleft()
        self._fill()  # start the next transfers before the caller runs its step
        return host, batch

    def get_state(self):
        return self._queue[0][0] if self._queue else self._iterator.get_state()
