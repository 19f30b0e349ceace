"""SIGTERM / SIGINT (a preempted or interrupted run): save at the current step, then exit 75.

Before the loop there is nothing to save: `raise_during_startup` turns both signals into
`lm.errors.Interrupted` (exit 130 / 143 with one line), and the start's clean-up runs.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
from jax.experimental import multihost_utils

from lm.errors import Interrupted

# The exit status of a run stopped by SIGTERM/SIGINT after saving (EX_TEMPFAIL: try again),
# so a scheduler can tell it from a finished run (0) and requeue it (scripts/launch_slurm.sh).
PREEMPTED_EXIT = 75


class Preemption:
    """Set by SIGTERM/SIGINT; the loop saves at the current step and exits when it is set.

    With several processes, JAX's own preemption service catches SIGTERM and agrees on one
    step for every host (`should_stop`); a per-host flag would have hosts stop at different
    steps and deadlock in the next collective.
    """

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        # A second Ctrl-C / SIGTERM while saving kills the process the default way.
        signal.signal(signum, signal.SIG_DFL)

    def should_stop(self, step: int) -> bool:
        """True when every process should save at `step` and exit; call it at every step."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def install_signal_handlers() -> Preemption:
    """Turns SIGTERM and SIGINT into `Preemption.requested` (checked by the loop each step).

    Single process only: with several, JAX's preemption notifier already owns SIGTERM and
    Ctrl-C on one host should not stop that host alone.
    """
    preemption = Preemption()
    if jax.process_count() == 1:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, preemption._handle)
    return preemption


def _raise_interrupted(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    raise Interrupted(f"{name} during start-up, before the first step", 128 + signum)


@contextlib.contextmanager
def raise_during_startup() -> Iterator[None]:
    """SIGTERM and SIGINT raise `Interrupted` until the loop installs its own handlers (one
    process, main thread only: a signal handler can only be set there); the handlers found
    are back when the block ends (an in-process sweep's next point, a test session)."""
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum in previous:
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
