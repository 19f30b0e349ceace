"""Multi-host start-up: join this process to the others with `jax.distributed`.

Call `initialize()` once, before anything touches a JAX device. Three cases:

- explicit: a coordinator address, process count and process id, given as arguments or in
  the environment (`LM_COORDINATOR_ADDRESS`, `LM_NUM_PROCESSES`, `LM_PROCESS_ID`), e.g. several
  CPU processes on 127.0.0.1 (how tests exercise the multi-host path) or a hand-rolled
  launcher;
- auto-detected: a SLURM job step with several tasks (`srun`), a TPU pod whose environment
  lists several workers, or `LM_DISTRIBUTED=auto` (what scripts/launch_tpu_pod.sh sets: a
  Cloud TPU VM's topology comes from its metadata server, not the environment); JAX reads
  the topology itself;
- otherwise (or with `LM_DISTRIBUTED=off`) a single process: nothing to do.
"""

import json
import os
import socket
import sys
import time
from collections.abc import Mapping

import jax

from lm.errors import UserError

ENV_COORDINATOR = "LM_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "LM_NUM_PROCESSES"
ENV_PROCESS_ID = "LM_PROCESS_ID"
ENV_MODE = "LM_DISTRIBUTED"  # 'auto': always let JAX detect the cluster; 'off': never
ENV_TIMEOUT = "LM_INIT_TIMEOUT"  # seconds every process has to join (JAX's default: 300)
DEFAULT_TIMEOUT = 300


class SetupError(UserError):
    """A multi-process start that cannot work; the message names the setting to fix."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${name}={value!r} must be an integer") from None


def cluster_detected(environ: Mapping[str, str] | None = None) -> str | None:
    """Names the multi-host cluster JAX can auto-detect from `environ`, or None."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV_MODE, "").lower()
    if mode in ("auto", "off"):
        return "auto" if mode == "auto" else None
    # Inside an `srun` step only: a batch script's own shell has SLURM_NTASKS too, but it is
    # one process, and initialising would wait forever for the others.
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
        return "slurm"
    # A TPU VM pod lists every worker host; a single-host TPU VM lists one (or nothing).
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    if "MEGASCALE_COORDINATOR_ADDRESS" in env:  # multi-slice TPU
        return "tpu"
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout: int | None = None,
) -> bool:
    """Joins the JAX processes of this job; returns True when running multi-process.

    Explicit values (arguments, else `$LM_*` variables) win over auto-detection. All three
    must be given together; `rendezvous` then checks them first, so a duplicate process id,
    a wrong process count or a coordinator that never answers ends within `timeout` seconds
    ($LM_INIT_TIMEOUT, default 300) with a SetupError naming the setting, where JAX would
    abort in C++ or wait. CPU collectives use gloo, which is what lets several CPU processes
    run sharded steps (the default CPU backend has no cross-process collectives).
    """
    if timeout is None:
        timeout = _env_int(ENV_TIMEOUT) or DEFAULT_TIMEOUT
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    explicit = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) != 3:
        missing = sorted(set(explicit) - set(given))
        raise UserError(
            f"multi-process start needs coordinator_address, num_processes and process_id "
            f"together; got {given}, missing {missing} (flags or ${ENV_COORDINATOR}, "
            f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID})"
        )
    if given and not 0 <= process_id < num_processes:
        raise UserError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if given:
        if num_processes == 1:
            return False
        rendezvous(coordinator_address, num_processes, process_id, timeout=timeout)
        jax.distributed.initialize(**explicit, initialization_timeout=timeout)
        return True
    cluster = cluster_detected()
    if cluster:
        # JAX reads the TPU / SLURM topology itself (and its launcher assigns the ids); if
        # it gives up, it aborts in C++, so say first what it is waiting for.
        print(f"lm.distributed: joining the {cluster} cluster's processes (JAX detects them;"
              f" {ENV_TIMEOUT}={timeout} s, {ENV_MODE}=off for one process)", file=sys.stderr,
              flush=True)
        jax.distributed.initialize(initialization_timeout=timeout)
        return True
    return False


