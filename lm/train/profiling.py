"""Per-op profiles of jitted steps: a `jax.profiler` trace and its summary by XLA op.

    with profiling.trace(directory):
        for _ in range(steps):
            state, metrics = train_step(state, batch)
        jax.block_until_ready(state)
    print(profiling.format_table(profiling.op_times(directory, steps=steps)))

The trace (TensorBoard's profile plugin or https://ui.perfetto.dev open it) holds one
complete event per executed XLA op, with the op's name in `args.hlo_op`: on the host's
XLA threads on CPU, on the device's streams on GPU. Ops are summed by that name over the
traced steps, counting each event's own time (a `while` or `call` op minus the ops inside
it), so the times add up to the time the backend spent in ops.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gzip
import json
import pathlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

Event = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class OpTime:
    name: str  # the HLO instruction (fusion.12, dot.3, ...)
    module: str  # the jitted computation it belongs to (jit_train_step, ...)
    ms_per_step: float  # own time, summed over its executions and threads, per step
    calls_per_step: float
    share: float  # of all ops' time in the trace
    source: str = ""  # what the op computes: the JAX op path it came from, when known


@contextlib.contextmanager
def trace(directory: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Record a trace of what runs inside the block into `directory` (also a perfetto json)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(directory), create_perfetto_trace=True):
        yield directory


def load_events(directory: str | pathlib.Path) -> list[Event]:
    """The events of the newest `*.trace.json.gz` under `directory`."""
    files = sorted(pathlib.Path(directory).rglob("*.trace.json.gz"),
                   key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {directory}: was it traced?")
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def op_events(events: list[Event]) -> list[Event]:
    """Complete events of XLA ops: on the devices (GPU, TPU) when the trace has any, else on
    the host (CPU). A device op can also leave host-side events (its launch): never both."""
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    on_device = [e for e in ops if str(names.get(e["pid"], "")).startswith("/device:")]
    return on_device or ops


def self_times(events: list[Event]) -> list[tuple[Event, float]]:
    """(event, its duration minus that of the events nested in it on the same thread)."""
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e["pid"], e.get("tid"))].append(e)
    out = []
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[list] = []  # [event, end time, own time]
        for e in thread:
            start, dur = e["ts"], e.get("dur", 0)
            while stack and stack[-1][1] <= start:
                out.append(tuple(stack.pop()[::2]))
            if stack:
                stack[-1][2] -= dur  # time spent in a nested op is not the parent's own
            stack.append([e, start + dur, dur])
        out.extend(tuple(s[::2]) for s in reversed(stack))
    return out


def hlo_text(jitted: Any, *args: Any) -> str:
    """The optimized HLO that `jitted(*args)` runs (compiled again: call it once, when the
    trace is done)."""
    return jitted.lower(*args).compile().as_text()


def op_sources(hlo_text: str) -> dict[str, str]:
    """HLO op name -> the JAX op path in its metadata (`.../mlp/wi/dot_general`), from a
    compiled module's text (`jax.jit(f).lower(...).compile().as_text()`)."""
    sources = {}
    for m in re.finditer(r'^\s*(?:ROOT )?%(\S+) = .*?op_name="([^"]*)"', hlo_text, re.M):
        path = re.sub(r"^jit\([^)]*\)/", "", m.group(2)).replace("closed_call/", "")
        sources[m.group(1)] = path
    return sources


def op_times(directory: str | pathlib.Path, *, steps: int = 1,
             sources: dict[str, str] | None = None) -> list[OpTime]:
    """Every op's own time per step, largest first, from the trace in `directory`; `sources`
    (op_sources) names what each op computes."""
    total: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for e, own in self_times(op_events(load_events(directory))):
        key = (e["args"]["hlo_op"], e["args"].get("hlo_module", ""))
        total[key] += own
        calls[key] += 1
    grand = sum(total.values()) or 1.0
    return [OpTime(name, module, us / 1e3 / steps, calls[(name, module)] / steps, us / grand,
                   (sources or {}).get(name, ""))
            for (name, module), us in total.most_common()]


