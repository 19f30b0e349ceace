"""Keep glibc's malloc from returning each step's buffers to the kernel (a CPU speed fix).

XLA:CPU allocates a step's temporary buffers (tens of MB for the small GPT of
experiments/gpt_shakespeare_char.py:cpu) with malloc and frees them when the step ends. glibc
serves blocks that large with a fresh mmap and unmaps them on free, so every step faults its
whole working set in again: page faults and kernel time in every step. Served from the heap,
which is never trimmed, the pages stay mapped from one step to the next. PyTorch's CPU
allocator and tcmalloc keep freed memory for the same reason; the cost is that the process
keeps its high-water mark of heap.

A thread other than the main one gets its own arena, which grows in heaps of at most
64 MiB: a larger block asked for there is mapped afresh and unmapped on free whatever
mallopt says. jax runs a CPU computation on a worker thread by default (async dispatch), so
a step whose temporaries exceed 64 MiB (MiniLM finetuning's do) would still fault them in
on every call. `run_cpu_steps_inline` runs each computation on the thread that calls it, the
main one, whose heap keeps any size. Forcing one arena for every thread would also avoid it,
but then every allocation of every thread takes that arena's lock. What each change measured:
docs/performance.md.
`LM_MALLOC=system` leaves malloc and dispatch as they are.
"""

import contextlib
import ctypes
import ctypes.util
import gc
import os
import platform

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
_NEVER = 2**31 - 1  # the largest value mallopt takes


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap, never trim it, grow it 64 MiB at a time. True if
    applied: glibc only, and not when `LM_MALLOC=system` or GLIBC_TUNABLES sets malloc's
    behaviour."""
    if (os.environ.get("LM_MALLOC") == "system" or platform.libc_ver()[0] != "glibc"
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # No mmap and no trim go together: a fixed trim threshold alone also freezes glibc's
    # mmap threshold at 128 KiB, which maps (and faults) even more of each step. Without the
    # padding, threads' own arenas still dropped and re-faulted memory in some runs; with it,
    # none did.
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER), (M_TOP_PAD, 64 << 20)))


def run_cpu_steps_inline() -> None:
    """Run each CPU computation on the calling thread, not a worker: see above. Call before
    the first computation (jax reads it when it creates the CPU client); accelerators ignore
    it. Only the loop's own Python work between steps stops overlapping a step."""
    import jax

    if "jax_cpu_enable_async_dispatch" in jax.config.values:  # a speed knob: absent, no-op
        jax.config.update("jax_cpu_enable_async_dispatch", False)


@contextlib.contextmanager
def long_lived_objects_frozen():
    """Keep what exists now (modules, data records, the model) out of Python's cyclic GC
    while a run lasts; what it leaves behind is collectable again afterwards.

    A full collection walks every tracked object (hundreds of thousands once a pretrained
    model is loaded), and tracing a new batch shape triggers several: docs/performance.md.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
