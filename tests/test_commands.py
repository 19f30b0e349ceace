"""The commands that use a trained model: sample, fill_mask, classify (through lm.__main__)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.__main__ import main
from lm.eval import predictions as predict
from lm.eval.predictions import classify_texts
from lm.generation import inference
from lm.train import saved

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_greedy_sample_is_the_argmax_of_a_full_forward_at_each_step(shakespeare_run, capsys):
    main(["lm", "sample", "--workdir", str(shakespeare_run), "--prompt", "ROMEO:",
          "--temperature", "0", "--max_new_tokens", "6"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "--- prompt 1, sample 1: 'ROMEO:'"
    run = saved.load(shakespeare_run)
    ids = run.tokenizer.encode("ROMEO:")
    for _ in range(6):  # the reference: no cache, the whole prefix every step
        logits = run.model.apply({"params": run.params}, jnp.asarray([ids]))
        ids.append(int(jnp.argmax(logits[0, -1])))
    assert printed[1] == run.tokenizer.decode(ids).splitlines()[0]


def test_sampling_flags_and_prompt_files(shakespeare_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("KING:\nQUEEN:\n")
    main(["lm", "sample", "--workdir", str(shakespeare_run), "--prompts", str(prompts),
          "--num_samples", "2", "--top_k", "5", "--top_p", "0.9", "--max_new_tokens", "4",
          "--seed", "3"])
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("---")]
    assert headers == ["--- prompt 1, sample 1: 'KING:'", "--- prompt 1, sample 2: 'KING:'",
                       "--- prompt 2, sample 1: 'QUEEN:'", "--- prompt 2, sample 2: 'QUEEN:'"]
    with pytest.raises(SystemExit, match="give the text"):
        main(["lm", "sample", "--workdir", str(shakespeare_run)])


def test_fill_mask_on_a_hugging_face_bert(tmp_path, capsys):
    import torch
    import transformers

    from lm.convert import minilm_dir
    from tests.test_convert import bert_config, randomized
    from tests.test_convert import saved as save_hf
    from tests.test_generate import with_tokenizer

    torch.manual_seed(0)
    vocab = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    hf = randomized(transformers.BertForMaskedLM(bert_config(vocab_size=len(vocab))))
    directory = with_tokenizer(save_hf(hf, tmp_path), minilm_dir())
    text = "The capital of France is [MASK]."
    main(["lm", "fill_mask", "--hf", directory, text, "--top_k", "3"])
    out = capsys.readouterr().out.splitlines()
    ids = vocab(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        best = int(hf(input_ids=ids).logits[0, ids[0] == vocab.mask_token_id][0].argmax())
    assert out[0] == text and out[1].startswith(f"  mask 1: {vocab.decode([best])!r} ")


def test_fill_mask_without_an_mlm_head_says_what_would_work():
    from lm.convert import minilm_dir

    with pytest.raises(SystemExit, match="needs a BERT with an MLM head.*BertForMaskedLM"):
        main(["lm", "fill_mask", "--hf", str(minilm_dir()), "The capital of France is [MASK]."])


def test_classify_agrees_with_predict_on_the_dev_set(tmp_path, capsys):
    workdir = tmp_path / "sst2"
    main(["lm", "train", "--config",
          f"{REPO}/experiments/finetune_glue.py:sst2,init=random,train=train[:32],epochs=1,"
          "seq_len=32", "--workdir", str(workdir), "--quiet", "--config.train.batch_size=8",
          "--config.data.eval_split=validation[:8]"])
    _, scores = predict.predict(str(workdir), "validation[:8]")
    capsys.readouterr()
    idx, preds, _ = predict.predict_split(saved.load(workdir), "validation[:8]")
    from lm.data import classification

    run = saved.load(workdir)
    records = classification.records(run.config.data, "validation[:8]")
    texts = [records[i]["texts"][0] for i in range(len(records))]
    labels = classify_texts(run, texts)
    words = ("negative", "positive")
    by_idx = dict(zip(idx.tolist(), preds.tolist()))
    assert [label for label, _ in labels] == [words[by_idx[records[i]["idx"]]]
                                              for i in range(len(records))]
    for _, probs in labels:
        assert set(probs) == set(words) and sum(probs.values()) == pytest.approx(1.0)
    main(["lm", "classify", "--workdir", str(workdir), texts[0]])
    assert capsys.readouterr().out.startswith(labels[0][0] + "\t")
    assert scores["examples"] == 8


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_classify_a_hugging_face_classifier_as_transformers_does(family, gpt2_tokenizer_dir,
                                                                  tmp_path, capsys):
    """`classify --hf` on a random HF classifier (and on its `lm convert` copy): the labels
    of config.json's id2label and transformers' own probabilities."""
    import torch
    import transformers

    from lm.cli.convert import main as convert_main
    from lm.convert import minilm_dir
    from tests.test_convert import bert_config, gpt2_config, randomized
    from tests.test_convert import saved as save_hf
    from tests.test_generate import with_tokenizer

    torch.manual_seed(0)
    id2label = {0: "negative", 1: "positive", 2: "neutral"}
    if family == "bert":
        vocab_dir = str(minilm_dir())
        vocab = transformers.AutoTokenizer.from_pretrained(vocab_dir)
        hf = transformers.BertForSequenceClassification(bert_config(
            vocab_size=len(vocab), id2label=id2label))
        texts = ["A great movie!", "It rains.\tThe streets are wet."]
    else:
        vocab_dir = gpt2_tokenizer_dir
        vocab = transformers.AutoTokenizer.from_pretrained(vocab_dir)
        hf = transformers.GPT2ForSequenceClassification(gpt2_config(
            vocab_size=len(vocab), id2label=id2label))
        texts = ["ROMEO: But soft,", "Good morrow"]
    hf = randomized(hf)
    directory = with_tokenizer(save_hf(hf, tmp_path / "hf"), vocab_dir)
    want = []
    for text in texts:
        with torch.no_grad():
            logits = hf(**vocab(*text.split("\t"), return_tensors="pt")).logits[0]
        want.append(torch.softmax(logits, -1).numpy())
    convert_main(["convert", directory, str(tmp_path / "out")])
    capsys.readouterr()
    for source in (directory, str(tmp_path / "out")):
        main(["lm", "classify", "--hf", source, *texts])
        rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == len(texts)
        for row, probs in zip(rows, want, strict=True):
            assert row[0] == id2label[int(probs.argmax())]
            shown = dict(pair.split("=") for pair in row[1].split("  "))
            assert list(shown) == list(id2label.values())
            np.testing.assert_allclose([float(v) for v in shown.values()], probs, atol=1e-3)
    got = predict.classify(*inference.load_hf(directory), texts,
                             labels=inference.hf_labels(directory))
    np.testing.assert_allclose([list(p.values()) for _, p in got], want, atol=1e-5)


def test_classify_refuses_a_language_model_run(shakespeare_run):
    with pytest.raises(SystemExit, match="needs a classification finetuning run"):
        main(["lm", "classify", "--workdir", str(shakespeare_run), "hello"])


def test_model_overrides_that_would_change_the_parameters_are_refused(shakespeare_run):
    with pytest.raises(SystemExit, match=r"\['num_layers'\] are fixed by the checkpoint"):
        main(["lm", "sample", "--workdir", str(shakespeare_run), "--prompt", "A",
              "--config.model.num_layers=3"])
    run = saved.load(shakespeare_run, overrides={"model.attention_impl": "dot"})
    assert run.model_cfg.attention_impl == "dot"
    np.testing.assert_array_equal(jax.tree.leaves(run.params)[0],
                                  jax.tree.leaves(saved.load(shakespeare_run).params)[0])
