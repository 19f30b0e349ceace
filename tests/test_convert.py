"""HF import: random-init HF PyTorch models and real MiniLM weights give HF's outputs in lm.

Run with `pytest -s tests/test_convert.py` to see the measured max differences.
"""

import json
import os
import shutil

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its idle threads spin: NOTES.md

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from safetensors.numpy import load_file, save_file

from lm.cli.convert import main as convert_main
from lm.convert import from_hf, load_converted, minilm_dir

TOL = 1e-4
VOCAB = 99
NOISE = 0.1  # added to every HF parameter, so that norms and biases are not 1 / 0


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Adds noise to every parameter (tied ones stay tied: parameters() yields them once)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * NOISE)
    return model.eval()


def saved(model: torch.nn.Module, directory) -> str:
    model.save_pretrained(directory)  # safetensors
    return str(directory)


def max_diff(name: str, got, want, valid=None) -> float:
    """Max |got - want| over valid positions (HF's padded outputs are not meaningful), printed."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    if valid is not None:
        got, want = got[np.asarray(valid, bool)], want[np.asarray(valid, bool)]
    diff = float(np.max(np.abs(got - want)))
    print(f"\n{name}: max abs diff {diff:.2e} (max |reference| {np.max(np.abs(want)):.2f})")
    return diff


def tokens(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, VOCAB, shape).astype(np.int32)


def padded_mask() -> np.ndarray:
    """Two rows of 12: the first full, the second padded after 8 tokens."""
    mask = np.ones((2, 12), np.int32)
    mask[1, 8:] = 0
    return mask


# ----------------------------------------------------------------------------- GPT-2

def gpt2_config(**kw) -> transformers.GPT2Config:
    return transformers.GPT2Config(**dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2,
                                          n_head=4, bos_token_id=1, eos_token_id=1) | kw)


def random_gpt2(directory, **kw) -> tuple[transformers.GPT2LMHeadModel, str]:
    """A random-weight HF GPT-2 (gpt2_config(**kw)), saved in `directory`."""
    torch.manual_seed(0)
    hf = randomized(transformers.GPT2LMHeadModel(gpt2_config(**kw)))
    return hf, saved(hf, directory)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return random_gpt2(tmp_path_factory.mktemp("gpt2"))


def test_gpt2_logits_match_hf(gpt2):
    hf, directory = gpt2
    x = tokens((2, 16))
    want = hf(torch.tensor(x, dtype=torch.long)).logits.detach().numpy()
    model, params = from_hf(directory)
    got = model.apply({"params": params}, x)
    assert max_diff("GPT-2 LM logits", got, want) <= TOL


def test_gpt2_untied_head(tmp_path):
    hf, directory = random_gpt2(tmp_path, tie_word_embeddings=False)
    x = tokens((2, 16))
    want = hf(torch.tensor(x, dtype=torch.long)).logits.detach().numpy()
    model, params = from_hf(directory)
    assert not model.cfg.tie_embeddings
    assert max_diff("GPT-2 untied LM logits", model.apply({"params": params}, x), want) <= TOL


# ----------------------------------------------------------------------------- BERT

def bert_config(**kw) -> transformers.BertConfig:
    return transformers.BertConfig(**dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=37,
                                          max_position_embeddings=64) | kw)


@pytest.fixture(scope="module")
def bert_pretraining(tmp_path_factory):
    torch.manual_seed(0)
    hf = randomized(transformers.BertForPreTraining(bert_config()))
    return hf, saved(hf, tmp_path_factory.mktemp("bert"))


def bert_inputs():
    mask = padded_mask()
    type_ids = np.zeros_like(mask)
    type_ids[:, 5:] = 1  # a second segment, as NSP pairs have
    return tokens(mask.shape) * mask, type_ids * mask, mask


def run_hf_bert(hf, x, type_ids, mask):
    as_long = lambda a: torch.tensor(a, dtype=torch.long)
    return hf(input_ids=as_long(x), token_type_ids=as_long(type_ids), attention_mask=as_long(mask))


def run_lm_bert(directory, x, type_ids, mask, **overrides):
    model, params = from_hf(directory, **overrides)
    return model.apply({"params": params}, x, token_type_ids=type_ids, input_mask=mask)


def test_bert_pretraining_heads_match_hf(bert_pretraining):
    hf, directory = bert_pretraining
    x, type_ids, mask = bert_inputs()
    want = run_hf_bert(hf, x, type_ids, mask)
    got = run_lm_bert(directory, x, type_ids, mask)
    mlm = want.prediction_logits.detach().numpy()
    assert max_diff("BERT MLM logits", got["mlm_logits"], mlm, valid=mask) <= TOL
    nsp = want.seq_relationship_logits.detach().numpy()
    assert max_diff("BERT NSP logits", got["nsp_logits"], nsp) <= TOL


def test_bert_model_hidden_states_match_hf(tmp_path):
    torch.manual_seed(0)
    hf = randomized(transformers.BertModel(bert_config()))
    x, type_ids, mask = bert_inputs()
    want = run_hf_bert(hf, x, type_ids, mask)
    got = run_lm_bert(saved(hf, tmp_path), x, type_ids, mask)
    hidden = want.last_hidden_state.detach().numpy()
    assert max_diff("BertModel hidden", got["hidden"], hidden, valid=mask) <= TOL
    pooled = want.pooler_output.detach().numpy()
    assert max_diff("BertModel pooled", got["pooled"], pooled) <= TOL


def test_bert_masked_lm_matches_hf_and_gets_a_fresh_pooler(tmp_path):
    torch.manual_seed(0)
    hf = randomized(transformers.BertForMaskedLM(bert_config(initializer_range=0.05)))
    x, type_ids, mask = bert_inputs()
    want = run_hf_bert(hf, x, type_ids, mask).logits.detach().numpy()
    directory = saved(hf, tmp_path)
    model, params = from_hf(directory)
    assert model.cfg.heads == ("mlm",)
    got = run_lm_bert(directory, x, type_ids, mask)
    assert max_diff("BertForMaskedLM logits", got["mlm_logits"], want, valid=mask) <= TOL
    # HF's BertForMaskedLM has no pooler: lm's starts afresh, N(0, initializer_range) and 0,
    # as HF's own classifier would when loaded from this checkpoint.
    pooler = params["pooler"]
    assert abs(float(np.std(pooler["kernel"])) - 0.05) < 0.01
    assert not np.any(pooler["bias"])


def test_bert_classifier_logits_match_hf(tmp_path):
    torch.manual_seed(0)
    hf = randomized(transformers.BertForSequenceClassification(bert_config(num_labels=3)))
    x, type_ids, mask = bert_inputs()
    want = run_hf_bert(hf, x, type_ids, mask).logits.detach().numpy()
    got = run_lm_bert(saved(hf, tmp_path), x, type_ids, mask)
    assert got["logits"].shape == (2, 3)
    assert max_diff("BERT class logits", got["logits"], want) <= TOL


def test_minilm_real_weights_match_hf():
    from tokenizers import Tokenizer

    directory = minilm_dir()
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest, not fixed 128
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "A man is playing a guitar on stage.",
        "Sentence embeddings map text to dense vectors.",
        "Hello!",
    ]
    encodings = tokenizer.encode_batch(sentences)
    x, type_ids, mask = (np.array([getattr(e, k) for e in encodings], np.int32)
                         for k in ("ids", "type_ids", "attention_mask"))
    assert (mask == 0).any()  # the batch really is padded
    hf = transformers.BertModel.from_pretrained(directory).eval()
    want = run_hf_bert(hf, x, type_ids, mask).last_hidden_state.detach().numpy()
    got = run_lm_bert(directory, x, type_ids, mask)
    assert max_diff("all-MiniLM-L6-v2 hidden", got["hidden"], want, valid=mask) <= TOL


# ----------------------------------------------------------------------------- T5

T5_FLAVOURS = {
    # original T5: relu, tied embeddings, decoder output scaled by d_model**-0.5
    "t5": dict(feed_forward_proj="relu"),
    # v1.1: gated-gelu, untied LM head (its own lm_head.weight)
    "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def t5_model(flavour: str, untie: bool, **kw) -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = transformers.T5Config(**dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=37,
                                          num_layers=2, num_decoder_layers=3, num_heads=4)
                                   | T5_FLAVOURS[flavour] | kw)
    hf = transformers.T5ForConditionalGeneration(config)
    if untie:  # transformers 5 always ties the LM head to `shared`; v1.1 checkpoints do not
        hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.lm_head.weight) * 0.05)
    return randomized(hf)


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    hf = t5_model("t5_v1_1", untie=True)
    return hf, saved(hf, tmp_path_factory.mktemp("t5"))


def t5_logits_hf(hf, enc, dec, mask):
    as_long = lambda a: torch.tensor(a, dtype=torch.long)
    out = hf(input_ids=as_long(enc), attention_mask=as_long(mask), decoder_input_ids=as_long(dec))
    return out.logits.detach().numpy()


def t5_logits_lm(directory, enc, dec, mask, **overrides):
    model, params = from_hf(directory, **overrides)
    return model.apply({"params": params}, enc, dec, encoder_mask=mask)


# (flavour, untie): "t5_v1_1" untie=False is how transformers 5 saves v1.1 configs: one
# embedding but no output scaling.
@pytest.mark.parametrize("flavour,untie", [("t5", False), ("t5_v1_1", True), ("t5_v1_1", False)])
def test_t5_logits_match_hf(flavour, untie, tmp_path):
    hf = t5_model(flavour, untie)
    mask = padded_mask()
    enc, dec = tokens(mask.shape) * mask, tokens((2, 7), seed=1)
    want = t5_logits_hf(hf, enc, dec, mask)
    got = t5_logits_lm(saved(hf, tmp_path), enc, dec, mask)
    assert max_diff(f"T5 {flavour} (untie={untie}) LM logits", got, want) <= TOL


# ----------------------------------------------------------------------------- scan, CLI

def test_scan_and_unrolled_imports_agree(t5):
    # The parity tests above import with scan_layers=True (the default); T5 has both stacks.
    mask = padded_mask()
    enc, dec = tokens(mask.shape) * mask, tokens((2, 7), seed=1)
    got = t5_logits_lm(t5[1], enc, dec, mask, scan_layers=True)
    want = t5_logits_lm(t5[1], enc, dec, mask, scan_layers=False)
    assert max_diff("T5 scan vs unrolled", got, want) <= 1e-5


def test_cli_writes_a_loadable_checkpoint(gpt2, tmp_path):
    convert_main(["convert", gpt2[1], str(tmp_path / "out"), "--unrolled"])
    model, params = load_converted(tmp_path / "out")
    want_model, want = from_hf(gpt2[1], scan_layers=False)
    assert model.cfg == want_model.cfg
    assert "layers_1" in params["decoder"]
    jax.tree.map(np.testing.assert_array_equal, params, want)
    # Read in the other layer layout (scanned), as from_hf would import it.
    model, params = load_converted(tmp_path / "out", scan_layers=True)
    jax.tree.map(np.testing.assert_array_equal, params, from_hf(gpt2[1])[1])


def test_a_converted_directory_samples_as_its_hf_directory(gpt2_tokenizer_dir, tmp_path, capsys):
    """`lm convert HF OUT` copies the tokenizer, so `sample --hf OUT` reads OUT as `--hf HF`."""
    from lm.__main__ import main
    from tests.test_generate import with_tokenizer

    _, directory = random_gpt2(tmp_path / "hf", vocab_size=401)
    directory = with_tokenizer(directory, gpt2_tokenizer_dir)
    convert_main(["convert", directory, str(tmp_path / "out")])
    assert {"tokenizer.json", "hf_config.json"} <= set(os.listdir(tmp_path / "out"))
    assert "tokenizer: tokenizer.json" in capsys.readouterr().out
    texts = []
    for source in (directory, str(tmp_path / "out")):
        main(["lm", "sample", "--hf", source, "--prompt", "ROMEO: But soft,", "--temperature",
              "0", "--max_new_tokens", "8"])
        texts.append(capsys.readouterr().out.split("\n", 1)[1])
    assert texts[0] == texts[1] and len(texts[0]) > len("ROMEO: But soft,\n")


# ----------------------------------------------------------------------------- errors

def copy_with_config(directory, tmp_path, **changes) -> str:
    """A copy of an HF checkpoint directory with config.json fields changed."""
    out = shutil.copytree(directory, tmp_path / "copy")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | changes))
    return str(out)


@pytest.mark.parametrize("checkpoint,field,value", [
    ("bert_pretraining", "position_embedding_type", "relative_key"),
    ("bert_pretraining", "hidden_act", "mish"),
    ("bert_pretraining", "is_decoder", True),
    ("bert_pretraining", "add_cross_attention", True),
    ("gpt2", "activation_function", "quick_gelu"),
    ("gpt2", "scale_attn_by_inverse_layer_idx", True),
    ("t5", "feed_forward_proj", "gated-mish"),
])
def test_unsupported_config_field_is_a_clear_error(checkpoint, field, value, request, tmp_path):
    checkpoint_dir = request.getfixturevalue(checkpoint)[1]
    directory = copy_with_config(checkpoint_dir, tmp_path, **{field: value})
    with pytest.raises(ValueError, match=f"{field}={value!r} is not supported.*supported: "):
        from_hf(directory)


def test_unsupported_architecture_is_a_clear_error(gpt2, tmp_path):
    directory = copy_with_config(gpt2[1], tmp_path, architectures=["GPT2ForTokenClassification"])
    with pytest.raises(ValueError, match="GPT2ForTokenClassification.*GPT2LMHeadModel"):
        from_hf(directory)


def test_missing_and_unexpected_tensors_are_listed(gpt2, tmp_path):
    directory = copy_with_config(gpt2[1], tmp_path)
    tensors = load_file(f"{directory}/model.safetensors")
    tensors["transformer.h.0.attn.extra.weight"] = tensors.pop("transformer.h.1.ln_2.bias")
    save_file(tensors, f"{directory}/model.safetensors")
    with pytest.raises(ValueError, match=r"missing \(1\): \['h.1.ln_2.bias'\]") as error:
        from_hf(directory)
    assert "unexpected (1): ['h.0.attn.extra.weight']" in str(error.value)


def test_legacy_layernorm_names_and_bfloat16_weights_load(bert_pretraining, tmp_path):
    """Old TF-converted BERTs name LayerNorm params gamma/beta; hub weights may be bfloat16."""
    directory = copy_with_config(bert_pretraining[1], tmp_path)
    tensors = safetensors.torch.load_file(f"{directory}/model.safetensors")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                        "LayerNorm.beta"):
              v.to(torch.bfloat16) for k, v in tensors.items()}
    assert "bert.embeddings.LayerNorm.gamma" in legacy
    safetensors.torch.save_file(legacy, f"{directory}/model.safetensors")
    _, got = from_hf(directory)
    _, want = from_hf(bert_pretraining[1])
    to_bf16 = lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, to_bf16(b)), got, want)


def test_missing_directory_or_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_hf(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_hf(tmp_path)
    save_file({}, f"{tmp_path}/model.safetensors")
    with pytest.raises(ValueError, match="config.json has no field 'n_embd'"):
        from_hf(tmp_path)


@pytest.mark.parametrize("where", ["../secret/model.safetensors", "ABSOLUTE", "link"])
def test_an_index_naming_shards_outside_the_directory_is_refused(where, tmp_path):
    """model.safetensors.index.json is data from the download: its shard paths may not leave
    the checkpoint directory (`..`, an absolute path, a symlink out)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    save_file({"wte.weight": np.ones((4, 2), np.float32)}, f"{secret}/model.safetensors")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gpt2_config().to_json_file(model_dir / "config.json")
    shard = {"ABSOLUTE": str(secret / "model.safetensors"), "link": "shard.safetensors"}.get(
        where, where)
    if where == "link":
        (model_dir / "shard.safetensors").symlink_to(secret / "model.safetensors")
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"wte.weight": shard}}))
    with pytest.raises(ValueError, match=r"outside .*only files inside the checkpoint"):
        from_hf(model_dir)
    with pytest.raises(ValueError, match=r"outside"):  # a UserError: one line, exit 1
        convert_main(["convert", str(model_dir), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
