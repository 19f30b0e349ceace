"""The bad-input battery: every setting is checked before a step runs.

Each case runs the real command line (`python -m lm ...` through lm.__main__, in-process)
and asserts: exit status 1 or 2, ONE line of message naming the setting (argparse's usage
lines and the `LM_DEBUG=1` hint aside), no traceback, and a workdir left as it was (a new
one is not created; an existing run's files are unchanged). A few run as real subprocesses
too, where a traceback could only show there (an experiment file that fails to import).

Placeholders in a case's argv: WORK (a fresh workdir), RUN (a finished tiny GPT run), and
the names of the FILES built below.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from lm.__main__ import main

REPO = pathlib.Path(__file__).resolve().parent.parent
GPT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"
TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
        "--config.model.num_heads=2", "--config.data.seq_len=16", "--config.train.batch_size=4",
        "--config.train.steps=2", "--config.train.eval_steps=1", "--config.train.eval_every=0",
        "--config.train.eval_at_start=False", "--quiet"]
TEXT_GPT = [*TINY, "--config.data.source=text", "--config.data.files.validation=",
            "--config.data.char_split=0.9"]
GLUE_RTE = ["--config", "experiments/finetune_glue.py:rte,init=random",
            "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
            "--config.model.num_heads=2", "--config.train.batch_size=4",
            "--config.train.steps=2", "--quiet"]
STSB = [*GLUE_RTE[:1], "experiments/finetune_glue.py:stsb,init=random", *GLUE_RTE[2:]]

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def _files(root: pathlib.Path, gpt2_tokenizer_dir: str) -> dict[str, str]:
    """The bad (and good) inputs the cases name, written once into `root`."""
    files = {}

    def put(name: str, content: str | bytes, suffix: str = "") -> str:
        path = root / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        files[name] = str(path)
        return str(path)

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40
    put("LATIN1", "Caf\xe9 cr\xe8me, na\xefve fa\xe7ade.\n".encode("latin-1") * 200, ".txt")
    put("BINARY", bytes(range(256)) * 64, ".bin")
    put("TEXT", text, ".txt")
    put("NON_UTF8", b"ROMEO: caf\xe9\n", ".txt")
    put("SYNTAX", "def get_config(arg=None)\n    return 1\n", ".py")
    put("RAISES", "raise RuntimeError('boom at import')\n", ".py")
    put("DICT", "def get_config(arg=None):\n    return {'train': {'lr': 1.0}}\n", ".py")
    put("NO_GET_CONFIG", "X = 1\n", ".py")
    put("NO_CHARS", json.dumps({"vocab": ["a", "b"]}), ".json")
    put("BAD_TOKJSON", '{"version": "1.0", "model": {', ".json")
    rows = [f"{i}\tA man.\tA person.\t{'entailment' if i % 2 else 'not_entailment'}\n"
            for i in range(8)]
    for name, train in [("GLUE_MAYBE", RTE_HEADER + "".join(rows) + "8\tA.\tB.\tmaybe\n"),
                        ("GLUE_NO_LABEL", "index\tsentence1\tsentence2\n" + "".join(
                            r.rsplit("\t", 1)[0] + "\n" for r in rows))]:
        put(f"{name}/train", train, ".tsv")
        put(f"{name}/dev", RTE_HEADER + "".join(rows), ".tsv")
        files[name] = str(root / name)
    stsb = "\t".join(["index", "genre", "filename", "year", "old_index", "source1", "source2",
                      "sentence1", "sentence2", "score"]) + "\n"
    stsb_rows = "".join(f"{i}\tg\tf\t2012\t{i}\tn\tn\tA plane.\tA jet.\t{i % 5}.0\n"
                        for i in range(8))
    put("STSB_BAD/train", stsb + stsb_rows + "8\tg\tf\t2012\t8\tn\tn\tA.\tB.\tfive\n", ".tsv")
    put("STSB_BAD/dev", stsb + stsb_rows, ".tsv")
    files["STSB_BAD"] = str(root / "STSB_BAD")
    # A Hugging Face GPT-2 directory whose config.json is not JSON, and one whose weights
    # were cut short.
    bad_config = root / "HF_BAD_CONFIG"
    shutil.copytree(gpt2_tokenizer_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    files["HF_BAD_CONFIG"] = str(bad_config)
    files["HF_TRUNCATED"] = str(_truncated_gpt2(root / "HF_TRUNCATED", gpt2_tokenizer_dir))
    files["FILE"] = files["TEXT"]
    files["T5_SPM"] = str(_spm_without_underscores(root))
    files["NO_SUCH_VOCAB"] = str(root / "no_such_vocab.json")
    return files


def _spm_without_underscores(root: pathlib.Path) -> pathlib.Path:
    """A T5-style sentencepiece model of plain words: '_' (in 'not_entailment') is unknown."""
    import sentencepiece as spm

    words = ["the man is a person and the plane is a jet that takes off"] * 200
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words), model_prefix=str(root / "t5_spm"), vocab_size=24,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
        hard_vocab_limit=False)
    return root / "t5_spm.model"


def _truncated_gpt2(directory: pathlib.Path, tokenizer_dir: str) -> pathlib.Path:
    import transformers

    shutil.copytree(tokenizer_dir, directory)
    config = transformers.GPT2Config(vocab_size=401, n_positions=32, n_embd=32, n_layer=1,
                                     n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return directory


@pytest.fixture(scope="module")
def files(tmp_path_factory, gpt2_tokenizer_dir) -> dict[str, str]:
    return _files(tmp_path_factory.mktemp("bad_inputs"), gpt2_tokenizer_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    """A finished 2-step char GPT run: the reading commands' target."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    main(["lm", "train", "--config", GPT, "--workdir", str(workdir), *TINY])
    return str(workdir)


