"""Generation and inference against references.

- greedy decoding equals transformers' `generate(do_sample=False)` (random-weight GPT-2 and
  T5, end-of-sequence included), run on each prompt alone there and as one ragged batch here;
- the KV cache equals recomputing the whole (cropped) prefix each step, in a Python loop;
- top-k / top-p sampling keeps to the set a numpy reference allows, at its frequencies;
- fill-mask equals transformers' BertForMaskedLM; `sample_text` equals HF's decoded text.
"""

import functools
import os
import shutil

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its idle threads spin: NOTES.md

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from lm.convert import from_hf, minilm_dir
from lm.generation import inference
from lm.generation.generate import Sampling, filter_logits, generate
from lm.models import build, model_config
from tests.test_convert import VOCAB, bert_config, random_gpt2, randomized, saved, t5_model

PAD = 0
PROMPT_LENGTHS = (5, 2, 11)  # ragged


def prompts(lengths=PROMPT_LENGTHS, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, n).tolist() for n in lengths]


def left_padded(rows):
    P = max(map(len, rows))
    tokens, mask = np.full((len(rows), P), PAD, np.int32), np.zeros((len(rows), P), np.int32)
    for b, row in enumerate(rows):
        tokens[b, P - len(row):], mask[b, P - len(row):] = row, 1
    return tokens, mask


def right_padded(rows):
    tokens, mask = left_padded([r[::-1] for r in rows])
    return tokens[:, ::-1].copy(), mask[:, ::-1].copy()


def padded_to(row, n) -> list[int]:
    return list(row) + [PAD] * (n - len(row))


# ------------------------------------------------------------------ transformers' generate


def hf_path(next_logits, n) -> list[int]:
    """Greedy tokens by argmax of transformers' forward (no `generate`, no eos)."""
    out = []
    for _ in range(n):
        out.append(int(next_logits(out).argmax()))
    return out


def pick_eos(path: list[int]) -> int:
    """A token the greedy path reaches after a few steps (a first occurrence): as eos, the
    row stops there."""
    return next((t for k, t in enumerate(path) if k >= 2 and t not in path[:k]), path[0])


def test_gpt2_greedy_matches_transformers_generate(tmp_path):
    hf, directory = random_gpt2(tmp_path)
    rows, n = prompts(), 10
    as_long = lambda x: torch.tensor([x], dtype=torch.long)
    with torch.no_grad():
        eos = pick_eos(hf_path(lambda new: hf(as_long(rows[0] + new)).logits[0, -1], n))
        want = [padded_to(hf.generate(as_long(r), attention_mask=torch.ones_like(as_long(r)),
                                      do_sample=False, max_new_tokens=n, eos_token_id=eos,
                                      pad_token_id=PAD)[0, len(r):].tolist(), n) for r in rows]
    assert eos in want[0] and want[0][-1] == PAD  # the first row really stops at eos
    model, params = from_hf(directory)
    tokens, mask = left_padded(rows)
    got = generate(model, params, tokens, prompt_mask=mask, max_new_tokens=n, eos_id=eos,
                   pad_id=PAD)
    np.testing.assert_array_equal(got, want)


# transformers' generate sizes T5's cache by num_layers: its decoder must have as many.
T5_LAYERS = dict(num_layers=2, num_decoder_layers=2)


def test_t5_greedy_matches_transformers_generate(tmp_path):
    hf = t5_model("t5", untie=False, **T5_LAYERS)
    rows, n = prompts((6, 3, 9), seed=1), 8
    as_long = lambda x: torch.tensor([x], dtype=torch.long)
    with torch.no_grad():
        step = lambda new: hf(input_ids=as_long(rows[0]),
                              decoder_input_ids=as_long([PAD, *new])).logits[0, -1]
        eos = pick_eos(hf_path(step, n))
        want = [padded_to(hf.generate(as_long(r), attention_mask=torch.ones_like(as_long(r)),
                                      do_sample=False, max_new_tokens=n, eos_token_id=eos,
                                      pad_token_id=PAD, decoder_start_token_id=PAD
                                      )[0, 1:].tolist(), n) for r in rows]
    assert eos in want[0] and want[0][-1] == PAD
    model, params = from_hf(saved(hf, tmp_path))
    enc, enc_mask = right_padded(rows)
    got = generate(model, params, np.full((len(rows), 1), PAD), max_new_tokens=n, eos_id=eos,
                   pad_id=PAD, encoder_tokens=enc, encoder_mask=enc_mask)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ cache vs recomputation

