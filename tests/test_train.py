"""Training: losses vs float64 numpy, exact gradient accumulation, tiny end-to-end runs of
every experiment family (the loss goes down), NaN handling, and clear errors on bad input."""

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.special

from lm import config as config_lib
from lm import models
from lm.cli import train as cli
from lm.train import checkpoint, losses, mfu, step, windows
from lm.train import objectives as tasks
from lm.train.loop import train
from lm.train.state import TrainState
from tests.conftest import FULL_DATA

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


# ------------------------------------------------------------------------------ losses

def test_cross_entropy_and_squared_error_match_float64_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, size=(2, 5))
    weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
    got = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels, weights)
    x = np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64)  # same bf16 inputs
    nll = scipy.special.logsumexp(x, -1) - np.take_along_axis(x, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(got["loss"][0], (nll * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(got["loss"][1], weights.sum())
    np.testing.assert_allclose(got["accuracy"][0], ((x.argmax(-1) == labels) * weights).sum())
    preds, targets = rng.normal(size=4), rng.normal(size=4)
    mse = losses.squared_error(preds, targets, np.array([1.0, 1, 0, 1]))
    np.testing.assert_allclose(mse["loss"][0], ((preds - targets) ** 2)[[0, 1, 3]].sum(),
                               rtol=1e-6)


def test_classification_eval_adds_glue_metrics_over_real_rows():
    """MRPC: accuracy from the loss sums and F1 from the host metrics, vs sklearn."""
    import sklearn.metrics

    model_cfg = models.model_config("bert", "tiny", num_labels=2, heads=())
    task = tasks.get("classification", model_cfg)
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(2, 6, 2)), rng.integers(0, 2, size=(2, 6))
    weights = np.ones((2, 6), np.float32)
    weights[1, 4:] = 0  # eval padding rows
    host = task.host_metrics(ml_collections.ConfigDict({"task": "mrpc"}))
    sums = None
    for i in range(2):
        batch = dict(labels=labels[i], example_weights=weights[i])
        out = {"logits": jnp.asarray(logits[i], jnp.float32)}
        batch_sums = tasks.metric_sums(task, out, batch)
        sums = batch_sums if sums is None else losses.add_sums(sums, batch_sums)
        host.add(*tasks.host_outputs(task, out, batch))
    real = weights.ravel() > 0
    preds, truth = logits.reshape(-1, 2).argmax(-1)[real], labels.ravel()[real]
    np.testing.assert_allclose(tasks.summarize(task, sums)["accuracy"],
                               sklearn.metrics.accuracy_score(truth, preds), rtol=1e-6)
    np.testing.assert_allclose(host.compute()["f1"], sklearn.metrics.f1_score(truth, preds))
    # STS-B (num_labels 1): mean squared error over the real rows.
    regression = tasks.get("classification", model_cfg.replace(num_labels=1))
    scores, targets = rng.normal(size=(6, 1)), rng.uniform(0, 5, size=6)
    mse = tasks.summarize(regression, tasks.metric_sums(
        regression, {"logits": scores}, dict(labels=targets, example_weights=weights[1])))
    np.testing.assert_allclose(mse["loss"], np.mean((scores[:4, 0] - targets[:4]) ** 2),
                               rtol=1e-5)


# --------------------------------------------------------------------- gradient accumulation

def _tiny_gpt(vocab=64, length=8):
    cfg = models.model_config("gpt", "tiny", vocab_size=vocab, max_len=length, dropout_rate=0.0,
                              attention_dropout_rate=0.0)
    return cfg, models.build(cfg)


def _ragged_batch(rows=8, length=8, vocab=64):
    """Rows with 1..length real tokens: micro-batches hold different numbers of tokens."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, size=(rows, length + 1)).astype(np.int32)
    real = np.arange(rows)[:, None] % length >= np.arange(length)[None, :]  # row r: r%T+1
    order = np.argsort(-real.sum(1), kind="stable")  # strided micro-batches: very unequal
    return dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
                weights=real[order].astype(np.float32))


@pytest.mark.parametrize("accum, parallel", [(4, 1), (1, 4), (2, 2)])
def test_grad_accumulation_equals_one_big_batch(accum, parallel):
    """Micro-batches one after another (accumulation), side by side (parallel) or both: the
    gradient of the whole batch's mean loss."""
    k = accum * parallel
    model_cfg, model = _tiny_gpt()
    task = tasks.get("causal", model_cfg)
    batch = _ragged_batch()
    params = nn.meta.unbox(model.init(jax.random.key(0), batch["inputs"])["params"])
    tx = optax.sgd(1.0)  # update = -gradient: compares gradients, which Adam would normalise

    def run(accum, parallel):
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
        fn = jax.jit(lambda s, b: step.train_step(
            s, b, model=model, objective=task, tx=tx, schedule=lambda _: 1.0,
            accum_steps=accum, parallel_micro_batches=parallel))
        return fn(state, batch)

    (one, m1), (acc, mk) = run(1, 1), run(accum, parallel)
    np.testing.assert_allclose(mk["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(mk["grad_norm"], m1["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 acc.params, one.params)

    # The test can fail: averaging the per-micro-batch mean gradients (optax.MultiSteps)
    # differs from the whole-batch gradient on this batch by far more than the tolerance.
    def mean_loss(p, b):
        sums = tasks.metric_sums(task, tasks.forward(task, model, p, b, deterministic=True), b)
        return tasks.summarize(task, sums)["loss"]

    micro = step.split_micro_batches(batch, k)
    grad_fn = jax.jit(jax.grad(mean_loss))
    naive = [grad_fn(params, jax.tree.map(lambda x, i=i: x[i], micro)) for i in range(k)]
    naive = jax.tree.map(lambda *g: np.mean(g, 0), *naive)
    whole = jax.tree.map(np.subtract, params, one.params)  # sgd(1): params - update = grads
    gap = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), naive, whole)))
    assert gap > 1e-3