# ------------------------------------------------------------------ start-up rendezvous
# Before JAX joins the processes, process 0 listens on the coordinator's port and every
# other process says hello ({"id", "n", "who"}) there; process 0 answers everyone at once,
# {"ok": true} or {"error": "..."}, when all n ids have come exactly once, on a
# conflict, or at the deadline. Then the port is free again for JAX's coordinator, which
# the others retry until it is up.


def rendezvous(address: str, num_processes: int, process_id: int, *, timeout: float) -> None:
    """Raises SetupError, naming the setting, unless processes 0..n-1 each start once with
    the same process count and reach process 0 at `address` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    port = int(address.rsplit(":", 1)[1])
    hello = {"id": process_id, "n": num_processes, "who": f"{socket.gethostname()}:{os.getpid()}"}
    server = _listen(port) if process_id == 0 else None
    if server is not None:
        with server:
            _serve(server, hello, deadline, address, timeout)
        return
    _ask(address, hello, deadline, timeout, port_taken=process_id == 0)


def _listen(port: int) -> socket.socket | None:
    """A listening socket on `port`, or None when something already listens there."""
    try:
        if socket.has_dualstack_ipv6():
            return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        return socket.create_server(("", port))
    except OSError:
        return None


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        conn.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _serve(server: socket.socket, own: dict, deadline: float, address: str,
           timeout: float) -> None:
    n, joined, conns, error = own["n"], {0: own}, [], None
    while len(joined) < n and error is None:
        server.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            conn, _ = server.accept()
            hello = json.loads(_read_line(conn, min(deadline, time.monotonic() + 10)))
        except TimeoutError:
            if time.monotonic() >= deadline:
                missing = sorted(set(range(n)) - set(joined))
                error = (f"processes {missing} of {n} did not reach process 0 at {address} "
                         f"within {timeout:g} s ({ENV_TIMEOUT}): start all {n} processes "
                         f"({ENV_NUM_PROCESSES}={n}), each with its own {ENV_PROCESS_ID} in "
                         f"[0, {n}); these came: {sorted(joined)}")
            continue
        except (OSError, ValueError):
            continue  # a stray connection, not one of ours
        conns.append(conn)
        if hello.get("n") != n:
            error = (f"process {hello.get('id')} ({hello.get('who')}) was started with "
                     f"{ENV_NUM_PROCESSES}={hello.get('n')}, process 0 with {n}: give every "
                     "process the same count")
        elif hello.get("id") in joined:
            first = joined[hello["id"]]["who"]
            error = (f"two processes have {ENV_PROCESS_ID}={hello['id']} ({first} and "
                     f"{hello.get('who')}): give each process its own id in [0, {n})")
        else:
            joined[hello.get("id")] = hello
    answer = (json.dumps({"error": error} if error else {"ok": True}) + "\n").encode()
    for conn in conns:
        with conn:
            try:
                conn.sendall(answer)
                conn.settimeout(5)
                conn.recv(1)  # let the other side close first: the port is JAX's next
            except OSError:
                pass
    if error:
        raise SetupError(error)


def _ask(address: str, hello: dict, deadline: float, timeout: float, port_taken: bool) -> None:
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    while True:
        try:
            conn = socket.create_connection((host, int(port)), timeout=2)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise SetupError(
                    f"no process 0 answered at {address} ({ENV_COORDINATOR}) within {timeout:g}"
                    f" s ({ENV_TIMEOUT}): start process 0 ({ENV_PROCESS_ID}=0) with that address,"
                    " and check that this host reaches it") from None
            time.sleep(0.2)
    with conn:
        try:
            conn.sendall((json.dumps(hello) + "\n").encode())
            # Process 0 answers at its own deadline at the latest, which may be later.
            reply = _read_line(conn, deadline + 30)
        except OSError:
            reply = b""
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = {"error": (
            f"port {port} is taken by another program, so process 0 cannot listen there: "
            f"choose another port in {ENV_COORDINATOR}" if port_taken else
            f"what answers at {address} ({ENV_COORDINATOR}) is not process 0 of this job: "
            "another job uses that port, or this process started after the others had "
            "already begun (a duplicate process id?)")}
    if "error" in answer:
        raise SetupError(answer["error"])
