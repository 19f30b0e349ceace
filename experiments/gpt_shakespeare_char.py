"""python -m lm train --config experiments/gpt_shakespeare_char.py:cpu --workdir /tmp/shakespeare

Character-level GPT on tiny Shakespeare: nanoGPT's `shakespeare_char` recipe.

- `cpu`:  nanoGPT's CPU command (config/train_shakespeare_char.py with --device=cpu
          --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
          --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0).
- `baby`: nanoGPT's "baby GPT" of that config file, for a GPU (6 layers, 6 heads, 384 wide).

The text ships inside lm (TFDS's `tiny_shakespeare` is read instead when it is prepared: the
same 90/5/5 split), so this runs with no data step. Ablate from the command line, e.g.
`--config.train.lr=3e-3 --config.model.dropout_rate=0.1`; `--config.train.steps=500` keeps
the schedule, evaluation and checkpoints in proportion. Curves: `tensorboard --logdir
/tmp/shakespeare`.
"""

from lm.config import base_config, model_fields, parse_arg, pick

ARGS = ("cpu", "baby")

# nanoGPT: n_layer, n_head, n_embd, block_size, batch_size, max_iters (= lr_decay_iters),
# dropout; and its warmup_iters and eval_interval as fractions of max_iters.
SIZES = {
    # 12 rows × 64 tokens = 768 tokens/step; × 2000 steps = 1.54M tokens ≈ 1.5 epochs of the
    # 1,003,854 training characters. Warmup 100 = 2000 // 20, eval every 250 = 2000 // 8.
    "cpu": dict(layers=4, heads=4, width=128, seq_len=64, batch=12, steps=2000, dropout=0.0,
                warmup_div=20, eval_div=8, eval_steps=20, log_every=1, parallel=2),
    # 64 × 256 = 16,384 tokens/step; × 5000 steps = 81.9M tokens ≈ 82 epochs. Warmup 100 =
    # 5000 // 50, eval every 250 = 5000 // 20.
    "baby": dict(layers=6, heads=6, width=384, seq_len=256, batch=64, steps=5000, dropout=0.2,
                 warmup_div=50, eval_div=20, eval_steps=200, log_every=10, parallel=1),
}


def get_config(arg: str | None = None):
    arg = parse_arg(arg, size="cpu")
    size = pick(SIZES, arg.size)
    config = base_config()

    config.model = model_fields(
        "gpt", "tiny",
        num_layers=size["layers"], num_heads=size["heads"], d_model=size["width"],
        d_ff=4 * size["width"], max_len=size["seq_len"],
        # 65 characters + <pad>, <eos>, <unk> that the char tokenizer appends (never emitted
        # here: add_eos is off), where nanoGPT's meta.pkl has just the 65.
        vocab_size=68,
        activation="gelu",  # torch nn.GELU(): exact, not tanh
        use_bias=False,  # nanoGPT bias=False: no biases in Linear or LayerNorm
        tie_embeddings=True,
        dropout_rate=size["dropout"], attention_dropout_rate=size["dropout"],
        # One loop iteration holds every layer: at 4 small layers, the loop's per-layer
        # slicing and stacking of params and gradients cost more than the compile time saved.
        scan_unroll=size["layers"],
    )

    config.data.update(
        source="tfds", name="tiny_shakespeare",
        # TFDS splits the text 90/5/5 by characters: nanoGPT's 10% validation is the last two.
        train_split="train", eval_split="validation+test",
        # nanoGPT draws each row at a random offset of the character stream (not packed rows).
        objective="random_windows", seq_len=size["seq_len"],
    )
    config.data.causal.add_eos = False  # one plain stream of characters
    config.data.tokenizer.update(kind="char", vocab_multiple=1)

    t = config.train
    t.update(
        steps=size["steps"], batch_size=size["batch"],
        lr=1e-3, min_lr=1e-4, schedule="cosine",  # cosine to min_lr at decay_steps 0 = steps
        b1=0.9, b2=0.99,  # nanoGPT: beta2 0.99 "because the number of tokens per iter is small"
        weight_decay=0.1, decay_embeddings=True,  # nanoGPT decays every 2-D param
        clip_norm=1.0,
        # nanoGPT evaluates 20 (cpu) / 200 (baby) random batches every 250 steps and at step 0.
        eval_steps=size["eval_steps"], eval_at_start=True, log_every=size["log_every"],
        keep_checkpoints=2, best_metric="eval/loss", best_mode="min",
        seed=1337,  # nanoGPT's
        # cpu: the batch's gradient as two computations of 6 rows that XLA runs one per core
        # (the same gradient; README, speed notes); a GPU runs one big one best.
        parallel_micro_batches=size["parallel"],
    )
    steps = t.get_ref("steps")  # what follows moves with --config.train.steps
    t.warmup_steps = steps // size["warmup_div"]
    t.eval_every = steps // size["eval_div"]
    t.checkpoint_every = steps // 4
    return config
