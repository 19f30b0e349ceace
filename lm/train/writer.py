"""What a run records: config.json (and its changes), metrics.jsonl, TensorBoard event
files and a console progress bar."""

import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any

import tqdm

from lm import config as config_lib
from lm.errors import UserError
from lm.nn.config import ModelConfig


def _import_tensorboardx():
    """tensorboardX, without the `import torch` its writer does when torch is installed (only
    to accept torch tensors; we log floats): importing torch would lengthen every run's
    start-up."""
    if "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


tensorboardX = _import_tensorboardx()
from tensorboardX.proto.event_pb2 import Event  # noqa: E402  (after the import above)
from tensorboardX.proto.summary_pb2 import Summary  # noqa: E402
from tensorboardX.record_writer import RecordWriter  # noqa: E402


class MetricsWriter:
    """Writes `{step, train/..., eval/...}` records; only the lead process (index 0) writes.

    A resumed run first drops the records past `initial_step` (steps trained after the last
    checkpoint by a run that was killed; a fresh start drops them all) and a torn last line,
    then rebuilds the TensorBoard events from what metrics.jsonl keeps (a kill -9 loses the
    events still queued for the event file), so metrics.jsonl and TensorBoard always hold
    exactly what an uninterrupted run writes. The progress bar is
    drawn only on a terminal; `quiet` (or a log file) gives one plain line per record.
    """

    def __init__(self, workdir: str | pathlib.Path, *, total_steps: int, initial_step: int = 0,
                 resumed: bool = False,
                 quiet: bool = False, enabled: bool = True):
        self.enabled, self.quiet = enabled, quiet
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        truncate_records(workdir / "metrics.jsonl", initial_step if resumed else -1,
                         log=lambda line: print(line, flush=True))
        rebuild_tensorboard(workdir / "tensorboard", read_records(workdir / "metrics.jsonl"))
        self._jsonl = open(workdir / "metrics.jsonl", "a")
        # A deep event queue: at the default 10, logging every step blocks the loop on the
        # writer thread. Events still reach disk every 120 s.
        self._tb = tensorboardX.FileWriter(str(workdir / "tensorboard"), max_queue=1000)
        self._bar = None if quiet or not sys.stderr.isatty() else tqdm.tqdm(
            total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True
        )

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(jsonable(record)) + "\n")  # NaN/Inf as null
        self._jsonl.flush()
        # One event per record, not SummaryWriter.add_scalar's event per value: each event is
        # serialized and queued on its own, host time that a CPU run's step shares.
        self._tb.add_summary(Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                            for k, v in metrics.items()]), int(step))
        self._show(step, record)

    def advance(self, step: int) -> None:
        """Move the progress bar to `step` (called every step; cheap)."""
        if self.enabled and self._bar is not None:
            self._bar.update(step - self._bar.n)

    def _show(self, step: int, record: dict[str, float]) -> None:
        short = {k.split("/", 1)[-1] if k.startswith("train/") else k: v
                 for k, v in record.items() if k in _SHOWN or k.startswith("eval/")}
        text = " ".join(f"{k}={_fmt(v)}" for k, v in short.items())
        if self._bar is None:
            print(f"step {step}: {text}", flush=True)
        elif any(k.startswith("eval/") for k in record):
            self._bar.write(f"step {step}: {text}")
        else:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.close()
        self._jsonl.close()


_SHOWN = ("train/loss", "train/tokens_per_s")


