#!/usr/bin/env bash
# Every GPU measurement of the accelerator benchmarks in one call (budget: 8 minutes on one
# H100/H200), so a lent machine is used well.
#
#   bash scripts/gpu_bench.sh prepare [NANOGPT_DIR]  # here: wheels the GPU image lacks + nanoGPT
#   bash scripts/gpu_bench.sh run [quick]    # there, e.g. through the device tool:
#       run(command="bash scripts/gpu_bench.sh run", carry=[".whl", ".gpu"])
#
# `prepare` downloads, for Python 3.12 manylinux x86-64, the wheels of what lm needs that the
# GPU image does not ship (grain, array-record, portpicker, ml_collections, tensorboardX)
# into .whl/, and copies a nanoGPT checkout (NANOGPT_DIR, else $NANOGPT_DIR: a clone of
# https://github.com/karpathy/nanoGPT; without one the baby GPT runs lm alone) with the tiny
# Shakespeare text lm ships into .gpu/ (both ignored by git, carried with the working tree).
# `run` measures, writing JSON and logs under $OUT (the device tool's) or /tmp/gpu_bench:
#   1. GPT-2 124M shapes (vocab 50257, 12 × 768, seq 1024), bf16, synthetic tokens: every
#      variant of VARIANTS below (batch, attention implementation, remat) — MFU each;
#   2. BERT-base MLM+NSP at seq 128, bf16: sequences/s and MFU;
#   3. nanoGPT's baby GPT: lm's `gpt_shakespeare_char.py:baby` and nanoGPT's own GPU command
#      (its config file, default flags: torch.compile, bf16), one after the other: val loss
#      and whole-run wall time of each.
# `run quick` does one GPT-2 variant and skips the baby GPT runs (a smoke test, also on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}

if [ "$mode" = prepare ]; then
  nanogpt=${2:-${NANOGPT_DIR:-}}
  if [ -n "$nanogpt" ] && { [ ! -f "$nanogpt/train.py" ] || [ ! -d "$nanogpt/data/shakespeare_char" ]; }; then
    echo "error: $nanogpt is not a nanoGPT checkout (no train.py and data/shakespeare_char):" \
      "\`git clone https://github.com/karpathy/nanoGPT\`" >&2
    exit 1
  fi
  for d in .whl .gpu; do
    grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
  done
  mkdir -p .whl .gpu
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    grain==0.2.18 array-record==0.8.6 portpicker ml_collections==1.1.0 tensorboardX==2.6.5
  rm -rf .gpu/nanoGPT
  if [ -z "$nanogpt" ]; then
    echo "note: no nanoGPT checkout: \`git clone https://github.com/karpathy/nanoGPT\` and" \
      "pass its path (bash scripts/gpu_bench.sh prepare DIR, or set \$NANOGPT_DIR) to time" \
      "nanoGPT's baby GPT too; without it the baby GPT runs lm alone" >&2
  else
    cp -r "$nanogpt" .gpu/nanoGPT && rm -rf .gpu/nanoGPT/.git && chmod -R u+w .gpu
    gzip -dc lm/data/assets/tiny_shakespeare.txt.gz \
      > .gpu/nanoGPT/data/shakespeare_char/input.txt
  fi
  ls -la .whl .gpu
  exit 0
fi

out=${OUT:-/tmp/gpu_bench}
mkdir -p "$out"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$out/devices.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
started=$(date +%s)

bench() {  # bench NAME STEPS EXPERIMENT OVERRIDES...: lm bench's JSON in $out/NAME.json
  local name=$1 steps=$2 experiment=$3
  shift 3
  timeout 240 python3 -m lm bench --config "experiments/$experiment" --steps "$steps" \
    --json "$out/$name.json" --config.data.source=synthetic "$@" 2>&1 | tail -3 \
    | tee "$out/$name.log" || echo "$name: failed (see $out/$name.log)"
}

gpt2=(--config.model.vocab_size=50257 --config.model.dtype=bfloat16
      --config.model.dropout_rate=0.0 --config.model.attention_dropout_rate=0.0)
