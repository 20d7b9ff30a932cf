"""Stop training cleanly when the cluster asks: SIGTERM (scancel, preemption), SIGUSR1 or SIGUSR2
(Slurm's warning before the time limit: `--signal=USR1@90`; submitit asks for USR2).

The first signal only sets a flag; the epoch loop checks it after each epoch's latest checkpoint
is written (`stop_if_requested`), so the run ends on a checkpoint that `--resume` continues exactly
(checkpoints are per epoch: a mid-epoch stop could not be resumed identically). A second signal
stops at once, keeping the previous epoch's checkpoint; so does Slurm's SIGKILL when an epoch outlasts
KillWait (or the `--signal` lead time).

submitit's job runner sets its own handlers before it calls the job's function: SIGTERM is logged and
ignored, and its USR2 handler requeues the job (or, once timed out, raises at once, mid-step, with no
checkpoint). `stop_signals_handled` replaces them while training runs, and puts them back afterwards.
"""
import contextlib
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_received = None  # the name of the first signal received, or None


class Preempted(KeyboardInterrupt):
    """Raised at a safe point after a stop signal. A KeyboardInterrupt, so that entry points report it
    as an interruption (exit 130, "continue with --resume") and not as an error of the run."""


def _handle(signum, frame):
    global _received
    if _received is not None:
        raise Preempted(f"second {signal.Signals(signum).name}: stopping now; the previous checkpoint is kept")
    _received = signal.Signals(signum).name
    print(f"\n{_received} received: stopping after this epoch's checkpoint", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_signals_handled():
    """Inside: the stop signals set the flag. Only the main thread may set handlers; a run started from
    another thread keeps the process's handlers."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {signum: signal.signal(signum, _handle) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_if_requested(checkpoint, ddp) -> None:
    """Called on every rank after a checkpoint is on disk: ends the run there if a stop signal reached
    any rank (all ranks agree, so none waits forever at the next collective)."""
    requested = ddp.mean({"stop": float(_received is not None)})["stop"] > 0
    if requested:
        print(f"stopped by {_received or 'a signal to another rank'}; checkpoint {checkpoint}; "
              "continue with --resume", file=sys.stderr, flush=True)
        raise Preempted(f"stopped by {_received}")
