"""A workdir's guards: one run at a time (an OS file lock), and write failures as one line.

    with workdir.lock(path):   # a second run on `path` fails at once, naming the holder
        ...

The lock is `flock(2)` on `<workdir>/.lock`: the kernel drops it when the holder dies, kill -9
included, so there is no stale marker to clean up. The file names the holder (pid and host)
while it is held and is emptied when it is released. With several processes only process 0
locks: every host of a run writes into one shared workdir, and the other processes learn
process 0's verdict before they go on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from etils import epath

from lm.errors import UserError

LOCK_FILE = ".lock"

# What a full disk, a quota or a read-only directory raises.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def last_complete_step(workdir: str | pathlib.Path) -> int | None:
    """The newest finished checkpoint's step, from the directory names (orbax renames a save
    to its bare step number only once it is complete), or None."""
    directory = epath.Path(workdir) / "checkpoints"
    try:
        return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=None)
    except OSError:  # no checkpoints/ yet, or unreadable
        return None


def resume_note(workdir: str | pathlib.Path) -> str:
    """What a rerun of the same command does: resume from which step, or start afresh."""
    step = last_complete_step(workdir)
    if step is None:
        return "no checkpoint has been saved yet: a rerun starts from step 0"
    where = epath.Path(workdir) / "checkpoints"
    return f"the last complete checkpoint is step {step} in {where}: a rerun resumes from it"


def write_error(workdir: str | pathlib.Path, what: str, error: OSError) -> UserError:
    """One line for a write that failed: where, what, why, and the step a rerun resumes from."""
    fix = "free space" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else \
        "make it writable"
    why = f"cannot write {error.filename}" if error.filename else "the write failed"
    return UserError(f"{what} failed: {why} ({error.strerror or error}); "
                     f"{resume_note(workdir)}. {fix.capitalize()}, then rerun the same command")


@contextlib.contextmanager
def writing(workdir: str | pathlib.Path, what: str, settle: Callable[[], Any] | None = None
            ) -> Iterator[None]:
    """Turns a full disk or a read-only directory inside the block into `write_error`.
    `settle` runs first (e.g. let a checkpoint save in flight complete: it is a good one)."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        if settle is not None:
            with contextlib.suppress(Exception):  # its own failure is not this one
                settle()
        raise write_error(workdir, what, e) from e


class _DropOrbaxWriteErrors(logging.Filter):
    """Orbax logs a failed async save's traceback from its thread; the save's own error says
    it in one line (Checkpointer._save_error), so that log is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, OSError) and error.errno in WRITE_ERRNOS
                    and "orbax" in record.pathname)


@contextlib.contextmanager
def quiet_write_errors() -> Iterator[None]:
    """Keeps orbax's thread tracebacks of a write that failed out of the log."""
    logger, drop = logging.getLogger("absl"), _DropOrbaxWriteErrors()
    logger.addFilter(drop)
    # The coroutine of a save that never ran is reported at exit as a RuntimeWarning.
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class WorkdirLock:
    """An exclusive lock on a workdir for this process, until `release` or the process ends."""

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises UserError naming the process that holds it."""
        with writing(self.path.parent, f"taking the lock {self.path}"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is in use by another run ({holder}; lock {self.path}): "
                "wait for it to end or stop it, or use another --workdir") from None
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                os.close(fd)
                raise
            print(f"warning: the filesystem of {self.path} has no file locks ({e.strerror}): "
                  "nothing stops a second run on this workdir", flush=True)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # e.g. the workdir of a failed start was removed
            os.ftruncate(self._fd, 0)  # an unheld lock names no one
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']}"
    except (ValueError, KeyError, TypeError, OSError):  # written this instant, or by another tool
        return "its pid and host are not recorded yet"


@contextlib.contextmanager
def lock(workdir: str | pathlib.Path, *, lead: bool = True) -> Iterator[None]:
    """Holds the workdir's lock for the block. `lead`: this process takes it (process 0 of a
    multi-process run); the others only take part in agreeing on the verdict."""
    import jax  # noqa: PLC0415  (lazy: `lm sweep --summarize` and tests import this module)

    held = WorkdirLock(workdir)
    error: UserError | None = None
    if lead:
        try:
            held.acquire()
        except UserError as e:
            error = e
    if jax.process_count() > 1:  # every process fails together, none waits in a collective
        from jax.experimental import multihost_utils  # noqa: PLC0415

        failed = multihost_utils.broadcast_one_to_all(int(error is not None))
        if failed and error is None:
            error = UserError(f"process 0 could not lock {workdir}: see its message")
    if error is not None:
        raise error
    try:
        yield
    finally:
        held.release()
