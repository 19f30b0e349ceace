"""Run a function in P JAX processes on 127.0.0.1, one CPU device each, joined by gloo.

This is how tests exercise sharded meshes and the multi-host code path: several devices in
ONE process deadlock in collectives on small CPU machines (../shared/NOTES.md), P processes
with one device each do not.

    results = multiproc.run("tests.test_sharding:worker", 8, kwargs={"mesh": ...})

Each process calls `lm.distributed.initialize()` (explicit coordinator from the environment),
then `module.function(**kwargs)`, and writes its JSON-able return value; `run` returns the
list of them in process order. A process that fails fails the run with its stderr; a run
that outlives `timeout` has every process SIGKILLed by pid (a hung JAX process catches
SIGTERM itself, so SIGTERM would not end it).
"""

import importlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free a moment ago (the coordinator binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(port: int, num_processes: int, process_id: int) -> dict[str, str]:
    env = dict(os.environ)
    # One CPU device per process: drop any forced device count inherited from the caller.
    # LLVM optimisation level 0 compiles ~2x faster; the tests' tiny steps do not notice
    # slower code, and SPMD partitioning (what they check) happens before LLVM.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append("--xla_backend_optimization_level=0")
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join(flags),
        LM_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        LM_NUM_PROCESSES=str(num_processes),
        LM_PROCESS_ID=str(process_id),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def _tail(path: pathlib.Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
    for proc in procs:
        proc.wait()


def _spawn(target: str, envs: list[dict[str, str]], kwargs: dict | None, out: pathlib.Path
           ) -> list[subprocess.Popen]:
    procs = []
    for pid, env in enumerate(envs):
        cmd = [sys.executable, "-m", "tests.multiproc", target, json.dumps(kwargs or {}),
               str(out / f"result_{pid}.json")]
        with open(out / f"log_{pid}.txt", "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> bool:
    """Waits for every process; False (all SIGKILLed) if the run outlives `timeout`."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        return True
    except subprocess.TimeoutExpired:
        return False
    finally:
        _kill_all(procs)


def run(
    target: str, num_processes: int, *, kwargs: dict | None = None, timeout: float = 180.0
) -> list[Any]:
    """Runs `target` ("module:function") in `num_processes` processes; returns their results."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="multiproc_") as tmp:
        out = pathlib.Path(tmp)
        envs = [_worker_env(port, num_processes, pid) for pid in range(num_processes)]
        procs = _spawn(target, envs, kwargs, out)
        if not _wait(procs, timeout):
            logs = "\n".join(f"--- process {i} ---\n{_tail(out / f'log_{i}.txt')}"
                             for i in range(num_processes))
            raise TimeoutError(f"{target} on {num_processes} processes ran past {timeout}s\n{logs}")
        failed = [i for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            logs = "\n".join(f"--- process {i} (exit {procs[i].returncode}) ---\n"
                             f"{_tail(out / f'log_{i}.txt')}" for i in failed)
            raise RuntimeError(f"{target}: processes {failed} failed\n{logs}")
        return [json.loads((out / f"result_{i}.json").read_text()) for i in range(num_processes)]


def run_logs(target: str, env_overrides: list[dict[str, str]], *, num_processes: int,
             kwargs: dict | None = None, timeout: float = 60.0) -> list[tuple[int | None, str]]:
    """(exit code or None if killed at `timeout`, output) of each process, whatever happens:
    for starts that must fail. Process i runs with `env_overrides[i]` over its usual
    environment for a job of `num_processes` (e.g. a duplicate LM_PROCESS_ID)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="multiproc_") as tmp:
        out = pathlib.Path(tmp)
        envs = [{**_worker_env(port, num_processes, pid), **extra}
                for pid, extra in enumerate(env_overrides)]
        procs = _spawn(target, envs, kwargs, out)
        finished = _wait(procs, timeout)
        return [(p.returncode if finished else None, _tail(out / f"log_{i}.txt"))
                for i, p in enumerate(procs)]


def _worker_main(target: str, kwargs_json: str, result_path: str) -> None:
    import lm.distributed

    lm.distributed.initialize()
    module_name, fn_name = target.split(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    result = fn(**json.loads(kwargs_json))
    pathlib.Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    _worker_main(*sys.argv[1:4])