# ----------------------------------------------------------- nanoGPT's random windows

def test_random_windows_sample_the_stream_and_resume():
    tokens = np.arange(100, dtype=np.int32)  # token t is followed by t + 1
    make = lambda batch_size=3, **kw: windows.RandomWindows(
        tokens, seq_len=8, batch_size=batch_size, seed=0, process_index=0, process_count=1, **kw)
    it = make(num_epochs=None)
    batches = [next(it) for _ in range(5)]
    for b in batches:
        np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # contiguous windows
        assert b["inputs"].shape == (3, 8) and b["weights"].min() == 1
    starts = np.concatenate([b["inputs"][:, 0] for b in batches])
    assert len(set(starts.tolist())) > 5 and starts.max() <= 100 - 9
    it.set_state({"index": 3})
    np.testing.assert_array_equal(next(it)["inputs"], batches[3]["inputs"])

    # Eval: consecutive windows cover the stream once; the last batch is padded with weight 0.
    once = list(make(batch_size=5, num_epochs=1))
    real = np.concatenate([b["inputs"][b["weights"][:, 0] > 0] for b in once])
    np.testing.assert_array_equal(real.ravel(), tokens[:12 * 8])  # 12 full windows of 8 (+1)
    assert len(once) == 3 and once[-1]["weights"][:, 0].tolist() == [1, 1, 0, 0, 0]


# ---------------------------------------------------------------------------- end to end

TINY_RUN = {  # few steps of small batches: a smoke run that still learns
    "train.steps": "25", "train.log_every": "1", "train.eval_every": "0", "train.eval_steps": "2",
    "train.warmup_steps": "3", "train.decay_steps": "0", "train.checkpoint_every": "1000",
    "train.batch_size": "8", "train.eval_at_start": "False",
}
WIKITEXT = {"model.vocab_size": "512", "model.num_layers": "1", "data.seq_len": "32",
            "data.train_split": "train[:2%]" if FULL_DATA else "train[:25%]",
            "data.eval_split": "validation[:5%]" if FULL_DATA else "validation[:20%]",
            "data.num_threads": "1", "data.prefetch": "0", "train.lr": "3e-3"}


