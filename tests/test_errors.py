"""Bad input: a short message that names the problem and the fix, a non-zero exit, and a
workdir left as it was (a new one is not created; an existing run's files are unchanged).

Each case runs the real command (`python -m lm ...`, in-process through lm.__main__).
"""

import pathlib
import re
import shutil

import pytest

from lm.__main__ import main
from lm.errors import UserError
from lm.train import checkpoint, loop

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"
TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
        "--config.model.num_heads=2", "--config.data.seq_len=16", "--config.train.batch_size=4",
        "--config.train.steps=4", "--config.train.eval_steps=1", "--quiet"]


def _run(*argv: str) -> str:
    """The message of a command that must fail (SystemExit with a message, not a traceback)."""
    with pytest.raises(SystemExit) as exit_:
        main(["lm", *argv])
    message = str(exit_.value.code)
    assert exit_.value.code not in (0, None) and message.startswith("error: "), message
    assert "Traceback" not in message and len(message.splitlines()) <= 16, message
    return message


def _snapshot(path: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("finished")
    main(["lm", "train", "--config", EXPERIMENT, "--workdir", str(workdir), *TINY])
    return workdir


@pytest.fixture
def empty_file(tmp_path) -> str:
    (tmp_path / "empty.txt").write_text("")
    return str(tmp_path / "empty.txt")


# (name, argv after `lm`, a regex the message must match). WORKDIR is a fresh path.
FRESH_CASES = [
    ("unknown key", ["train", "--config.train.lrr=1"], r"unknown config key 'train.lrr'.*train.lr"),
    ("wrong type", ["train", "--config.train.steps=many"],
     r"--config.train.steps='many': expected an integer"),
    ("a block set to a value", ["train", "--config.train=1"],
     r"--config.train is a block, not a value"),
    ("missing experiment file", ["train", "--config", "experiments/nope.py"],
     r"experiment file 'experiments/nope.py' does not exist"),
    ("missing dataset", ["train", "--config.data.name=no_such_dataset"],
     r"'no_such_dataset' is not prepared .*TFDS_DATA_DIR"),
    ("empty training file", ["train", "--config.data.source=text",
                             "--config.data.files.train=EMPTY"], r"empty.txt'\] hold no text"),
    ("sequence longer than the positions", ["train", "--config.data.seq_len=128"],
     r"data.seq_len=128 is longer than .* model.max_len=64: lower data.seq_len"),
    ("tokenizer larger than the model's vocabulary", ["train", "--config.model.vocab_size=60"],
     r"tokenizer has 68 ids but model.vocab_size=60: set --config.model.vocab_size=68"),
    ("batch not a multiple of the micro-batches", ["train", "--config.train.grad_accum_steps=3"],
     r"train.batch_size=4 does not split over the batch axes .*grad_accum_steps=3 × "
     r"train.parallel_micro_batches=2\): use a multiple of 6"),
    ("a mesh the devices do not divide", ["train", "--config.mesh.data=2"],
     r"mesh.data=2 .* needs a multiple of 2 devices, but there are 1"),
    ("unknown objective", ["train", "--config.data.objective=nope"],
     r"data.objective='nope'; known:"),
]


@pytest.mark.parametrize("name, argv, message", FRESH_CASES, ids=[c[0] for c in FRESH_CASES])
def test_bad_input_to_a_fresh_run(name, argv, message, tmp_path, empty_file):
    workdir = tmp_path / "run"
    command, *rest = argv
    if "--config" not in rest:
        rest = ["--config", EXPERIMENT, *rest]
    rest = [a.replace("EMPTY", empty_file) for a in rest]
    text = _run(command, *rest, "--workdir", str(workdir),
                *[a for a in TINY if a.split("=")[0] not in " ".join(rest)])
    assert re.search(message, text), text
    assert not workdir.exists()


def test_unwritable_workdir_names_it():
    text = _run("train", "--config", EXPERIMENT, "--workdir", "/proc/x", *TINY)
    assert "cannot create the workdir /proc/x" in text and "choose a directory" in text


def test_another_model_shape_leaves_the_run_as_it_was(finished_run):
    before = _snapshot(finished_run)
    text = _run("train", "--config", EXPERIMENT, "--workdir", str(finished_run), *TINY,
                "--config.model.d_ff=96")
    assert "holds a model of another shape" in text and "mlp.wi.kernel" in text
    assert _snapshot(finished_run) == before


def test_predict_on_a_language_model_run_says_what_it_is_for(finished_run):
    text = _run("predict", "--workdir", str(finished_run))
    assert "is a 'random_windows' run" in text and "classification" in text


def test_a_full_disk_stops_at_the_save_and_says_how_much_is_needed(tmp_path, monkeypatch):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    text = _run("train", "--config", EXPERIMENT, "--workdir", str(tmp_path / "run"), *TINY,
                "--config.train.checkpoint_every=2")
    assert "not enough disk space to save a checkpoint" in text and "1.00 kB is free" in text
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert max(int(r.split('"step": ')[1].split(",")[0].rstrip("}")) for r in records) == 2


def test_a_diverged_run_names_the_step_loss_and_the_checkpoint(tmp_path):
    text = _run("train", "--config", EXPERIMENT, "--workdir", str(tmp_path / "run"), *TINY,
                "--config.train.lr=1e6", "--config.train.checkpoint_every=1")
    assert "non-finite training metrics at step" in text and "train/loss" in text
    assert "The last good checkpoint is step" in text or "No checkpoint was saved" in text


def test_a_finite_loss_with_an_overflowing_perplexity_is_not_a_failure():
    class NoCheckpoints:
        directory = "checkpoints"

        def wait(self):
            pass

        def latest_step(self):
            return None

    values = {"train/loss": 86.2, "train/perplexity": float("inf"), "train/grad_norm": 1.0}
    loop.check_finite(7, values, NoCheckpoints())  # no error: exp(86.2) overflows float32
    with pytest.raises(FloatingPointError, match=r"step 7: .*'train/loss': nan.*No checkpoint"):
        loop.check_finite(7, {**values, "train/loss": float("nan")}, NoCheckpoints())


class _Mesh:
    shape = {"data": 2, "fsdp": 2, "tensor": 1}


def test_a_batch_the_data_devices_cannot_divide_is_refused_before_anything_runs():
    from lm import config as config_lib
    from lm.train import topology

    config = config_lib.base_config()
    config.train.update(batch_size=6, grad_accum_steps=1)
    with pytest.raises(UserError, match=r"train.batch_size=6 does not split over the batch "
                                        r"axes \(mesh data=2 × mesh fsdp=2\): use a multiple of 4"):
        topology.check(config, _Mesh())
    config.train.update(batch_size=16, grad_accum_steps=2, eval_batch_size=6)
    with pytest.raises(UserError, match="train.eval_batch_size=6 does not split"):
        topology.check(config, _Mesh())


def test_a_step_that_is_not_a_number_names_the_choices(finished_run):
    text = _run("sample", "--workdir", str(finished_run), "--step", "foo", "--prompt", "A")
    assert "--step 'foo': expected 'best', 'latest' or a step number" in text


# (flag, value, what the message says): checked before the model is read.
SAMPLING_CASES = [
    ("--num_samples", "0", "must be >= 1"),
    ("--max_new_tokens", "0", "must be >= 1"),
    ("--temperature", "-0.5", "must be >= 0"),
    ("--top_k", "-1", "must be >= 0"),
    ("--top_p", "0.0", r"must be in \(0, 1\]"),
    ("--top_p", "1.5", r"must be in \(0, 1\]"),
]


@pytest.mark.parametrize("flag, value, rule", SAMPLING_CASES,
                         ids=[f"{f}={v}" for f, v, _ in SAMPLING_CASES])
def test_sampling_arguments_out_of_range_name_the_flag(flag, value, rule, tmp_path):
    text = _run("sample", "--workdir", str(tmp_path / "never_read"), "--prompt", "A", flag,
                value)
    assert re.search(f"error: {flag} {value}: {rule}", text), text


def test_sample_text_checks_its_arguments_before_anything_else():
    from lm.generation.inference import sample_text

    with pytest.raises(UserError, match="--num_samples 0: must be >= 1"):
        sample_text(None, None, None, ["A"], num_samples=0)


@pytest.mark.parametrize("experiment", ["gpt_wikitext.py:tiny", "bert_mlm_nsp.py:tiny"])
def test_wikitext_not_prepared_says_how_to_prepare_it(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    text = _run("train", "--config", f"{REPO}/experiments/{experiment}", "--workdir",
                str(tmp_path / "run"))
    assert "python -m lm data prepare wikitext-2" in text and "$LM_DATA_DIR" in text, text
    assert f"{tmp_path / 'data'}" in text and not (tmp_path / "run").exists()


def test_files_of_no_known_dataset_name_the_setting_and_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    text = _run("train", "--config", EXPERIMENT, "--workdir", str(tmp_path / "run"), *TINY,
                "--config.data.source=text", "--config.data.files.train=mine/*.txt")
    assert "data.files.train='mine/*.txt'" in text and "$LM_DATA_DIR" in text, text
    assert "data prepare" not in text


@pytest.mark.parametrize("name", ["glue", "glue/sst2", "wikitext-2"])
def test_prepare_from_a_missing_directory_names_it(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path / "data"))
    text = _run("data", "prepare", name, "--from", str(tmp_path / "nowhere"))
    assert f"--from {tmp_path / 'nowhere'}: no such directory" in text, text
    text = _run("data", "prepare", "glue", "--from", str(tmp_path))  # exists, holds no task
    assert f"--from {tmp_path} holds no GLUE task's files" in text, text
