"""lm.malloc: a jitted CPU function with large temporaries stops page-faulting on every call."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from lm import malloc
mode, n = sys.argv[1], int(sys.argv[2])
applied = mode == "keep" and malloc.keep_freed_memory()
if applied:  # what `python -m lm` does
    malloc.run_cpu_steps_inline()
import jax, jax.numpy as jnp

@jax.jit
def f(x_NxD, w_DxN):  # temporaries: two (N, N) float32 arrays and more
    a_NxN = jnp.tanh(x_NxD @ w_DxN)
    b_NxN = jnp.sin((x_NxD + a_NxN @ w_DxN.T) @ w_DxN)
    return (a_NxN @ w_DxN.T).sum() + (b_NxN @ w_DxN.T).sum()

x, w = jnp.ones((n, 64), jnp.float32), jnp.ones((64, n), jnp.float32) / 64
faults = []  # per call; each thread's arena warms up once, so take the median
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[6]
print(json.dumps({"applied": applied, "faults_per_call": faults}))
"""


def faults_per_call(mode: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(n)], capture_output=True,
                         text=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# 37 MiB of temporaries, like the Shakespeare GPT's step (36 MiB); then 160 MiB, more than a
# worker thread's glibc arena holds (64 MiB), like MiniLM finetuning's step (184 MB).
@pytest.mark.parametrize("n", [3072, 4608], ids=["37MiB", "160MiB"])
def test_kept_memory_is_not_faulted_in_again_on_every_call(n):
    system, kept = faults_per_call("system", n), faults_per_call("keep", n)
    if not kept["applied"]:
        pytest.skip("not glibc: lm.malloc leaves malloc alone")
    if system["faults_per_call"] < 1000:
        pytest.skip(f"this XLA/glibc does not re-fault its buffers ({system['faults_per_call']} "
                    "faults per call): nothing to fix")
    assert kept["faults_per_call"] < system["faults_per_call"] / 10, (system, kept)
