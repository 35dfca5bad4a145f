"""Work in flight at interpreter exit: cancelled between two denoiser calls, its threads joined, one line said.

Why: a lens run in a background thread (a dashboard's worker, ``Lens.run`` in a thread, ``%difflens`` followed by
exit, a kernel shut down by JupyterLab, nbclient or papermill) would still be inside torch when the interpreter
finalises, and the process dies with ``terminate called without an active exception`` (SIGABRT, exit status 134,
a core dump where enabled). The hook runs at the start of interpreter shutdown — before non-daemon threads are
joined — cancels every run still going, waits a bounded time for them to stop, and lets the exit status be the
caller's own.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref

EXIT_TIMEOUT = 60.0  # seconds to wait for runs to reach their next denoiser boundary

_lenses: weakref.WeakSet = weakref.WeakSet()  # every Lens made in this process
_workers: weakref.WeakSet = weakref.WeakSet()  # background threads that run lenses (dashboards, views)
_registered = False
_guard = threading.Lock()
_exiting = threading.Event()  # set when interpreter shutdown begins: no lens run may start after it
_refused_at_exit = 0  # runs that were asked to start during shutdown (a Run queued behind a model load)


class Cancelled(Exception):
    """Raised by long work that is not a lens run (feature taps, probes, k-SAE training) when its progress
    callback asks to stop: there is no partial result worth keeping."""


def report(progress, done: int, total: int, what: str) -> None:
    """Tell ``progress(done, total, what)``, if given; a True answer cancels (raises :class:`Cancelled`)."""
    if progress is not None and progress(done, total, what):
        raise Cancelled(f"{what}: cancelled at {done} of {total}")


def track_lens(lens) -> None:
    _register()
    _lenses.add(lens)


def track_worker(thread: threading.Thread) -> None:
    _register()
    _workers.add(thread)


def new_run_flag() -> threading.Event:
    """A new lens run's cancel flag, already set once the interpreter has begun to exit: a run queued behind a
    model loading in the background would otherwise start after the exit hook had looked, and still be inside
    torch when the interpreter finalises."""
    global _refused_at_exit
    flag = threading.Event()
    if _exiting.is_set():
        with _guard:
            _refused_at_exit += 1
        flag.set()
    return flag


def in_flight() -> int:
    """Runs started and not yet finished, over every Lens of this process."""
    return sum(lens.running for lens in list(_lenses))


def stop_everything(timeout: float = EXIT_TIMEOUT, say=None) -> int:
    """Cancel every run in flight and wait (up to ``timeout`` seconds) for the runs and worker threads to end;
    returns how many runs were cancelled (with those refused at exit)."""
    running = in_flight()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # again until nothing is busy: a worker may start a run while we wait
        busy = [t for t in list(_workers) if t.is_alive() and t is not threading.current_thread()]
        if not in_flight() and not busy:
            break
        for lens in list(_lenses):
            lens.cancel()
        for thread in busy:
            thread.join(min(0.2, max(0.0, deadline - time.monotonic())))
        if not busy:
            time.sleep(0.05)
    running += _refused_at_exit
    if say is not None and running:
        left = in_flight()
        say(
            f"difflens: cancelled {running} lens run(s) still going at exit"
            + (f"; {left} did not stop within {timeout:.0f} s" if left else "")
        )
    return running


def _at_exit() -> None:
    _exiting.set()
    stop_everything(say=lambda line: print(line, file=sys.stderr, flush=True))


def _register() -> None:
    """Once per process: ``threading._register_atexit`` runs before non-daemon threads are joined (so a run in a
    plain thread is stopped too); interpreters without it fall back to ``atexit``."""
    global _registered
    with _guard:
        if _registered:
            return
        _registered = True
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(_at_exit)
        else:  # pragma: no cover - CPython 3.9+ has it
            import atexit

            atexit.register(_at_exit)
