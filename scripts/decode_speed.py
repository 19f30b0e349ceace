"""Decode speed of an experiment's GPT: new tokens per second with and without the KV cache.

    JAX_PLATFORMS=cpu python scripts/decode_speed.py \
        [--config experiments/gpt_shakespeare_char.py:cpu] [--new_tokens 256] [--batch 1 8]

Random weights (speed does not depend on them), a one-token prompt, greedy, no
end-of-sequence: every row makes all `--new_tokens`. Timed after a compiling call, best of
`--repeats`. Rows of the table:
  - cache: `generate` as it runs. A learned-position model whose text outgrows max_len
    (Shakespeare `cpu`: 64) uses the cache for the first max_len tokens, then recomputes the
    max_len-token window for each new token (see lm/generation/generate.py);
  - no cache: every token recomputes its window (`use_cache=False`);
  - cache, max_len = prompt + new tokens: the same model with a position table long
    enough never to slide: what the cache alone gives.
"""

import argparse
import dataclasses
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import config as config_lib
from lm.compile_cache import cpu_name
from lm.generation.generate import generate
from lm.models import ModelConfig, build


def experiment_model(spec: str) -> ModelConfig:
    """`path.py:arg` -> the experiment's ModelConfig (its `get_config(arg).model`)."""
    return ModelConfig(**config_lib.load(spec).model)


def tokens_per_second(cfg: ModelConfig, batch: int, new_tokens: int, use_cache: bool,
                      repeats: int) -> float:
    model = build(cfg)
    prompt = jnp.zeros((batch, 1), jnp.int32)
    params = jax.jit(lambda key: nn.unbox(model.init(key, prompt))["params"])(jax.random.key(0))
    run = lambda: generate(model, params, prompt, max_new_tokens=new_tokens,
                           use_cache=use_cache).block_until_ready()
    run()  # compiles
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return batch * new_tokens / min(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/gpt_shakespeare_char.py:cpu")
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = experiment_model(args.config).replace(dropout_rate=0.0, attention_dropout_rate=0.0)
    long_cfg = cfg.replace(max_len=max(cfg.max_len, 1 + args.new_tokens))
    rows = [("cache", cfg, True), ("no cache", cfg, False),
            (f"cache, max_len={long_cfg.max_len} (no sliding)", long_cfg, True)]
    shape = dataclasses.asdict(cfg)
    print(f"{args.config}: {shape['num_layers']} layers x {shape['d_model']}, vocab "
          f"{shape['vocab_size']}, max_len {shape['max_len']}; {args.new_tokens} new tokens; "
          f"{cpu_name()} x{os.cpu_count()}, jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print("| | " + " | ".join(f"batch {b} (tokens/s)" for b in args.batch) + " |")
    print("|---|" + "---:|" * len(args.batch))
    for name, row_cfg, use_cache in rows:
        speeds = [tokens_per_second(row_cfg, b, args.new_tokens, use_cache, args.repeats)
                  for b in args.batch]
        print(f"| {name} | " + " | ".join(f"{s:,.0f}" for s in speeds) + " |", flush=True)


if __name__ == "__main__":
    main()