def _metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def _assert_learns(workdir, eval_keys):
    records = _metrics(workdir)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 26))
    first, last = np.mean([r["train/loss"] for r in train[:5]]), np.mean(
        [r["train/loss"] for r in train[-5:]])
    assert last < first - 0.2, (first, last)
    for key in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu"):
        assert np.isfinite(train[-1][key]), key
    final = records[-1]
    assert {"eval/loss", *eval_keys} <= set(final), final
    assert (pathlib.Path(workdir) / "config.json").exists()
    assert list((pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*"))


def test_shakespeare_char_from_the_command_line(tmp_path):
    overrides = {**TINY_RUN, "model.num_layers": "2", "model.d_model": "64", "model.d_ff": "256",
                 "data.seq_len": "32", "train.lr": "1e-2"}
    cli.main(["train", "--config", f"{EXPERIMENTS}/gpt_shakespeare_char.py:cpu", "--workdir",
              str(tmp_path), "--quiet", *[f"--config.{k}={v}" for k, v in overrides.items()]])
    _assert_learns(tmp_path, {"eval/perplexity", "eval/accuracy"})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["lr"] == 1e-2 and saved["model"]["num_layers"] == 2


@pytest.mark.parametrize("experiment, eval_keys", [
    ("gpt_wikitext.py:tiny", {"eval/perplexity"}),
    ("bert_mlm_nsp.py:tiny", {"eval/mlm_accuracy", "eval/nsp_accuracy"}),
    ("t5_span_corruption.py:tiny", {"eval/perplexity"}),
])
def test_tiny_run_reduces_the_loss(experiment, eval_keys, sentencepiece_model, tmp_path):
    config = config_lib.load(f"{EXPERIMENTS}/{experiment}",
                             {**TINY_RUN, **WIKITEXT, "data.tokenizer.path": sentencepiece_model})
    result = train(config, str(tmp_path), quiet=True)
    assert result["step"] == 25
    _assert_learns(tmp_path, eval_keys)


# ------------------------------------------------------------------------------- failures

def _shakespeare(**overrides):
    small = {**TINY_RUN, "model.num_layers": "1", "model.d_model": "32", "model.d_ff": "64",
             "data.seq_len": "16", "train.steps": "8"}
    return config_lib.load(f"{EXPERIMENTS}/gpt_shakespeare_char.py:cpu", {**small, **overrides})


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                            monkeypatch):
    real_step = step.train_step

    def poisoned(state, batch, **kwargs):  # the 4th update (step 4) turns everything NaN
        new, metrics = real_step(state, batch, **kwargs)
        nan = jnp.where(state.step == 3, jnp.nan, 1.0)
        return new.replace(params=jax.tree.map(lambda p: p * nan, new.params)), {
            **metrics, "loss": metrics["loss"] * nan}

    monkeypatch.setattr(step, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match=r"at step 4: .*last good checkpoint is step 2"):
        train(_shakespeare(**{"train.checkpoint_every": "2"}), str(tmp_path), quiet=True)
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=2, keep=2)
    assert ckpt.latest_step() == 2
    ckpt.close()


def test_tokenizer_larger_than_model_vocab_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer has 68 ids but model.vocab_size=60"):
        train(_shakespeare(**{"model.vocab_size": "60"}), str(tmp_path), quiet=True)


def test_missing_data_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="'no_such_dataset' is not prepared"):
        train(_shakespeare(**{"data.name": "no_such_dataset"}), str(tmp_path), quiet=True)


# ------------------------------------------------------------------------------------ MFU