VARIANTS = {
    # 11-token prompt + 10 new tokens > max_len 12: the cache serves the first new tokens,
    # then the window slides (nanoGPT's crop).
    "gpt_learned_sliding": dict(family="gpt", max_len=12),
    "gpt_rope": dict(family="gpt", position="rope", num_kv_heads=2, scan_layers=False),
    "t5": dict(family="t5", num_decoder_layers=3),
}


@functools.cache
def tiny_model(variant: str):
    cfg = model_config(size="tiny", vocab_size=VOCAB, **VARIANTS[variant])
    model = build(cfg)
    example = [jnp.ones((1, 4), jnp.int32)] * (2 if cfg.family == "t5" else 1)
    params = jax.jit(lambda key: nn.unbox(model.init(key, *example))["params"])(
        jax.random.key(1))
    return model, params


@pytest.fixture(params=list(VARIANTS))
def tiny(request):
    return tiny_model(request.param)


@pytest.fixture
def gpt():
    """The sampler is the same for every model: sampling tests use one GPT."""
    return tiny_model("gpt_learned_sliding")


def run_batch(model, params, rows, n, **kwargs):
    """`rows` as one batch: GPT prompts left-padded; T5 encoder inputs right-padded."""
    if model.cfg.family == "t5":
        enc, enc_mask = right_padded(rows)
        return generate(model, params, np.full((len(rows), 1), PAD), max_new_tokens=n,
                        encoder_tokens=enc, encoder_mask=enc_mask, **kwargs)
    tokens, mask = left_padded(rows)
    return generate(model, params, tokens, prompt_mask=mask, max_new_tokens=n, **kwargs)


def recomputed_greedy(model, params, row, n) -> list[int]:
    """Each step a full forward of the whole prefix (the last max_len tokens of a
    learned-position GPT, as nanoGPT crops), then argmax. The prefix is right-padded to one
    width (one compilation): causal attention keeps padding after it from changing it."""
    cfg, out = model.cfg, []
    width = cfg.max_len if cfg.position == "learned" else len(row) + n
    for _ in range(n):
        if cfg.family == "t5":
            prefix = [PAD, *out]
            logits = jitted_apply(model)(params, [row], [padded_to(prefix, n + 1)])
        else:
            prefix = (row + out)[-width:]
            logits = jitted_apply(model)(params, [padded_to(prefix, width)])
        out.append(int(np.argmax(logits[0, len(prefix) - 1])))
    return out


@functools.cache
def jitted_apply(model):
    return jax.jit(lambda params, *tokens: model.apply({"params": params},
                                                        *map(jnp.asarray, tokens)))


def test_cached_decoding_equals_recomputing_the_prefix(tiny):
    model, params = tiny
    rows, n = prompts(), 10
    want = [recomputed_greedy(model, params, row, n) for row in rows]
    np.testing.assert_array_equal(run_batch(model, params, rows, n), want)
    np.testing.assert_array_equal(run_batch(model, params, rows, n, use_cache=False), want)


def test_ragged_batch_equals_single_prompts(tiny):
    model, params = tiny
    rows, n = prompts(), 10
    batch = run_batch(model, params, rows, n)
    for b, row in enumerate(rows):
        np.testing.assert_array_equal(batch[b], run_batch(model, params, [row], n)[0])


def test_finished_rows_emit_pad(tiny):
    model, params = tiny
    rows, n = prompts(), 10
    free = np.asarray(run_batch(model, params, rows, n))
    eos = pick_eos(free[0].tolist())
    got = np.asarray(run_batch(model, params, rows, n, eos_id=eos, pad_id=PAD))
    for want_row, got_row in zip(free.tolist(), got.tolist(), strict=True):
        stop = want_row.index(eos) + 1 if eos in want_row else n
        assert got_row == want_row[:stop] + [PAD] * (n - stop)


# ------------------------------------------------------------------ sampling


