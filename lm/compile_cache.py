"""JAX's persistent compilation cache, on for every `python -m lm` command: a rerun of the
same experiment loads its compiled steps from disk instead of compiling them again.

Compiling the train, eval and init steps is a large share of a small run's start-up, and on
an accelerator a large model's step compiles for minutes (MaxText turns the same cache on by
default). JAX keys each entry by the computation, the
compile options (XLA_FLAGS included), the jax version and the device kind, so a changed
model or flag compiles afresh. XLA:CPU compiles for the host's own instruction set, which
the device kind does not name, so the default directory has one folder per CPU model and
feature set: a home directory shared by different machines never loads code built for
another CPU.

`LM_COMPILE_CACHE=DIR` puts the cache in DIR, `LM_COMPILE_CACHE=off` turns it off, and JAX's
own `JAX_COMPILATION_CACHE_DIR` wins over both. The cache keeps at most 2 GiB, dropping the
least recently used entries (`JAX_COMPILATION_CACHE_MAX_SIZE` changes that). An entry
damaged by a process killed while writing it is reported by JAX and compiled instead;
deleting the directory clears the cache. A directory that cannot be written (a read-only
home) turns the cache off with a one-line notice.
"""

import hashlib
import os
import pathlib
import platform
import sys

CACHE_ENV = "LM_COMPILE_CACHE"
MAX_BYTES = 2 << 30
# Steps that compile faster than this are not worth a file (jax's default is 1 s, which
# leaves out the small model's eval and init steps).
MIN_COMPILE_SECS = 0.2


def _cpuinfo() -> dict[str, str]:
    """The first core's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    fields: dict[str, str] = {}
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """This host's CPU model, e.g. 'AMD EPYC 7B13' (the one reader: MFU's peak cache and the
    scripts that print where they ran)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def host_fingerprint() -> str:
    """A short name for this CPU's model and instruction set extensions."""
    fields = _cpuinfo()
    flags = sorted((fields.get("flags") or fields.get("Features", "")).split())  # x86 / arm
    text = f"{platform.machine()}|{fields.get('model name', '')}|{' '.join(flags)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "lm" / "jax_cache" / host_fingerprint()


def enable() -> str | None:
    """Turns the cache on for this process and its children (through JAX's environment
    variables, which jax reads when it is imported: commands that never import jax pay
    nothing; if jax is imported already, through its config too). Returns the cache
    directory, or None when it is off."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    choice = os.environ.get(CACHE_ENV, "")
    if choice.lower() in ("off", "0", "false", "none"):
        return None
    directory = os.path.expanduser(choice) if choice else str(default_dir())
    try:  # JAX would warn at every compilation instead
        os.makedirs(directory, exist_ok=True)
        writable = os.access(directory, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        print(f"lm: compilation cache off: cannot write {directory} (set {CACHE_ENV}=DIR)",
              file=sys.stderr)
        return None
    settings = {
        "JAX_COMPILATION_CACHE_DIR": directory,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": os.environ.get(
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(MIN_COMPILE_SECS)),
        "JAX_COMPILATION_CACHE_MAX_SIZE": os.environ.get(
            "JAX_COMPILATION_CACHE_MAX_SIZE", str(MAX_BYTES)),
    }
    os.environ.update(settings)
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_compilation_cache_dir", settings["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(settings["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
        jax.config.update("jax_compilation_cache_max_size",
                          int(settings["JAX_COMPILATION_CACHE_MAX_SIZE"]))
    return settings["JAX_COMPILATION_CACHE_DIR"]