def test_gpt2_flops_use_nanogpts_parameter_count():
    """GPT-2 124M: 124,439,808 params; nanoGPT's N leaves out the 1024×768 position table."""
    cfg = models.model_config("gpt", "base")
    params = jax.eval_shape(lambda: models.build(cfg).init(
        jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    params = nn.meta.unbox(params)
    assert sum(x.size for x in jax.tree.leaves(params)) == 124_439_808
    n = mfu.matmul_params(params, tie_embeddings=True)
    assert n == 124_439_808 - 1024 * 768
    assert mfu.flops_per_token(n, num_layers=12, attn_width=768, seq_len=1024) == (
        6 * n + 12 * 12 * 768 * 1024)


def test_throughput_counts_each_steps_own_tokens_and_skips_the_first(monkeypatch):
    clock = iter([10.0, 11.0, 11.5, 12.0, 20.0])  # when each step was seen finished
    monkeypatch.setattr(mfu.time, "perf_counter", lambda: next(clock))
    meter = mfu.Throughput()
    meter.tick(999, 1e9)  # the first read starts the clock: its step is not timed
    for tokens in (64, 32, 128):  # length-bucketed batches: each step its own size
        meter.tick(tokens, tokens * 6.0)
    rates = meter.rate()
    assert rates == mfu.Rates(steps=3 / 2, tokens=224 / 2, flops=224 * 6.0 / 2)
    assert meter.rate() is None  # no step since
    meter.tick(16, 16.0)
    assert meter.rate() == mfu.Rates(steps=1 / 8, tokens=16 / 8, flops=16 / 8)


def test_throughput_at_a_checkpoint_step_is_the_steps_own_rate(monkeypatch):
    """The loop's reads on a CPU, whose steps run inside their call: step k is read after
    step k + 1 has run, and at a checkpoint step the forced read of that step comes
    microseconds later. Timed by the reads, that last window was 1 step per 10 µs (100,000×);
    timed by when each step was seen finished, every window is 1 step per second."""
    now = [0.0]
    monkeypatch.setattr(mfu.time, "perf_counter", lambda: now[0])
    meter, rates = mfu.Throughput(), []
    finished = {}
    for s in range(1, 7):  # checkpoint at step 6 (log_every=1); each step takes 1 s
        now[0] = float(s)
        finished[s] = now[0]  # the step's call returned: it is done
        reads = [s - 1] + ([s] if s == 6 else [])
        for k in reads:
            if k:
                now[0] += 1e-5  # the host reads step k
                meter.tick(100, 1e3, done=finished[k])
                rates.append(meter.rate())
    assert rates[0] is None  # step 1 only starts the clock
    assert [r.steps for r in rates[1:]] == [1.0] * 5
    assert [r.tokens for r in rates[1:]] == [100.0] * 5


def test_the_run_holds_its_objects_out_of_the_gc_and_lets_them_go_after(monkeypatch, tmp_path):
    """The steps (and the tracing of each new batch shape) run with the objects made at
    start-up frozen; a run's end unfreezes them, so repeated runs in one process free them."""
    import gc  # noqa: PLC0415
    import types  # noqa: PLC0415

    from lm.train import loop  # noqa: PLC0415
    class Started(list):  # what _start returns, as far as train() looks at it
        ckpt = types.SimpleNamespace(wait=lambda: None)

    made_at_start = Started([i] for i in range(1000))  # container objects: tracked by the GC
    monkeypatch.setattr(loop, "_start", lambda *a: made_at_start)
    monkeypatch.setattr(loop, "_train", lambda run, quiet: {
        "frozen": gc.get_freeze_count(), "tracked": gc.is_tracked(run[0])})
    assert gc.get_freeze_count() == 0
    seen = loop.train(ml_collections.ConfigDict(), str(tmp_path))
    assert seen["tracked"] and seen["frozen"] >= len(made_at_start)
    assert gc.get_freeze_count() == 0
