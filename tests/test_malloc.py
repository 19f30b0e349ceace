"""lm.malloc: a jitted CPU function with large temporaries stops page-faulting on every call."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
from lm import malloc
applied = malloc.keep_freed_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp

@jax.jit
def f(x_NxD, w_DxN):  # 37 MiB of temporaries, like the Shakespeare GPT's step (36 MiB)
    a_NxN = jnp.tanh(x_NxD @ w_DxN)
    b_NxN = jnp.sin((x_NxD + a_NxN @ w_DxN.T) @ w_DxN)
    return (a_NxN @ w_DxN.T).sum() + (b_NxN @ w_DxN.T).sum()

x, w = jnp.ones((3072, 64), jnp.float32), jnp.ones((64, 3072), jnp.float32) / 64
faults = []  # per call; each thread's arena warms up once, so take the median
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[10]
print(json.dumps({"applied": applied, "faults_per_call": faults}))
"""


def faults_per_call(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_not_faulted_in_again_on_every_call():
    system, kept = faults_per_call("system"), faults_per_call("keep")
    if not kept["applied"]:
        pytest.skip("not glibc: lm.malloc leaves malloc alone")
    if system["faults_per_call"] < 1000:
        pytest.skip(f"this XLA/glibc does not re-fault its buffers ({system['faults_per_call']} "
                    "faults per call): nothing to fix")
    assert kept["faults_per_call"] < system["faults_per_call"] / 10, (system, kept)
