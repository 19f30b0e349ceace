"""SIGTERM / SIGINT (a preempted or interrupted run): save at the current step, then exit 75."""

import signal
from typing import Any

import jax
from jax.experimental import multihost_utils

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