def allowed_numpy(logits_V, temperature, top_k, top_p) -> np.ndarray:
    """The tokens Hugging Face's warpers keep: top-k, then the smallest most-probable set
    whose mass reaches top_p. Returns (allowed mask, their probabilities)."""
    z = np.asarray(logits_V, np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    keep = np.zeros(z.shape, bool)
    keep[order[: top_k or len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    before = np.cumsum(p[order]) - p[order]  # mass of the tokens more probable than each
    keep[order[before >= top_p]] = False
    probs = np.where(keep, np.exp(z - z.max()), 0.0)
    return keep, probs / probs.sum()


SETTINGS = [(1.0, 5, 1.0), (1.5, 0, 0.6), (0.7, 8, 0.8), (1.0, 0, 0.3)]


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_filter_logits_keeps_the_numpy_reference_set(temperature, top_k, top_p):
    logits_BxV = jax.random.normal(jax.random.key(0), (16, 50)) * 3
    got = np.asarray(filter_logits(logits_BxV, Sampling(temperature, top_k, top_p)))
    for b in range(16):
        keep, _ = allowed_numpy(logits_BxV[b], temperature, top_k, top_p)
        np.testing.assert_array_equal(np.isfinite(got[b]), keep)
        np.testing.assert_allclose(got[b][keep], logits_BxV[b][keep] / temperature, rtol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", SETTINGS)
def test_samples_stay_in_the_allowed_set(gpt, temperature, top_k, top_p):
    model, params = gpt
    rows, n = [prompts()[1]] * 32, 6  # 2 + 6 tokens: one full forward checks them all
    new = np.asarray(run_batch(model, params, rows, n, temperature=temperature, top_k=top_k,
                               top_p=top_p, rng=jax.random.key(3)))
    # The logits before each sampled token, by a full forward of the sampled sequences.
    full = np.concatenate([np.array(rows), new], axis=1)
    logits = np.asarray(model.apply({"params": params}, full))[:, len(rows[0]) - 1: -1]
    greedy = 0
    for b in range(len(rows)):
        for t in range(n):
            keep, _ = allowed_numpy(logits[b, t], temperature, top_k, top_p)
            assert keep[new[b, t]], (b, t, new[b, t], np.flatnonzero(keep))
            greedy += new[b, t] == logits[b, t].argmax()
    assert greedy < new.size  # it samples: not every token is the argmax
    assert len({tuple(r) for r in new.tolist()}) > 1


def test_sample_frequencies_match_the_filtered_distribution(gpt):
    model, params = gpt
    row, draws, (temperature, top_k, top_p) = prompts()[0], 4000, (1.0, 6, 0.9)
    new = run_batch(model, params, [row] * draws, 1, temperature=temperature, top_k=top_k,
                    top_p=top_p, rng=jax.random.key(5))
    logits = np.asarray(model.apply({"params": params}, jnp.array([row])))[0, -1]
    _, probs = allowed_numpy(logits, temperature, top_k, top_p)
    freq = np.bincount(np.asarray(new)[:, 0], minlength=len(probs)) / draws
    # Total variation distance: ~0.02 expected from 4000 draws of a few tokens.
    assert 0.5 * np.abs(freq - probs).sum() < 0.05


def test_top_k_1_equals_greedy_and_seeds_reproduce(gpt):
    model, params = gpt
    rows, n = prompts(), 8
    greedy = run_batch(model, params, rows, n)
    top1 = run_batch(model, params, rows, n, temperature=1.0, top_k=1, rng=jax.random.key(7))
    np.testing.assert_array_equal(top1, greedy)
    sample = lambda seed: np.asarray(run_batch(model, params, rows, n, temperature=2.0,
                                               rng=jax.random.key(seed)))
    np.testing.assert_array_equal(sample(1), sample(1))
    assert not np.array_equal(sample(1), sample(2))


def test_prompt_mask_must_be_left_padding(gpt):
    model, params = gpt
    with pytest.raises(ValueError, match="left padding"):
        generate(model, params, np.ones((1, 3)), prompt_mask=np.array([[1, 1, 0]]),
                 max_new_tokens=2)


# ------------------------------------------------------------------ inference functions


def with_tokenizer(directory, tokenizer_dir) -> str:
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens", "spiece")):
            shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return str(directory)


def test_sample_text_equals_transformers_decoded_text(gpt2_tokenizer_dir, tmp_path):
    hf, directory = random_gpt2(tmp_path, vocab_size=401)
    directory = with_tokenizer(directory, gpt2_tokenizer_dir)
    model, params, tokenizer = inference.load_hf(directory)
    assert tokenizer.eos_id == 400
    texts = ["ROMEO: But soft,", "Good"]
    got = inference.sample_text(model, params, tokenizer, texts, max_new_tokens=12,
                                temperature=0.0, num_samples=2)
    ref = transformers.AutoTokenizer.from_pretrained(directory)
    want = []
    for text in texts:
        ids = torch.tensor([ref(text)["input_ids"]])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=12, eos_token_id=400, pad_token_id=400)
        want += [ref.decode(out[0], skip_special_tokens=True)] * 2
    assert got == want


def test_t5_sample_text_decodes_the_encoder_input(t5_tokenizer_dir, tmp_path):
    hf = t5_model("t5", untie=False, vocab_size=400, **T5_LAYERS)
    directory = with_tokenizer(saved(hf, tmp_path), t5_tokenizer_dir)
    model, params, tokenizer = inference.load_hf(directory)
    texts = ["translate: good morrow", "a <extra_id_0> of roses"]
    got = inference.sample_text(model, params, tokenizer, texts, max_new_tokens=6,
                                temperature=0.0)
    ref = transformers.AutoTokenizer.from_pretrained(directory)
    for text, text_got in zip(texts, got, strict=True):
        ids = torch.tensor([ref(text)["input_ids"]])  # ends with </s>, as ours
        with torch.no_grad():
            out = hf.generate(ids, do_sample=False, max_new_tokens=6, eos_token_id=1,
                              pad_token_id=0, decoder_start_token_id=0)[0, 1:].tolist()
        out = out[: out.index(1)] if 1 in out else out
        assert text_got == ref.decode([i for i in out if i != 0], skip_special_tokens=False)


def test_sample_temperature_defaults_to_the_models_natural_one(t5_tokenizer_dir,
                                                               gpt2_tokenizer_dir, tmp_path,
                                                               capsys):
    """`sample` without --temperature: greedy for T5 (as transformers' generate), 1.0 for GPT."""
    from lm.__main__ import main

    t5_dir = with_tokenizer(saved(t5_model("t5", untie=False, vocab_size=400, **T5_LAYERS),
                                  tmp_path / "t5"), t5_tokenizer_dir)
    gpt_dir = with_tokenizer(random_gpt2(tmp_path / "gpt", vocab_size=401)[1],
                             gpt2_tokenizer_dir)

    def sample(directory, *flags):
        main(["lm", "sample", "--hf", directory, "--prompt", "a rose by any other name",
              "--max_new_tokens", "8", "--num_samples", "2", "--seed", "1", *flags])
        return capsys.readouterr().out

    assert sample(t5_dir) == sample(t5_dir, "--temperature", "0")
    assert sample(gpt_dir) == sample(gpt_dir, "--temperature", "1")
    assert sample(gpt_dir) != sample(gpt_dir, "--temperature", "0")
    with pytest.raises(SystemExit):
        main(["lm", "sample", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "default: 0 for T5 (encoder-decoder), 1.0 for GPT" in help_text


def test_fill_mask_equals_transformers_masked_lm(tmp_path):
    torch.manual_seed(0)
    vocab = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    hf = randomized(transformers.BertForMaskedLM(bert_config(vocab_size=len(vocab))))
    directory = with_tokenizer(saved(hf, tmp_path), minilm_dir())
    model, params, tokenizer = inference.load_hf(directory)
    text = "The capital of France is [MASK]. It is a [MASK] city."
    got = inference.fill_mask(model, params, tokenizer, text, top_k=5)
    ids = vocab(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = hf(input_ids=ids).logits[0, ids[0] == vocab.mask_token_id]
    probs, best = torch.softmax(logits, -1).topk(5)
    assert len(got) == 2
    for predictions, p_want, i_want in zip(got, probs.numpy(), best.numpy(), strict=True):
        assert [p.id for p in predictions] == i_want.tolist()
        np.testing.assert_allclose([p.prob for p in predictions], p_want, atol=1e-5)
        assert [p.token for p in predictions] == [vocab.decode([i]) for i in i_want]