def _train(*extra: str, config: str = GPT, tiny=TINY) -> list[str]:
    return ["train", "--config", config, "--workdir", "WORK", *tiny, *extra]


# (id, argv after `lm`, a regex the one line must match). Grouped as the issue lists them.
CASES = [
    # ---- wrongly accepted before
    ("batch_size=0", _train("--config.train.batch_size=0"), r"train\.batch_size=0.*>= 1"),
    ("lr<0", _train("--config.train.lr=-0.001"), r"train\.lr=-0\.001.*>= 0"),
    ("warmup_steps<0", _train("--config.train.warmup_steps=-3"),
     r"train\.warmup_steps=-3.*>= 0"),
    ("dropout_rate=1.5", _train("--config.model.dropout_rate=1.5"),
     r"dropout_rate=1\.5.*\[0, 1\)"),
    ("eval_every=-1", _train("--config.train.eval_every=-1"), r"train\.eval_every=-1.*>= 0"),
    ("best_metric=eval/bogus", _train("--config.train.best_metric=eval/bogus"),
     r"train\.best_metric='eval/bogus'.*eval/loss"),
    ("glue label 'maybe'", ["train", *GLUE_RTE, "--workdir", "WORK",
                            "--config.data.source=tsv", "--config.data.data_dir=GLUE_MAYBE"],
     r"train\.tsv.*'maybe'"),
    ("glue label column missing", ["train", *GLUE_RTE, "--workdir", "WORK",
                                   "--config.data.source=tsv",
                                   "--config.data.data_dir=GLUE_NO_LABEL"],
     r"train\.tsv.*label"),
    ("latin-1 text", _train("--config.data.files.train=LATIN1", tiny=TEXT_GPT),
     r"\.txt.*(not UTF-8|encoding)"),
    ("binary file as text", _train("--config.data.files.train=BINARY", tiny=TEXT_GPT),
     r"\.bin.*(not UTF-8|binary|text)"),
    ("sample: tokenizer vocab mismatch", ["sample", "--workdir", "RUN", "--prompt", "a",
                                          "--config.data.tokenizer.path=BAD_VOCAB"],
     r"vocab"),
    # ---- unclear before
    ("steps=-5", _train("--config.train.steps=-5"), r"train\.steps=-5"),
    ("steps=0", _train("--config.train.steps=0"), r"train\.steps=0"),
    ("grad_accum_steps=0", _train("--config.train.grad_accum_steps=0"),
     r"train\.grad_accum_steps=0.*>= 1"),
    ("get_config returns a dict", ["train", "--config", "DICT", "--workdir", "WORK"],
     r"get_config.*returned a dict.*ConfigDict"),
    ("char vocab without 'chars'", _train("--config.data.tokenizer.path=NO_CHARS"),
     r"no_chars\.json|NO_CHARS.*chars"),
    ("bad tokenizer.json", _train("--config.data.tokenizer.kind=hf",
                                  "--config.data.tokenizer.path=BAD_TOKJSON"),
     r"bad_tokjson\.json|BAD_TOKJSON"),
    ("--num_samples 0", ["sample", "--workdir", "RUN", "--prompt", "a", "--num_samples", "0"],
     r"--num_samples"),
    ("--step foo", ["sample", "--workdir", "RUN", "--prompt", "a", "--step", "foo"],
     r"--step 'foo'"),
    ("--hf config.json not JSON", ["sample", "--hf", "HF_BAD_CONFIG", "--prompt", "a"],
     r"config\.json"),
    ("plan --devices 0", ["plan", "--config", GPT, "--devices", "0"], r"--devices"),
    ("plan --devices -4", ["plan", "--config", GPT, "--devices", "-4"], r"--devices"),
    # ---- after a traceback before
    ("experiment syntax error", _train(config="SYNTAX"), r"SYNTAX\.py, line 1: expected ':'"),
    ("experiment raises at import", _train(config="RAISES"),
     r"RAISES\.py failed: RuntimeError: boom at import"),
    ("unknown split", _train("--config.data.eval_split=nosuch"),
     r"data\.eval_split='nosuch'.*unknown split"),
    ("unparsable split", _train("--config.data.train_split=train[:"),
     r"data\.train_split='train\[:'"),
    ("missing char-vocab file", _train("--config.data.tokenizer.path=NO_SUCH_VOCAB"),
     r"no_such_vocab\.json"),
    ("text file as sentencepiece model", _train("--config.data.tokenizer.kind=sentencepiece",
                                                "--config.data.tokenizer.path=TEXT"),
     r"text\.txt"),
    ("temperature -1", ["sample", "--workdir", "RUN", "--prompt", "a", "--temperature", "-1"],
     r"--temperature"),
    ("top_p 1.5", ["sample", "--workdir", "RUN", "--prompt", "a", "--top_p", "1.5"],
     r"--top_p"),
    ("top_p 0", ["sample", "--workdir", "RUN", "--prompt", "a", "--top_p", "0"], r"--top_p"),
    ("top_k -3", ["sample", "--workdir", "RUN", "--prompt", "a", "--top_k", "-3"], r"--top_k"),
    ("truncated safetensors: sample", ["sample", "--hf", "HF_TRUNCATED", "--prompt", "a"],
     r"model\.safetensors"),
    ("truncated safetensors: convert", ["convert", "HF_TRUNCATED", "WORK"],
     r"model\.safetensors"),
    ("convert to a file", ["convert", "HF_TRUNCATED", "FILE"], r"text\.txt"),
    ("non-UTF-8 --prompts", ["sample", "--workdir", "RUN", "--prompts", "NON_UTF8"],
     r"non_utf8\.txt.*UTF-8"),
    ("non-UTF-8 --text", ["eval", "--workdir", "RUN", "--text", "NON_UTF8"],
     r"non_utf8\.txt.*UTF-8"),
    ("non-numeric STS-B score", ["train", *STSB, "--workdir", "WORK",
                                 "--config.data.source=tsv",
                                 "--config.data.data_dir=STSB_BAD"], r"train\.tsv.*'five'"),
    # ---- found as a newcomer
    ("data prepare glue --from /nonexistent", ["data", "prepare", "glue", "--from",
                                               "/nonexistent"], r"/nonexistent"),
    ("T5 label word the tokenizer cannot write",
     ["train", "--config", "experiments/finetune_t5.py:rte,init=random", "--workdir", "WORK",
      "--config.data.tokenizer.path=T5_SPM", "--quiet"], r"label words \['not_entailment'\]"),
    # ---- clear already: kept so
    ("unknown config key", _train("--config.train.lrr=0.1"), r"train\.lrr"),
    ("value of the wrong type", _train("--config.train.steps=abc"), r"train\.steps.*abc"),
    ("a block set to a value", _train("--config.train=1"), r"--config\.train is a block"),
    ("an override without a value", _train("--config.train.lr"), r"--config\.train\.lr"),
    ("unknown experiment arg", _train(config=GPT.replace(":cpu", ":nosuch")), r"nosuch"),
    ("missing experiment file", _train(config="/nonexistent/exp.py"), r"/nonexistent/exp\.py"),
    ("experiment without get_config", _train(config="NO_GET_CONFIG"), r"get_config"),
    ("get_sweep missing", ["sweep", "--config", GPT, "--workdir", "WORK"], r"get_sweep"),
    ("get_study missing", ["study", "--config", GPT, "--workdir", "WORK"], r"get_study"),
    ("unknown command", ["bogus"], r"unknown command 'bogus'; choose one of train, "),
    ("train without --workdir", ["train", "--config", GPT], r"--workdir"),
    ("seq_len above max_len", _train("--config.data.seq_len=4096"), r"seq_len.*max_len"),
    ("model vocabulary smaller than the tokenizer's", _train("--config.model.vocab_size=8"),
     r"vocab"),
    ("num_heads not dividing d_model", _train("--config.model.num_heads=3"), r"num_heads"),
    ("unknown activation", _train("--config.model.activation=bogus"), r"activation"),
    ("unknown objective", _train("--config.data.objective=bogus"), r"objective.*bogus"),
    ("unknown data source", _train("--config.data.source=bogus"), r"source.*bogus"),
    ("unknown schedule", _train("--config.train.schedule=bogus"), r"schedule.*bogus"),
    ("mesh larger than the devices", _train("--config.mesh.fsdp=2"), r"mesh|device"),
    ("missing text file", _train("--config.data.files.train=/nonexistent/t.txt",
                                 tiny=TEXT_GPT), r"/nonexistent/t\.txt"),
    ("resume with another model shape", ["train", "--config", GPT, "--workdir", "RUN", *TINY,
                                         "--config.model.d_model=64"],
     r"another shape .*d_model|another shape .*checkpoint \(32,\) vs model \(64,\)"),
    ("eval: no such workdir", ["eval", "--workdir", "/nonexistent/run"], r"/nonexistent/run"),
    ("sample: no such --hf directory", ["sample", "--hf", "/nonexistent/hf", "--prompt", "a"],
     r"/nonexistent/hf"),
    ("sample: no such checkpoint step", ["sample", "--workdir", "RUN", "--prompt", "a",
                                         "--step", "999"], r"999"),
    ("eval: unknown split", ["eval", "--workdir", "RUN", "--split", "nosuch"], r"nosuch"),
    ("fill_mask on a GPT run", ["fill_mask", "--workdir", "RUN", "--text", "a [MASK]"],
     r"mask|bert|gpt"),
    ("classify on a language model", ["classify", "--workdir", "RUN", "--text", "a"],
     r"classif|label|num_labels"),
    ("convert: no such source", ["convert", "/nonexistent/hf", "WORK"], r"/nonexistent/hf"),
    ("data prepare: unknown dataset", ["data", "prepare", "bogus"], r"bogus"),
]