# name batch attention remat
VARIANTS=("gpt2_b32_cudnn 32 cudnn none" "gpt2_b64_cudnn 64 cudnn dots_with_no_batch_dims_saveable"
          "gpt2_b32_xla 32 xla none" "gpt2_b16_cudnn 16 cudnn none")
quick=$([ "${2:-}" = quick ] && echo 1 || echo 0)
if [ "$quick" = 1 ]; then VARIANTS=("${VARIANTS[0]}"); fi
# Without a GPU (a smoke test of this script): shapes that a CPU runs in seconds.
small=()
if [ "$(python3 -c "import jax; print(jax.default_backend())")" = cpu ]; then
  small=(--config.model.num_layers=1 --config.model.d_model=64 --config.model.num_heads=2
         --config.model.d_ff=128 --config.data.seq_len=64 --config.train.grad_accum_steps=1)
  VARIANTS=("gpt2_b4_cpu 4 xla none")
fi
for variant in "${VARIANTS[@]}"; do
  read -r name batch attention remat <<< "$variant"
  bench "$name" 40 gpt_wikitext.py:base "${gpt2[@]}" --config.train.batch_size="$batch" \
    --config.model.attention_impl="$attention" --config.model.remat_policy="$remat" \
    "${small[@]}"
done
bert_batch=$([ ${#small[@]} -gt 0 ] && echo 4 || echo 256)
bench "bert_base_b$bert_batch" 40 bert_mlm_nsp.py:base --config.model.vocab_size=30522 \
  --config.model.dtype=bfloat16 --config.model.attention_dropout_rate=0.0 \
  --config.model.attention_impl=cudnn --config.train.batch_size="$bert_batch" "${small[@]}"

if [ "$quick" = 0 ]; then
  # nanoGPT's baby GPT, lm first: whole-process wall time and the final val loss.
  start=$(date +%s.%N)
  timeout 300 python3 -m lm train --config experiments/gpt_shakespeare_char.py:baby \
    --workdir "$out/baby_lm" --quiet --config.model.dtype=bfloat16 > "$out/baby_lm.log" 2>&1 \
    || echo "lm baby: failed or timed out (see baby_lm.log)"
  echo "lm baby: wall $(python3 -c "import time; print(f'{time.time() - $start:.1f}')") s," \
    "$(grep -o "'eval/loss': [0-9.]*" "$out/baby_lm.log" | tail -1)" | tee "$out/baby.txt"
  if [ -d .gpu/nanoGPT ]; then
    work=$(mktemp -d) && cp -r .gpu/nanoGPT/. "$work/" && chmod -R u+w "$work" && cd "$work"
    python3 data/shakespeare_char/prepare.py > /dev/null
    start=$(date +%s.%N)
    timeout 300 python3 train.py config/train_shakespeare_char.py > "$out/baby_nanogpt.log" 2>&1 \
      || echo "nanoGPT baby: failed or timed out (see baby_nanogpt.log)"
    echo "nanoGPT baby: wall $(python3 -c "import time; print(f'{time.time() - $start:.1f}')") s," \
      "$(grep -o "val loss [0-9.]*" "$out/baby_nanogpt.log" | tail -1)" | tee -a "$out/baby.txt"
    cd - > /dev/null
  fi
fi

python3 - "$out" <<'PY'
import json, pathlib, sys
cell = lambda v, fmt: "n/a" if v is None else format(v, fmt)
print("| run | batch | attention | remat | ms/step | tokens/s | TFLOP/s | MFU | first step s "
      "| peak GB |\n|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    print(f"| {path.stem} | {r['batch_size']} | {r['attention_impl']} | {r['remat_policy']} "
          f"| {cell(r['ms_per_step'], '.1f')} | {cell(r['tokens_per_s'], ',.0f')} "
          f"| {cell(r['tflops_per_s'], '.1f')} | {cell(r['mfu'], '.3f')} "
          f"| {cell(r['compile_s'], '.1f')} | {cell(r['peak_memory_gb'], '.1f')} |")
PY
echo "total $(( $(date +%s) - started )) s"
