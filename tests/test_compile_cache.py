"""lm.compile_cache: a second run loads its compiled steps from the cache and trains the same."""

import json
import os
import subprocess
import sys

from lm import compile_cache

# A 2-step run of the Shakespeare GPT (one layer) through `python -m lm train`'s own set-up,
# counting JAX's persistent-cache hits.
PROBE = """
import json, sys
from jax import monitoring
from lm import compile_cache
directory = compile_cache.enable()
counts = {"hits": 0}
def count(event, **kwargs):
    if event.endswith("/cache_hits"):
        counts["hits"] += 1
monitoring.register_event_listener(count)
from lm import config as config_lib
from lm.train import loop
config = config_lib.load("experiments/gpt_shakespeare_char.py:cpu")
config.model.num_layers = 1
config.train.update(steps=2, eval_steps=2, eval_every=2, checkpoint_every=0)
result = loop.train(config, sys.argv[1], quiet=True)
import jax
print(json.dumps({"dir": directory, "jax_dir": jax.config.jax_compilation_cache_dir,
                  "loss": result["train/loss"],
                  "eval_loss": result["eval/loss"], **counts}))
"""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe(tmp_path, name: str, cache: str) -> dict:
    env = {**os.environ, "LM_COMPILE_CACHE": cache, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / name)], cwd=REPO,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_rerun_loads_the_compiled_steps_and_trains_the_same(tmp_path):
    cache = tmp_path / "cache"
    first = probe(tmp_path, "a", str(cache))
    assert first["dir"] == first["jax_dir"] == str(cache) and first["hits"] == 0
    assert any(cache.iterdir()), "nothing was written to the cache"
    second = probe(tmp_path, "b", str(cache))
    assert second["hits"] >= 2, second  # at least the train and eval steps
    off = probe(tmp_path, "c", "off")
    assert off["dir"] is off["jax_dir"] is None and off["hits"] == 0
    for run in (second, off):  # a loaded executable computes what a compiled one does
        assert (run["loss"], run["eval_loss"]) == (first["loss"], first["eval_loss"])


def test_the_default_directory_is_per_cpu(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    for name in (compile_cache.CACHE_ENV, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = compile_cache.enable()
    assert directory == str(tmp_path / "lm" / "jax_cache" / compile_cache.host_fingerprint())
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == directory
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")  # JAX's own setting wins
    assert compile_cache.enable() == "/elsewhere"


def test_an_unwritable_directory_turns_the_cache_off(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache directory would go
    monkeypatch.setenv(compile_cache.CACHE_ENV, str(blocked / "cache"))
    assert compile_cache.enable() is None
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    assert "compilation cache off" in capsys.readouterr().err