def _expand(argv: list[str], files: dict[str, str], run: str, work: pathlib.Path) -> list[str]:
    names = {"WORK": str(work), "RUN": run, **files}
    pattern = re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True)))
    return [pattern.sub(lambda m: names[m.group(0)], a) for a in argv]


def _snapshot(path: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


def _one_line(status, err: str) -> str:
    """The message of a failed command: sys.exit(text) or argparse's stderr."""
    text = status if isinstance(status, str) else err
    lines = [line for line in text.splitlines() if line.strip() and "LM_DEBUG" not in line
             and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, message, files, run, tmp_path, capsys):
    files = {**files, "BAD_VOCAB": files.get("BAD_VOCAB") or _other_vocab(tmp_path)}
    work = tmp_path / "work"
    before = _snapshot(pathlib.Path(run))
    with pytest.raises(SystemExit) as exit_:
        main(["lm", *_expand(argv, files, run, work)])
    status, err = exit_.value.code, capsys.readouterr().err
    assert status in (1, 2) or isinstance(status, str), status  # sys.exit(text) exits 1
    line = _one_line(status, err)
    assert "Traceback" not in err and line.startswith(("error: ", "python -m lm")), line
    assert re.search(message, line, re.IGNORECASE), line
    assert not work.exists() or name.startswith("convert")
    assert _snapshot(pathlib.Path(run)) == before


def _other_vocab(root: pathlib.Path) -> str:
    """A char vocabulary of 300 characters: not the 2-step run's 68."""
    path = root / "other_vocab.json"
    path.write_text(json.dumps({"chars": [chr(0x100 + i) for i in range(300)]}))
    return str(path)


@pytest.mark.parametrize("name", ["SYNTAX", "RAISES"])
def test_a_broken_experiment_file_is_one_line_in_a_real_process(name, files, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lm", "train", "--config", files[name],
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len([ln for ln in done.stderr.splitlines() if "LM_DEBUG" not in ln]) == 1
    assert not (tmp_path / "w").exists()


def test_synthetic_mlm_batches_time_the_mlm_loss(tmp_path):
    """`lm bench` on bert_mlm_nsp with synthetic data: the MLM slots are real (weight 1), so
    the timed step computes the MLM loss and eval/mlm_loss is not 0."""
    from lm import config as config_lib
    from lm.train.loop import train

    config = config_lib.load(f"{REPO}/experiments/bert_mlm_nsp.py:tiny", {
        "data.source": "synthetic", "data.seq_len": "32", "model.num_layers": "1",
        "train.batch_size": "4", "train.steps": "1", "train.eval_steps": "1",
        "train.eval_every": "0", "train.checkpoint_every": "0", "train.eval_at_start": "False"})
    result = train(config, str(tmp_path / "run"), quiet=True)
    assert result["eval/mlm_loss"] > 1.0 and result["train/mlm_loss"] > 1.0, result
