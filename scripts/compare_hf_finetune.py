"""GLUE finetuning of all-MiniLM-L6-v2: Hugging Face PyTorch and `lm`, side by side.

    python scripts/compare_hf_finetune.py [--task sst2] [--train 'train[:10%]'] [--epochs 1]
        [--lr 5e-5] [--batch 32] [--seq_len 64] [--hf_padding grouped longest max_length]
        [--order hf,lm]

Both sides finetune the same checkpoint on the same examples (read once by lm's own GLUE
reader, so the same split and slice) with the same recipe: AdamW (β 0.9/0.999, ε 1e-6,
weight decay 0.01 off biases and norms), linear warmup over 10% of the steps then linear
decay to 0, gradient clipping at 1.0, then accuracy on the whole dev set. The PyTorch side
is the standard loop of the `transformers` examples (BertForSequenceClassification, a
shuffled loader, torch's default threads), once per `--hf_padding`: `longest` pads each batch
to its longest row, `max_length` pads every row to --seq_len (run_glue.py's default,
`pad_to_max_length=True`), `grouped` pads to the longest row of batches of similar lengths
(the Trainer's `group_by_length=True`: shuffled mega-batches of 50 batches, sorted by
length; the fastest of the three, and the same idea as `lm`'s buckets). The `lm` side pads
to the batch's length bucket (8, 16, 32, ...) of such batches:


    python -m lm train --config experiments/finetune_glue.py:TASK,train=...,epochs=...,lr=...,\
batch=...,seq_len=... --workdir TMP --quiet

Each side runs as its own process, one right after the other, and is timed whole (imports,
loading, training, evaluation) and per step (PyTorch: its training loop over the steps,
tokenization included; `lm`: its logged windows, which leave out the first step and the
evaluation but not the compiles of the later batch shapes). Needs torch and transformers
(`pip install -e '.[test]'`) and the task's data (`python -m lm data prepare glue/sst2`).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def lm_arg(f: argparse.Namespace) -> str:
    return (f"{f.task},train={f.train},epochs={f.epochs},lr={f.lr},batch={f.batch},"
            f"seq_len={f.seq_len}")


def hf_finetune(f: argparse.Namespace) -> dict[str, float]:
    """The PyTorch side (runs in its own process: `--side hf`)."""
    import torch
    import transformers

    from lm import config as config_lib
    from lm.convert import minilm_dir
    from lm.data import classification, glue

    cfg = config_lib.load(f"experiments/finetune_glue.py:{lm_arg(f)}")
    train = list(classification.records(cfg.data, cfg.data.train_split))
    dev = list(classification.records(cfg.data, cfg.data.eval_split))
    num_labels = glue.get(f.task).num_labels
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    model = transformers.BertForSequenceClassification.from_pretrained(
        minilm_dir(), num_labels=num_labels)

    def encode(rows):
        padding = "max_length" if f.hf_padding[0] == "max_length" else "longest"
        enc = tokenizer(*zip(*(r["texts"] for r in rows)), truncation=True,
                        max_length=f.seq_len, padding=padding, return_tensors="pt")
        return enc, torch.tensor([r["label"] for r in rows])

    steps = -(-len(train) // f.batch) * f.epochs
    no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
    decay = [p for n, p in model.named_parameters() if not no_decay(n)]
    rest = [p for n, p in model.named_parameters() if no_decay(n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=f.lr, betas=(0.9, 0.999), eps=1e-6)
    sched = transformers.get_linear_schedule_with_warmup(opt, steps // 10, steps)
    if f.hf_padding[0] == "grouped":  # the Trainer's group_by_length=True
        from transformers.trainer_pt_utils import get_length_grouped_indices
        lengths = [len(ids) for ids in tokenizer(
            *zip(*(r["texts"] for r in train)), truncation=True, max_length=f.seq_len)["input_ids"]]
    model.train()
    start = time.perf_counter()
    for _ in range(f.epochs):
        order = (get_length_grouped_indices(lengths, f.batch) if f.hf_padding[0] == "grouped"
                 else torch.randperm(len(train)).tolist())
        for k in range(0, len(train), f.batch):
            enc, labels = encode([train[i] for i in order[k:k + f.batch]])
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    loop_s = time.perf_counter() - start  # its batches' tokenization included
    model.eval()
    correct = 0
    with torch.no_grad():
        for k in range(0, len(dev), 64):
            enc, labels = encode(dev[k:k + 64])
            correct += int((model(**enc).logits.argmax(-1) == labels).sum())
    return {"accuracy": correct / len(dev), "steps": steps, "ms_per_step": loop_s / steps * 1e3}


def hf_flags(f: argparse.Namespace, side: str) -> list[str]:
    """The command line of one PyTorch run: `side` is 'hf:<padding>'."""
    return [f"--task={f.task}", f"--train={f.train}", f"--epochs={f.epochs}", f"--lr={f.lr}",
            f"--batch={f.batch}", f"--seq_len={f.seq_len}", "--hf_padding", side[3:]]


def run(side: str, f: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as workdir:
        if side == "lm":
            cmd = [sys.executable, "-m", "lm", "train", "--config",
                   f"experiments/finetune_glue.py:{lm_arg(f)}", "--workdir", workdir, "--quiet"]
        else:
            cmd = [sys.executable, __file__, "--side", "hf", *hf_flags(f, side)]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if out.returncode:
            sys.exit(f"error: {side} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        if side != "lm":
            result = json.loads(out.stdout.strip().splitlines()[-1])
        else:
            # Imported here, not at the top: the PyTorch side's process (this file) is timed.
            from lm.train import bench
            from lm.train.writer import read_records

            records = read_records(pathlib.Path(workdir, "metrics.jsonl"))
            last = [r for r in records if r.get("eval/accuracy") is not None][-1]
            # Every window, the first too: the compiles of the batch shapes met later count,
            # as PyTorch's loop time counts all its steps.
            result = {"accuracy": last["eval/accuracy"], "steps": int(last["step"]),
                      "ms_per_step": bench.summarize(records, skip_windows=0)["ms_per_step"]}
    return {**result, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--train", default="train[:10%]")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--hf_padding", nargs="+", default=["grouped", "longest", "max_length"],
                        choices=("longest", "max_length", "grouped"))
    parser.add_argument("--order", default="hf,lm", help="which runs first")
    parser.add_argument("--side", choices=("hf",), help=argparse.SUPPRESS)
    f = parser.parse_args()
    if f.side == "hf":
        print(json.dumps(hf_finetune(f)))
        return
    print(f"all-MiniLM-L6-v2 on {f.task} {f.train}, {f.epochs} epoch(s), lr {f.lr}, batch "
          f"{f.batch}, max length {f.seq_len}", flush=True)
    sides = [s for name in f.order.split(",")
             for s in ([f"hf:{p}" for p in f.hf_padding] if name == "hf" else [name])]
    results = {}
    for side in sides:
        results[side] = run(side, f)
        print(f"  {side}: {results[side]}", flush=True)
    lm = results["lm"]
    print("\n| run | dev accuracy | steps | ms/step | its ms/step / lm's | wall time, whole "
          "process (s) | its time / lm's |\n|---|---|---|---|---|---|---|")
    for side, r in results.items():
        name = "lm (jax)" if side == "lm" else f"Hugging Face PyTorch, padding={side[3:]}"
        print(f"| {name} | {r['accuracy']:.4f} | {r['steps']} | {r['ms_per_step']:.0f} | "
              f"{r['ms_per_step'] / lm['ms_per_step']:.2f}x | {r['wall_s']:.1f} | "
              f"{r['wall_s'] / lm['wall_s']:.2f}x |")


if __name__ == "__main__":
    main()
