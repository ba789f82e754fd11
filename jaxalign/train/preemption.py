"""Turn SIGTERM/SIGINT into a "save and stop at the next step boundary" request.

Schedulers (Slurm, Kubernetes, TPU/GPU spot VMs) announce preemption with
SIGTERM and kill the job a grace period later.  :class:`PreemptionGuard`
replaces the default "die now" with a flag the training loop polls::

    with PreemptionGuard() as guard:
        for step in ...:
            state = train_step(state, batch)
            checkpointer.save(step, state, meta)            # periodic (save_every)
            if guard.should_stop(step):
                checkpointer.save(step, state, meta, force=True)
                checkpointer.wait()
                break                                       # exit 0; the scheduler restarts and we resume

Semantics:

* First SIGTERM or SIGINT sets :attr:`~PreemptionGuard.requested` and
  :attr:`~PreemptionGuard.signal_name`; the process keeps running.
* A second SIGINT (Ctrl-C twice) behaves as usual: the previous handler runs,
  which for Python's default raises ``KeyboardInterrupt`` immediately.
  Further SIGTERMs are only logged: the scheduler's SIGKILL is the hard stop,
  and dying in the middle of the preemption save is what we want to avoid.
* Signals that were ignored (``SIG_IGN``, e.g. SIGINT of a background job)
  stay ignored.  Previous handlers are restored on exit.  Signal handlers can
  only be installed from the main thread; entering elsewhere raises
  ``RuntimeError``.

Multi-host (``jax.distributed`` initialised with more than one process): every
host must stop at the *same* step or the next collective deadlocks, so a local
flag is not enough.  JAX's preemption service (on by default,
``jax_enable_preemption_service``) already catches SIGTERM in C++ and agrees
on a safe step through the coordination service; there the guard leaves
SIGTERM to JAX (a Python handler would replace JAX's notifier) and
:meth:`~PreemptionGuard.should_stop` returns
``jax.experimental.multihost_utils.reached_preemption_sync_point(step)``,
which all hosts must call at every step.  A local SIGINT on one host then only
sets ``requested`` on that host (a second one aborts it).  Only the single
process path is exercised by the tests.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Iterable

logger = logging.getLogger(__name__)

__all__ = ["PreemptionGuard"]


def _multihost_preemption_service() -> bool:
    """True when JAX runs multi-process with its preemption sync manager active."""
    try:
        from jax._src import distributed  # the client/sync manager are not public API
    except ImportError:  # pragma: no cover - very old/new jax
        return False
    state = distributed.global_state
    return (getattr(state, "client", None) is not None
            and getattr(state, "num_processes", 1) not in (None, 1)
            and getattr(state, "preemption_sync_manager", None) is not None)


class PreemptionGuard:
    """Context manager: SIGTERM/SIGINT set a flag instead of killing the process."""

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._requested = False
        self._signal_name: str | None = None
        self._multihost = False
        self._active = False

    # -- state ----------------------------------------------------------- #

    @property
    def requested(self) -> bool:
        """A stop was requested in *this* process (signal received or :meth:`request` called)."""
        return self._requested

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received (``"SIGTERM"``, ``"SIGINT"``), ``"manual"``, or ``None``."""
        return self._signal_name

    def request(self, reason: str = "manual") -> None:
        """Request a stop programmatically (e.g. a wall-clock budget ran out)."""
        if not self._requested:
            self._requested = True
            self._signal_name = reason

    def should_stop(self, step: int) -> bool:
        """Whether the loop should save and stop after ``step``; agreed across hosts when multi-host.

        Single process: :attr:`requested`.  Multi-host with JAX's preemption
        service: ``reached_preemption_sync_point(step)`` (call it on every step,
        on every host).
        """
        if self._multihost:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(int(step)):
                if not self._requested:
                    self._requested, self._signal_name = True, "SIGTERM"
                return True
            return False
        return self._requested

    # -- context manager -------------------------------------------------- #

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered from the main thread (signal handlers live there)")
        if self._active:
            raise RuntimeError("PreemptionGuard is not re-entrant")
        self._multihost = _multihost_preemption_service()
        self._previous = {}
        for sig in self._signals:
            if sig == signal.SIGTERM and self._multihost:
                continue  # JAX's preemption notifier owns SIGTERM
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._handle)
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            # `None` means the previous handler was not installed from Python; the default is the best we can do.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        self._active = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self._requested:
            self._requested = True
            self._signal_name = name
            logger.warning("%s received: will checkpoint and stop at the next step boundary "
                           "(send SIGINT again to abort immediately)", name)
            return
        if signum == signal.SIGINT:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)  # Python's default_int_handler raises KeyboardInterrupt
                return
            raise KeyboardInterrupt
        logger.warning("%s received again; already stopping after the current step", name)