def by_source(ops: list[OpTime]) -> list[OpTime]:
    """Ops that compute the same thing (the same source: one per layer when layers are
    unrolled) summed into one row, named by its largest op and the number of ops."""
    groups: dict[tuple[str, str], list[OpTime]] = collections.defaultdict(list)
    for o in ops:
        groups[(o.module, o.source or o.name)].append(o)
    rows = []
    for group in groups.values():
        name = group[0].name + (f" +{len(group) - 1}" if len(group) > 1 else "")
        rows.append(dataclasses.replace(
            group[0], name=name, ms_per_step=sum(o.ms_per_step for o in group),
            calls_per_step=sum(o.calls_per_step for o in group),
            share=sum(o.share for o in group)))
    return sorted(rows, key=lambda o: -o.ms_per_step)


def format_table(ops: list[OpTime], *, top: int = 25, step_ms: float | None = None) -> str:
    """The `top` ops as a text table; `step_ms` (the measured wall time of a step) adds a line
    comparing it with the ops' total (above it on several threads, below it when idle)."""
    total = sum(o.ms_per_step for o in ops)
    lines = [f"{'ms/step':>9} {'share':>6} {'calls':>6}  op (module)  source"]
    for o in ops[:top]:
        source = o.source if len(o.source) <= 80 else "..." + o.source[-77:]
        lines.append(f"{o.ms_per_step:9.3f} {o.share:6.1%} {o.calls_per_step:6.1f}  "
                     f"{o.name} ({o.module})  {source}".rstrip())
    rest = ops[top:]
    if rest:
        lines.append(f"{sum(o.ms_per_step for o in rest):9.3f} "
                     f"{sum(o.share for o in rest):6.1%} {'':6}  {len(rest)} other ops")
    lines.append(f"{total:9.3f} {'100%':>6} {'':6}  all ops" +
                 (f"; wall time per step {step_ms:.3f} ms" if step_ms else ""))
    return "\n".join(lines)


class StepProfiler:
    """Traces the training steps `start <= step < stop` of a loop and prints their top ops.

        profiler = StepProfiler((10, 20), workdir / "profile")
        for s in steps:
            profiler.before_step(s, state)
            state, metrics = train_step(state, batch)
            profiler.after_step(s, state, functools.partial(hlo_text, train_step, state, batch))

    An empty `window` does nothing. Only the lead process traces (one trace per run).
    """

    def __init__(self, window: tuple[int, ...], directory: str | pathlib.Path, *, top: int = 25,
                 enabled: bool = True):
        if window and (len(window) != 2 or not 0 < window[0] < window[1]):
            raise ValueError(f"train.profile_steps={tuple(window)}: expected (start, stop) with "
                             "0 < start < stop, e.g. (10, 20) to trace steps 10 to 19")
        self.window = tuple(window) if enabled else ()
        self.directory, self.top = pathlib.Path(directory), top
        self._start_time, self._tracing = 0.0, False

    def before_step(self, step: int, inputs: Any = None) -> None:
        """At the window's first step: wait for `inputs` (so that no earlier step runs into
        the trace) and start tracing."""
        if self.window and step == self.window[0]:
            jax.block_until_ready(inputs)
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self._start_time, self._tracing = time.perf_counter(), True

    def after_step(self, step: int, outputs: Any, hlo_text: Callable[[], str] | None = None
                   ) -> None:
        """At the window's last step: wait for `outputs`, stop tracing and print the table;
        `hlo_text()`, the traced step's compiled HLO, names what each op computes."""
        if not self._tracing or step != self.window[1] - 1:
            return
        jax.block_until_ready(outputs)
        steps = self.window[1] - self.window[0]
        step_ms = (time.perf_counter() - self._start_time) * 1e3 / steps
        self.close()
        ops = op_times(self.directory, steps=steps, sources=op_sources(hlo_text()) if hlo_text
                       else None)
        print(f"profile of steps {self.window[0]}..{step} in {self.directory}, ops that "
              "compute the same thing summed (op +n: n more like it):\n"
              + format_table(by_source(ops), top=self.top, step_ms=step_ms), flush=True)

    def close(self) -> None:
        """Stop a trace still running (the loop ended inside the window)."""
        if self._tracing:
            jax.profiler.stop_trace()
            self._tracing = False