def read_records(path: str | pathlib.Path, *, log=None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (the one reader: sweeps, studies, bench, scripts).

    A torn last line (a kill or a full disk mid-write) is dropped, and said so through `log`;
    a damaged line before the last is an error naming the file and the line.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError
        except ValueError:
            if number == len(lines):
                if log:
                    log(f"{path}: dropped a torn last record (line {number}): {line[:40]!r}")
                break
            raise UserError(f"{path}, line {number} is not a metrics record: {line[:60]!r}. "
                            "Delete that line (or the file) to go on") from None
        records.append(record)
    return records


def rebuild_tensorboard(directory: pathlib.Path, records: list[dict[str, Any]]) -> None:
    """Replaces the event files in `directory` with one holding an event per record, in
    order (null as NaN): what the writer wrote for them, whatever a kill left on disk. Its
    name sorts before the files a writer opens after it."""
    for old in directory.glob("events.out.tfevents.*"):
        old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    out = RecordWriter(str(directory / "events.out.tfevents.0000000000.records"))
    out.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    for record in records:
        values = [Summary.Value(tag=k, simple_value=math.nan if v is None else float(v))
                  for k, v in record.items() if k != "step"]
        out.write(Event(wall_time=now, step=int(record["step"]),
                        summary=Summary(value=values)).SerializeToString())
    out.flush()
    out.close()


def truncate_records(path: pathlib.Path, last_step: int, *, log=None) -> None:
    """Drops the records of metrics.jsonl whose step is past `last_step`, and a torn last
    line (atomically)."""
    if not path.exists():
        return
    records = read_records(path, log=log)
    keep = [r for r in records if r["step"] <= last_step]
    if len(keep) != len(path.read_text(errors="replace").splitlines()):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(path)


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"


def is_finite(x: Any) -> bool:
    """Whether `x` is a finite number (a python, numpy or jax scalar); False for None,
    strings and arrays of more than one value."""
    if isinstance(x, (str, bytes)):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def jsonable(x: Any) -> Any:
    """`x` as JSON holds it (the one converter: records, configs, sweep files): containers
    walked, ConfigDicts as dicts, numpy/jax values as numbers or lists, NaN and Inf as null
    (JSON has neither, and a strict reader rejects Python's NaN), anything else as its str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, int)):
        return x
    if isinstance(x, dict):  # keys as JSON writes them: 1 -> "1", True -> "true"
        return {k if isinstance(k, str) else json.dumps(k, default=str): jsonable(v)
                for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "to_dict"):  # ConfigDict
        return jsonable(x.to_dict())
    if hasattr(x, "tolist"):  # numpy / jax arrays and scalars
        return jsonable(x.tolist())
    return str(x)


# ---------------------------------------------------------------- the recorded config


def record_config(workdir: pathlib.Path, resolved: dict, step_: int, *, allow_change: bool
                  ) -> None:
    """Writes config.json for a fresh run (lead process only); a resumed run must have the
    recorded config, or, with `allow_change`, the change is appended to config_changes.jsonl
    with its step."""
    path = workdir / "config.json"
    resolved = jsonable(resolved)  # tuples as JSON has them
    if path.exists() and step_ > 0:
        recorded = read_config_json(path)
        defaults = jsonable({**config_lib.to_dict(config_lib.base_config()),
                             "model": dataclasses.asdict(ModelConfig())})
        changes = {k: v for k, v in config_diff(recorded, resolved).items()
                   if not _added_at_default(k, v[1], recorded, defaults)}
        if not changes:
            return
        if not allow_change:
            shown = "\n  ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            raise UserError(
                f"{workdir} holds a run of another config; resuming with this one would change"
                f":\n  {shown}\nUse a fresh --workdir, drop these overrides, or pass "
                "--allow_config_change to continue the run with them from step "
                f"{step_}")
        with open(workdir / "config_changes.jsonl", "a") as f:
            f.write(json.dumps({"step": step_, "changes": changes}) + "\n")
        print(f"config changed at step {step_}: {changes}", flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    tmp.replace(path)


_MISSING = object()


def read_config_json(path: str | pathlib.Path) -> dict[str, Any]:
    """A run's recorded config.json (the one reader); a damaged one (empty, not JSON, not
    UTF-8) is a one-line UserError naming the file and the fix."""
    try:
        config = json.loads(pathlib.Path(path).read_bytes().decode("utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        why = "empty" if not pathlib.Path(path).read_bytes().strip() else f"not JSON: {e}"
        raise UserError(f"{path} is damaged ({why}): delete it and rerun this run's `lm train` "
                        "command, which records its config again, or restore it from a copy"
                        ) from None
    return config


def _lookup(tree: dict, key: str) -> Any:
    """The value at dotted `key`, or _MISSING."""
    for name in key.split("."):
        if not isinstance(tree, dict) or name not in tree:
            return _MISSING
        tree = tree[name]
    return tree


def _added_at_default(key: str, value: Any, recorded: dict, defaults: dict) -> bool:
    """Whether `key` is a field that a later version of lm added (absent from the recorded
    config) and `value` is its default: the run's config did not change."""
    return _lookup(recorded, key) is _MISSING and _lookup(defaults, key) == value


def config_diff(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs."""
    changes = {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes
