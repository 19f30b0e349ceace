"""A workdir's guards: one run at a time (an OS lock that dies with its holder), a full disk
or a read-only directory as one line, and Ctrl-C / SIGTERM during start-up.

Two-process cases run the real command (`python -m lm train`) in subprocesses; the rest run
in-process, with a write that raises ENOSPC standing in for a full disk.
"""

import errno
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from lm.__main__ import main
from lm.errors import Interrupted, UserError
from lm.runs import sweep
from lm.train import loop, workdir

REPO = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENT = f"{REPO}/experiments/gpt_shakespeare_char.py:cpu"
TINY = ["--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.d_ff=64",
        "--config.model.num_heads=2", "--config.data.seq_len=16", "--config.train.batch_size=4",
        "--config.train.eval_steps=1", "--config.train.eval_at_start=False",
        "--config.train.eval_every=0", "--quiet"]


def _lm(*argv: str) -> list[str]:
    return [sys.executable, "-m", "lm", *argv]


def _train_argv(work: pathlib.Path, *extra: str) -> list[str]:
    return ["train", "--config", EXPERIMENT, "--workdir", str(work), *TINY, *extra]


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def _holder(work: pathlib.Path) -> dict:
    try:
        return json.loads((work / workdir.LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _snapshot(path: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


def _fail(*argv: str) -> str:
    """The one-line message of a command that must fail in-process."""
    with pytest.raises(SystemExit) as exit_:
        main(["lm", *argv])
    message = str(exit_.value.code)
    assert exit_.value.code not in (0, None) and message.startswith("error: "), message
    assert "Traceback" not in message
    assert len([ln for ln in message.splitlines() if "LM_DEBUG" not in ln]) == 1, message
    return message


# ---------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_workdir_fails_at_once_and_a_killed_holder_frees_it(tmp_path):
    work = tmp_path / "run"
    first = subprocess.Popen(_lm(*_train_argv(work, "--config.train.steps=100000",
                                              "--config.train.checkpoint_every=0")),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        _wait_for(lambda: _holder(work).get("pid") == first.pid)
        started = time.time()
        second = subprocess.run(_lm(*_train_argv(work, "--config.train.steps=100000",
                                                 "--config.train.checkpoint_every=0")),
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and lines[0].startswith("error: "), second.stderr
        assert f"in use by another run (pid {first.pid} on host {socket.gethostname()}" in \
            lines[0] and "Traceback" not in second.stderr, second.stderr
        assert time.time() - started < 60 and "fresh run" not in second.stdout
        assert first.poll() is None  # the holder trains on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the lock with its holder: a rerun takes it (no stale marker).
    held = workdir.WorkdirLock(work)
    held.acquire()
    assert _holder(work)["pid"] == os.getpid()
    held.release()
    assert (work / workdir.LOCK_FILE).read_text() == ""  # an unheld lock names no one


def test_a_held_workdir_refuses_in_process_and_a_failed_start_releases_it(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    other = workdir.WorkdirLock(work)
    other.acquire()
    text = _fail(*_train_argv(work, "--config.train.steps=2"))
    assert f"pid {os.getpid()} on host" in text and str(work) in text
    assert _snapshot(work) == {workdir.LOCK_FILE: json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname()}).encode()}
    other.release()
    _fail(*_train_argv(work, "--config.train.steps=2", "--config.data.seq_len=999"))
    again = workdir.WorkdirLock(work)  # the failed start let go of it
    again.acquire()
    again.release()


SWEEP_EXPERIMENT = textwrap.dedent('''
    from lm.config import Sweep, base_config

    def get_config(arg=None):
        return base_config()

    def get_sweep(arg=None):
        return Sweep([{"train.lr": 0.1}, {"train.lr": 0.01}], metric="eval/loss")
''')


def test_two_sweeps_into_one_directory_the_second_point_fails_on_the_lock(tmp_path,
                                                                         monkeypatch):
    spec = tmp_path / "sweep_experiment.py"
    spec.write_text(SWEEP_EXPERIMENT)
    root = tmp_path / "sweep"
    seen = []

    def start_and_meet_a_second_sweep(*args):
        # The first sweep's point holds its lock here; a second sweep reaches the same point.
        with pytest.raises(UserError) as e:
            sweep.run_points(str(spec), str(root), train_fn=loop.train, log=lambda *_: None)
        seen.append(str(e.value))
        raise KeyboardInterrupt  # stop the first sweep too

    monkeypatch.setattr(loop, "_start", start_and_meet_a_second_sweep)
    with pytest.raises(Interrupted, match="SIGINT during start-up"):
        sweep.run_points(str(spec), str(root), train_fn=loop.train, log=lambda *_: None)
    assert len(seen) == 1 and "lr=0.1 is in use by another run" in seen[0]
    assert f"pid {os.getpid()}" in seen[0]


# ---------------------------------------------------------------- full disks, read-only dirs


def _enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path) or None)


def test_a_disk_that_fills_during_a_save_names_the_last_complete_step(tmp_path, monkeypatch,
                                                                      capfd):
    from lm.train import checkpoint

    work, save = tmp_path / "run", checkpoint.ProcessJsonHandler.save

    def fill_at_step_6(self, directory, args):
        if directory.parent.name.startswith("6."):  # 6.orbax-checkpoint-tmp/data...
            raise _enospc(directory)
        return save(self, directory, args)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.ProcessJsonHandler, "save", fill_at_step_6)
        text = _fail(*_train_argv(work, "--config.train.steps=9",
                                  "--config.train.checkpoint_every=3"))
    assert "saving the checkpoint of step 6" in text and "No space left" in text
    assert f"the last complete checkpoint is step 3 in {work / 'checkpoints'}" in text
    assert "Traceback" not in capfd.readouterr().err  # not orbax's thread's either
    # The half-written save is not read back: the rerun resumes from step 3 and finishes.
    main(["lm", *_train_argv(work, "--config.train.steps=9", "--config.train.checkpoint_every=3")])
    names = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert "9" in names and all(name.isdigit() for name in names), names


def test_a_disk_full_before_the_first_save_says_no_checkpoint_yet(tmp_path, monkeypatch):
    from lm.train import checkpoint

    usage = shutil.disk_usage("/")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    text = _fail(*_train_argv(tmp_path / "run", "--config.train.steps=4",
                              "--config.train.checkpoint_every=2"))
    assert "not enough disk space" in text and "step None" not in text
    assert "no checkpoint has been saved yet: a rerun starts from step 0" in text


def test_a_disk_that_fills_during_the_metrics_flush_is_one_line(tmp_path, monkeypatch):
    from lm.train import writer

    work, write = tmp_path / "run", writer.MetricsWriter.write

    def torn_at_step_5(self, step, metrics):
        if step == 5:
            self._jsonl.write('{"step": 5, "train/accura')  # half a record, then the disk is full
            self._jsonl.flush()
            raise _enospc()
        return write(self, step, metrics)

    with monkeypatch.context() as patch:
        patch.setattr(writer.MetricsWriter, "write", torn_at_step_5)
        text = _fail(*_train_argv(work, "--config.train.steps=8", "--config.train.log_every=1",
                                  "--config.train.checkpoint_every=2"))
    assert f"writing the records of step 5 to {work / 'metrics.jsonl'} failed" in text
    assert "No space left" in text and "the last complete checkpoint is step 4" in text
    main(["lm", *_train_argv(work, "--config.train.steps=8", "--config.train.log_every=1",
                             "--config.train.checkpoint_every=2")])
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").open()]
    assert [s for s in steps if s <= 8] == sorted(steps) and 5 in steps  # the torn line is gone


def test_a_fresh_run_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    work = tmp_path / "run"

    def full(workdir, *args, **kwargs):
        (workdir / "config.tmp").write_text('{"half')
        raise _enospc(workdir / "config.tmp")

    monkeypatch.setattr(loop, "record_config", full)
    text = _fail(*_train_argv(work, "--config.train.steps=2"))
    assert f"recording the config in {work} failed: cannot write {work}/config.tmp" in text
    assert "No space left" in text and "no checkpoint has been saved yet" in text
    assert not work.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
    work = tmp_path_factory.mktemp("finished") / "run"
    main(["lm", *_train_argv(work, "--config.train.steps=2")])
    return work


def test_allow_config_change_on_a_full_disk_leaves_no_empty_changes_file(finished, tmp_path,
                                                                        monkeypatch):
    from lm.train import writer

    work = tmp_path / "run"
    shutil.copytree(finished, work)
    before = _snapshot(work)

    class FullFile:
        def __init__(self, path, mode):
            open(path, mode).close()  # the file exists (empty), as a real open creates it

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise _enospc()

    monkeypatch.setattr(writer, "open", FullFile, raising=False)
    text = _fail(*_train_argv(work, "--config.train.steps=4", "--allow_config_change"))
    assert f"recording the config in {work} failed" in text and "No space left" in text
    assert f"the last complete checkpoint is step 2 in {work / 'checkpoints'}" in text
    assert _snapshot(work) == before  # no empty config_changes.jsonl, no config.tmp


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_resuming_in_a_read_only_workdir_is_one_line(finished, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    (work / workdir.LOCK_FILE).unlink()
    before = _snapshot(work)
    work.chmod(0o555)
    try:
        text = _fail(*_train_argv(work, "--config.train.steps=4", "--allow_config_change"))
    finally:
        work.chmod(0o755)
    assert f"cannot write {work}" in text and "Permission denied" in text
    assert f"the last complete checkpoint is step 2 in {work / 'checkpoints'}" in text
    assert _snapshot(work) == before



# A real small filesystem: a tmpfs mounted in a user + mount namespace (`unshare`), so the
# disk really fills (ENOSPC from the kernel, in orbax's threads too) or really is read-only.
def _namespaces() -> bool:
    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _namespaces(), reason="no user and mount namespaces "
                                  "(unshare) to mount a small or read-only filesystem")


def _on_small_disk(disk: pathlib.Path, size: int, script: str) -> str:
    """Runs bash `script` with a tmpfs of `size` bytes mounted at `disk`; its stdout."""
    disk.mkdir()
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {disk} && {script}"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pages(path: pathlib.Path) -> int:
    """Bytes `path` takes on a tmpfs: each file rounded up to whole 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


def _message(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "LM_DEBUG" not in ln]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@needs_mounts
def test_a_real_full_disk_during_saves_is_one_line_and_the_rerun_equals_an_uninterrupted_run(
        finished, tmp_path):
    """A tmpfs with room for the records and about 3 checkpoints: the run fails at a save
    with one line naming the last complete step; on a bigger disk the rerun resumes from it
    and its records equal those of a run that never saw a full disk."""
    flags = ["--config.train.steps=10", "--config.train.checkpoint_every=1",
             "--config.train.keep_checkpoints=100", "--config.train.log_every=1"]
    main(["lm", *_train_argv(tmp_path / "reference", *flags)])
    records = _pages(finished) - _pages(finished / "checkpoints")
    # A save first checks for the state's size + 1 MiB free; ENOSPC can also come mid-save.
    size = records * 2 + (1 << 20) + 7 * _pages(finished / "checkpoints" / "2") // 2
    disk = tmp_path / "disk"
    command = shlex.join(_lm(*_train_argv(disk / "run", *flags)))
    out = _on_small_disk(disk, size, f"{command} 2> {tmp_path}/full.err; echo exit=$?; "
                         f"mount -o remount,size=256m {disk} && {command} && "
                         f"cp -r {disk}/run {tmp_path}/after")
    assert "exit=1" in out
    line = _message((tmp_path / "full.err").read_text())
    assert re.search(r"No space left|not enough disk space", line), line
    last = int(re.search(r"the last complete checkpoint is step (\d+) in "
                         + re.escape(str(disk / "run" / "checkpoints")), line).group(1))
    assert 1 <= last < 10, line

    def losses(work):
        return [(r["step"], r["train/loss"]) for r in map(json.loads, (work / "metrics.jsonl")
                .read_text().splitlines()) if "train/loss" in r]

    assert losses(tmp_path / "after") == losses(tmp_path / "reference")


@needs_mounts
def test_resuming_on_a_read_only_filesystem_is_one_line(finished, tmp_path):
    disk = tmp_path / "disk"
    work = disk / "run"
    command = shlex.join(_lm(*_train_argv(work, "--config.train.steps=4",
                                          "--allow_config_change")))
    out = _on_small_disk(disk, 64 << 20, f"cp -r {finished} {work} && rm -f {work}/"
                         f"{workdir.LOCK_FILE} && mount -o remount,ro {disk} && "
                         f"{command} 2> {tmp_path}/ro.err; echo exit=$?")
    assert "exit=1" in out
    line = _message((tmp_path / "ro.err").read_text())
    assert f"cannot write {work}" in line and "Read-only file system" in line, line
    assert f"the last complete checkpoint is step 2 in {work / 'checkpoints'}" in line, line

# ---------------------------------------------------------------- signals during start-up

INTERRUPT_AT_RECORD_CONFIG = '''
import os, signal, sys, time
from lm.train import loop
record_config = loop.record_config

def record_then_interrupt(*args, **kwargs):
    record_config(*args, **kwargs)  # config.json is written: the start is half done
    os.kill(os.getpid(), signal.{signal})
    time.sleep(30)

loop.record_config = record_then_interrupt
from lm.__main__ import main
main(["lm", *sys.argv[1:]])
'''


@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_start_up_is_one_line_and_removes_the_new_workdir(signal_name, status,
                                                                          tmp_path):
    work = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_RECORD_CONFIG.format(signal=signal_name),
         *_train_argv(work, "--config.train.steps=2")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"error: {signal_name} during start-up, before the first "
                                  f"step: removed the new workdir {work}"), done.stderr
    assert not work.exists()


def test_a_signal_while_resuming_leaves_the_run_and_says_where_it_resumes(finished, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(finished, work)
    before = _snapshot(work)
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_RECORD_CONFIG.format(signal="SIGTERM"),
         *_train_argv(work, "--config.train.steps=2")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 143 and "Traceback" not in done.stderr, done.stderr
    assert f"the last complete checkpoint is step 2 in {work / 'checkpoints'}" in done.stderr
    assert _snapshot(work) == before


def test_an_attempt_that_never_saved_a_checkpoint_is_started_over_by_a_plain_rerun(
        finished, tmp_path, capsys):
    """As after a kill or a full disk before the first save: records, no checkpoint, none set
    aside. The rerun starts at step 0 and moves the old records aside (nothing deleted)."""
    work = tmp_path / "run"
    shutil.copytree(finished, work, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    old = (work / "metrics.jsonl").read_text()
    main(["lm", *_train_argv(work, "--config.train.steps=2")])
    (previous,) = (work / "previous").iterdir()
    assert "(what the previous attempt recorded: " in capsys.readouterr().out
    assert (previous / "metrics.jsonl").read_text() == old
    def losses(text):
        return [(r["step"], r.get("train/loss"), r.get("eval/loss"))
                for r in map(json.loads, text.splitlines())]

    assert losses((work / "metrics.jsonl").read_text()) == losses(old)  # again, from step 0
