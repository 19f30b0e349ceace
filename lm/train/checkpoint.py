"""Checkpoints: orbax `CheckpointManager` holding the train state, data-iterator state, config.

    ckpt = Checkpointer(workdir, every=1000, keep=3, best_metric="eval/loss", config=cfg)
    if ckpt.latest_step() is not None:
        state, data_state, extra = ckpt.restore(state)   # arrays or ShapeDtypeStructs
    ...
    ckpt.save(step, state, iterator.get_state(), metrics=eval_metrics)  # async, every N
    ckpt.close()                                                        # waits for writes

Saves are atomic: orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when every
process has finished, so a `kill -9` at any moment leaves the last completed checkpoint
loadable (half-written tmp directories are ignored and cleaned up on the next start).
A checkpoint damaged later (a truncated file, a disk error) is moved to
`checkpoints_damaged/` and the previous intact one is restored. The eval metrics of each
save are written with it, so the best checkpoint survives restarts.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers

from lm.errors import MissingFileError, UserError
from lm.train import workdir as workdir_lib
from lm.train.writer import is_finite, jsonable
from lm.units import format_bytes


class ProcessJsonHandler(ocp.CheckpointHandler):
    """Each process saves its own JSON (its data-iterator position: hosts read different rows);
    a restore reads every process's file and merges them (`merge_process_states`), so a
    checkpoint resumes on another number of processes."""

    @staticmethod
    def _path(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "ProcessJsonSave") -> None:
        self._path(directory).write_text(json.dumps(args.item))

    def restore(self, directory: epath.Path, args: "ProcessJsonRestore | None" = None) -> Any:
        files = sorted(directory.glob("process_*-of-*.json"))
        states = {p.name: _read_json(p) for p in files}
        own = self._path(directory).name
        try:
            return merge_process_states(list(states.values()))
        except ValueError as e:
            if own in states:  # per-process states of a run with this process count
                return states[own]
            raise UserError(
                f"{directory} holds data states of another number of processes "
                f"({sorted(states)}) that cannot be merged ({e}); resume with the process "
                "count it was saved with") from None


def merge_process_states(states: list[Any]) -> Any:
    """One data-iterator state from every process's: the same state on every process (a
    global position), or sharded states `{"num_shards": S, "shards": {id: state}}` of which
    each process holds some (lm/data/shards.py), merged into one with every shard's.
    ValueError if they are neither (positions that only make sense on their own process)."""
    if not states:
        raise ValueError("no process saved a data state")
    if all(s == states[0] for s in states):
        return states[0]
    sharded = all(isinstance(s, dict) and set(s) == {"num_shards", "shards"} for s in states)
    if not sharded or len({s["num_shards"] for s in states}) > 1:
        raise ValueError("the processes' data states differ and are not shards of one state")
    merged: dict[str, Any] = {}
    for state in states:
        for shard, shard_state in state["shards"].items():
            # Processes that share a shard read it in lockstep: their states agree.
            if merged.setdefault(shard, shard_state) != shard_state:
                raise ValueError(f"two processes saved different states of data shard {shard}")
    return {"num_shards": states[0]["num_shards"], "shards": merged}


def _read_json(path: epath.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
    pass


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax warns through absl about what lm does on purpose (a read-only manager; a save
    between evaluations, without metrics): keep those out of the user's log."""
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def _key_name(key: Any) -> str:
    """One pytree path entry as orbax names it (dict key, attribute or index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _shapes_by_name(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(_key_name(k) for k in path): tuple(x.shape) for path, x in flat}


def shape_mismatches(stored: dict[str, tuple], expected: dict[str, tuple]) -> list[str]:
    """Lines naming each parameter path whose shape differs, or that only one side has.

    Parameters are reported in preference to optimizer state (whose mismatches echo them).
    """
    lines = [f"{n}: checkpoint {stored[n]} vs model {expected[n]}"
             for n in sorted(stored.keys() & expected.keys()) if stored[n] != expected[n]]
    lines += [f"{n}: only in the checkpoint {stored[n]}" for n in sorted(stored.keys() - expected)]
    lines += [f"{n}: only in the model {expected[n]}" for n in sorted(expected.keys() - stored)]
    params = [line for line in lines if line.startswith("params.")]
    return params or lines


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (keeping shardings) for a tree of arrays or abstract arrays."""
    def to_abstract(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(to_abstract, state)


class Checkpointer:
    """Async, atomic checkpoints every `every` steps (0: only forced saves); keeps the last
    `keep` and the best.

    The best is by `best_metric` of the metrics passed to `save` ('min' or 'max'); it is
    kept even when older than the last `keep`, and it is the one place that decides which
    checkpoint is best (`best_step`): the metrics are saved with each checkpoint.
    """

    def __init__(self, workdir: str, *, every: int = 1, keep: int = 1,
                 best_metric: str | None = None, best_mode: str = "min",
                 config: Mapping[str, Any] | None = None, read_only: bool = False):
        if every < 0 or keep < 1:
            raise UserError(f"train.checkpoint_every={every} must be >= 0 (0 = only at the end) "
                            f"and train.keep_checkpoints={keep} >= 1")
        if best_mode not in ("min", "max"):
            raise UserError(f"train.best_mode={best_mode!r} must be 'min' or 'max'")
        if "://" not in workdir:  # orbax refuses relative paths (`--workdir runs/x`)
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / "checkpoints"
        self.every, self.best_metric = every, best_metric
        self.config = jsonable(dict(config or {}))
        metric_fn = (lambda m: m[best_metric]) if best_metric else None
        policies = [checkpoint_managers.LatestN(keep)]
        if best_metric:
            # BestN keeps the last n after sorting ascending: descending sort keeps the minimum.
            policies.append(checkpoint_managers.BestN(
                get_metric_fn=metric_fn, reverse=best_mode == "min", n=1,
                keep_checkpoints_without_metrics=False))
        self._set_aside_unreadable_metrics(read_only)
        with _quiet_orbax():
            options = ocp.CheckpointManagerOptions(
                preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
                # best_fn makes orbax write each save's metrics next to it (and read them back
                # after a restart): without it the best checkpoint is forgotten on resume.
                best_fn=metric_fn, best_mode=best_mode,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=not read_only,  # leftovers of a save that was killed
                read_only=read_only, create=not read_only,
            )
            handlers = dict(state=ocp.StandardCheckpointHandler(), data=ProcessJsonHandler(),
                            config=ocp.JsonCheckpointHandler(),  # known up front: item_metadata
                            checksums=ocp.JsonCheckpointHandler())
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The step of the newest completed checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The step with the best saved metric (the latest when none was scored), or None."""
        return self._manager.best_step()

    def metrics(self, step: int) -> dict[str, float]:
        """The eval metrics saved with `step` ({} when it was saved without any)."""
        return dict(self._manager.metrics(step) or {})

    def save(self, step: int, state: Any, data_state: Any, metrics: Mapping[str, float] | None
             = None, force: bool = False) -> bool:
        """Starts an async save when `step` is a multiple of `every` (or `force`); True if so.

        Returns after the device→host copy, so the caller may donate `state` right away.
        A state holding NaN/Inf is never saved (NonFiniteState, a FloatingPointError); each
        array's checksum is saved with it, and verified by `restore`.
        A save that cannot complete (no space, no permission) raises UserError saying where.
        """
        if not force and (not self.every or step % self.every):
            return False
        if step in self._manager.all_steps():
            return False  # e.g. the final save at a step that the periodic save already wrote
        if metrics is not None and self.best_metric:
            value = metrics.get(self.best_metric)
            metrics = {self.best_metric: float(value)} if is_finite(value) else None
        else:
            metrics = None
        sums, finite = checksums(state)  # of the arrays as saved: verified on restore
        if not finite:
            raise NonFiniteState(f"the parameters or optimizer state of step {step} hold "
                                 "NaN/Inf: not saved")
        self._check_space(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ProcessJsonSave(data_state),
            config=ocp.args.JsonSave(self.config),
            checksums=ocp.args.JsonSave({"arrays": sums}),
        )
        try:
            with _quiet_orbax():
                return self._manager.save(step, args=args, metrics=metrics, force=True)
        except OSError as e:  # a previous async save that failed surfaces here
            raise self._save_error(step, e) from e

    def _check_space(self, state: Any) -> None:
        """Refuses to start a save that the disk cannot hold (it would fail half-written)."""
        needed = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
        needed = needed // max(jax.process_count(), 1) + (1 << 20)  # each host writes its share
        path = str(self.directory)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        free = shutil.disk_usage(path).free
        if free < needed:
            # The save in flight finishes first: it holds a good state, the message names it as
            # the last complete step, and orbax's threads must not die at interpreter exit.
            with contextlib.suppress(UserError):
                self.wait()
            raise UserError(
                f"not enough disk space to save a checkpoint in {self.directory}: it needs "
                f"about {format_bytes(needed)}, {format_bytes(free)} is free. Free space (or "
                "move the workdir), then rerun the same command: "
                f"{workdir_lib.resume_note(self.directory.parent)}")

    def _save_error(self, step: int, error: Exception) -> UserError:
        # The true last complete step: orbax counts a save that is still in flight (or failed).
        return UserError(f"saving the checkpoint of step {step} in {self.directory} failed: "
                         f"{error}; {workdir_lib.resume_note(self.directory.parent)}. Fix the "
                         "cause (free space, make it writable), then rerun the same command")

    def restore(self, abstract_state: Any = None, step: int | None = None, *, data: bool = True,
                params_only: bool = False) -> tuple[Any, Any, dict]:
        """(state, data_state, extra) of `step` (default: latest), laid out as `abstract_state`.

        `abstract_state` holds arrays or ShapeDtypeStructs whose shardings the restored arrays
        take; None = the saved shapes, replicated (e.g. to read a pretraining run's params).
        `data=False` skips the data-iterator state (None); the state of a run on another
        number of processes is merged from every process's (`merge_process_states`).
        `extra` holds the saved `config` and the `step`. A checkpoint of another model shape
        raises UserError naming the parameters that differ. `params_only` (with no
        `abstract_state`) reads only `state["params"]`: a reader of a run never touches its
        optimizer state. Restored arrays are checked against the checksums saved with them
        (DamagedCheckpoint if they differ; checkpoints saved before lm kept checksums have
        none to check).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingFileError(f"no checkpoint in {self.directory}")
        step_dir = self.directory / str(step)
        check_files(step_dir)
        if abstract_state is None:
            abstract_state = self.saved_abstract_state(step)
            if params_only:
                abstract_state = {"params": abstract_state["params"]}
        else:
            self._check_shapes(step, abstract_state)
        abstract_state = abstract_like(abstract_state)
        items = dict(config=ocp.args.JsonRestore())
        if not params_only:
            items["state"] = ocp.args.StandardRestore(abstract_state)
        if data:
            items["data"] = ProcessJsonRestore()
        has_checksums = (step_dir / "checksums").exists()
        if has_checksums:
            items["checksums"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = _restore_part(step_dir / "state", abstract_state) if params_only else (
            restored.state)
        if has_checksums:
            verify_checksums(state, restored.checksums["arrays"])
        data_state = restored.data if data else None
        return state, data_state, {"config": restored.config, "step": step}

    def restore_latest_intact(self, abstract_state: Any, log=print) -> tuple[Any, Any, dict]:
        """`restore` of the newest checkpoint that reads back whole.

        A damaged one (unreadable file, truncated array) is moved to `checkpoints_damaged/`
        (never deleted) with a message saying which and why, and the previous one is tried.
        A checkpoint of another model shape is not damage: that error is raised at once.
        """
        for step in reversed(self.all_steps()):
            try:
                return self.restore(abstract_state, step)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001  (any read failure means damage)
                moved = self.set_aside(step)
                why = short_error(e, 300)
                why = why if isinstance(e, DamagedCheckpoint) else f"{type(e).__name__}: {why}"
                log(f"checkpoint step {step} is damaged ({why}); moved it to "
                    f"{moved} and trying the previous one")
        raise MissingFileError(
            f"no intact checkpoint left in {self.directory} (the damaged ones are in "
            f"{self.directory.parent / 'checkpoints_damaged'}): rerun with --restart to start "
            "this run over")

    def set_aside(self, step: int) -> epath.Path:
        """Moves checkpoint `step` to `checkpoints_damaged/` (never deleted); its new path."""
        target = self._move_aside(step)
        self._manager.reload()
        return target

    def _move_aside(self, step: int) -> epath.Path:
        target = self.directory.parent / "checkpoints_damaged" / f"{step}-{int(time.time())}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        return target

    def _set_aside_unreadable_metrics(self, read_only: bool) -> None:
        """A step whose saved metrics do not parse is damaged like any other: set aside (a
        reader, which moves nothing, is told which)."""
        for step, why in sorted(unreadable_metrics(self.directory).items()):
            if read_only:
                raise UserError(f"checkpoint step {step} in {self.directory} is damaged ({why})"
                                ": a rerun of `lm train` sets it aside, or move it away")
            moved = self._move_aside(step)
            if jax.process_index() == 0:
                print(f"checkpoint step {step} is damaged ({why}); moved it to {moved}",
                      flush=True)

    def saved_abstract_state(self, step: int) -> Any:
        """The saved state's tree of ShapeDtypeStructs (dicts and lists), replicated."""
        replicated = NamedSharding(Mesh(jax.devices(), ("all",)), PartitionSpec())
        tree = self._manager.item_metadata(step)["state"].tree
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                            tree, is_leaf=lambda m: hasattr(m, "shape"))

    def _check_shapes(self, step: int, abstract_state: Any) -> None:
        tree = self._manager.item_metadata(step)["state"].tree
        leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape"))
        stored = {leaf.name: tuple(leaf.shape) for leaf in leaves if hasattr(leaf, "shape")}
        problems = shape_mismatches(stored, _shapes_by_name(abstract_state))
        if problems:
            shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
            raise UserError(
                f"the checkpoint {self.directory / str(step)} holds a model of another shape "
                f"({len(problems)} mismatched parameters: {shown}): use a fresh --workdir, or "
                "the model config the checkpoint was saved with")

    def wait(self) -> None:
        """Blocks until every started save is on disk (raises UserError if one failed)."""
        try:
            self._manager.wait_until_finished()
        except OSError as e:
            raise self._save_error(self.latest_step() or 0, e) from e

    def close(self) -> None:
        self.wait()
        self._manager.close()


# ------------------------------------------------ damage found before orbax reads a step


class DamagedCheckpoint(Exception):
    """A step whose files do not read back as they were saved (a missing file, a checksum
    that differs): set aside like any other damaged step."""


class NonFiniteState(FloatingPointError):
    """A state holding NaN/Inf, which is never saved."""


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (one per element; two per 8-byte element)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """[sum of the words, sum of the words weighted by their position] mod 2**32: integer
    sums, so the same on any sharding; the weights catch moved bytes too. No reshape: a
    sharded array is never gathered."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride)
        stride = (stride * w.shape[axis]) % (1 << 32)
    weights = index * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * weights, dtype=jnp.uint32)])


@jax.jit
def _checksums_and_finite(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """([leaves, 2] checksums, whether every floating-point value is finite): one pass."""
    sums = jnp.stack([_leaf_checksum(x) for x in leaves]) if leaves else jnp.zeros((0, 2))
    finite = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    return sums, jnp.all(jnp.stack(finite)) if finite else jnp.bool_(True)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated result on this host (every process holds a copy)."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def checksums(tree: Any) -> tuple[dict[str, list[int]], bool]:
    """({leaf name: checksum} of a state's arrays, whether all their values are finite),
    computed on the devices."""
    flat = [(".".join(_key_name(k) for k in path), x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "dtype")]
    sums, finite = _checksums_and_finite([jnp.asarray(x) for _, x in flat])
    sums = _host(sums)
    return {name: [int(a), int(b)] for (name, _), (a, b) in zip(flat, sums)}, bool(_host(finite))


def verify_checksums(tree: Any, saved: dict[str, list[int]]) -> None:
    """Raises DamagedCheckpoint when a restored array differs from the one that was saved."""
    computed, _ = checksums(tree)
    bad = sorted(name for name, value in computed.items() if saved.get(name) != value)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DamagedCheckpoint(f"{len(bad)} arrays differ from the checksums saved with "
                                f"them ({shown})")


def _restore_part(directory: epath.Path, abstract_part: Any) -> Any:
    """The subtree `abstract_part` of the state saved in `directory`, nothing else read."""
    with _quiet_orbax(), ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
        return reader.restore(directory, args=ocp.args.PyTreeRestore(
            item=abstract_part, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_part)))


def check_files(step_dir: epath.Path) -> None:
    """Raises DamagedCheckpoint for a step missing a file that orbax needs to read its arrays
    (orbax would fail on it inside its event loop, with pages of tracebacks)."""
    state = step_dir / "state"
    needed = [state / "_METADATA"]
    if any(state.glob("ocdbt.process_*")):
        needed.append(state / "manifest.ocdbt")
    for path in needed:
        if not path.exists() or not path.stat().length:
            raise DamagedCheckpoint(f"{path} is {'empty' if path.exists() else 'missing'}")


def unreadable_metrics(directory: epath.Path) -> dict[int, str]:
    """{step: why} of the steps whose saved eval metrics are not a JSON object (orbax reads
    every step's on opening the directory, and would fail on one of them)."""
    damaged = {}
    steps = [p for p in directory.iterdir() if p.name.isdigit()] if directory.exists() else []
    for step_dir in steps:
        path = step_dir / "metrics" / "metrics"
        if not path.exists():
            continue
        try:
            if not isinstance(json.loads(path.read_bytes().decode("utf-8")), dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            damaged[int(step_dir.name)] = f"{path} is not JSON ({short_error(e)})"
    return damaged


def short_error(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, without tensorstore's spec dumps or reprs of
    bound methods: what went wrong and where, not orbax's internals."""
    text = " ".join(str(error).split())
    text = re.split(r" \[tensorstore_spec=| \[source locations=", text)[0]
    text = re.sub(r"<bound method [^>]*>", "", text).strip(" ;:,")
    return (text[:limit] + "...") if len(text) > limit else (text or type(error).__name__)
